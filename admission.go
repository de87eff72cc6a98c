package wspool

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wspool/wspool/internal/admission"
)

// Admission and dial slots: the glue between a feed's dials and the pool's
// gate (internal/admission), which every dial of a pool's feeds passes
// (first connects, reconnects, rotations, standby connections, feeds woken
// after an outage) while holding neither the feed's lock nor anything else a
// callback could need:
//
//  1. Admission per upstream key, with limits chosen per key
//     (WithAdmissionFor, else WithAdmission): a FIFO line per key, let
//     through while the key is under its rate, burst and concurrency cap and
//     not held by a penalty. A dial counts in the rate from its end.
//  2. A pool-wide handshake slot (WithMaxConcurrentDials), shared by host:
//     the last eighth of the slots (at least one) is kept for hosts with no
//     handshake in flight, so a host that stalls handshakes never delays
//     another host's dial (until that many plus one hosts stall at once).
//
// A penalty is charged to the key of the dial the upstream answered: a 429
// or 418 to the key of that handshake, a close with 1008 or 1013 to the key
// of the dial that made the connection it came on (a close handler set at
// the dial), whichever connection of the feed it was.
//
// Waiting at either gate ends with ctx (Close, pool shutdown) and is
// reported: a StateChange from StateConnecting to StateConnecting whose Err
// wraps ErrAdmissionWait (only for the feed's own dial while it is
// connecting, not for a rotation's or a standby connection's), and
// Stats.AdmissionWaits, AdmissionWaiting and AdmissionWaited (every dial).

// DefaultPenalty is how long a whole admission key is held after its
// upstream asked a feed to slow down without saying for how long.
const DefaultPenalty = time.Minute

// ErrAdmissionWait is wrapped by the cause of the StateChange reported when
// a dial has to wait for admission or a handshake slot.
var ErrAdmissionWait = errors.New("wspool: waiting for admission")

// Admission limits the new connections a pool makes to one upstream key.
// The key is the host dialled (host:port after the request func) unless Key
// says otherwise. The zero value of each field means "no limit" (Penalty:
// DefaultPenalty).
type Admission struct {
	// Rate is the most dials admitted per key within any window of length
	// Per (first connects, reconnects, rotations and woken feeds alike). A
	// dial counts from the moment it ended, so a rate equal to the
	// upstream's own limit is never exceeded at the upstream.
	Rate int
	Per  time.Duration
	// Burst, if below Rate, also spaces dials out: at most Burst in quick
	// succession, then one every Per/Rate (a token bucket).
	Burst int
	// MaxConcurrent caps the handshakes of one key in flight at once.
	MaxConcurrent int
	// Penalty is how long every feed of a key is held back after the
	// upstream asked one of them to slow down: a 429 handshake answer
	// without Retry-After, a 418, or a close with 1008 (policy violation,
	// what exchanges send for "too many requests") or 1013 (try again
	// later). A 429 with Retry-After holds the key for that long (capped by
	// WithMaxRetryAfter). Zero means DefaultPenalty; negative disables
	// penalties.
	Penalty time.Duration
	// Key, if set, maps a dial (its URL and headers after the request func)
	// to its key: host plus local address, an API key, an account. It runs
	// before every dial and must be fast; a panic is reported and the host is
	// used. Keys may come and go: the pool forgets a key once nothing about
	// it is left to enforce (no dial waiting or in flight, none within Per,
	// no penalty), so its memory follows the keys in recent use.
	Key func(u *url.URL, h http.Header) string
}

// checkAdmission validates a and fills in its default penalty.
func checkAdmission(c *config, a *Admission) bool {
	switch {
	case a.Rate < 0 || a.Burst < 0 || a.MaxConcurrent < 0 || a.Per < 0:
		c.errorf("admission limits must not be negative")
	case a.Rate > 0 && a.Per <= 0:
		c.errorf("admission Rate needs a positive Per")
	case a.Burst > 0 && a.Rate == 0:
		c.errorf("admission Burst needs a Rate")
	default:
		if a.Penalty == 0 {
			a.Penalty = DefaultPenalty
		}
		return true
	}
	return false
}

// admitCounters are a feed's admission figures (Stats).
type admitCounters struct {
	waits   atomic.Int64
	waited  atomic.Int64 // nanoseconds
	waiting atomic.Bool
}

// admissionRules are a pool's admission limits: per key from
// WithAdmissionFor, else WithAdmission's. Fixed once the pool is built.
type admissionRules struct {
	all    *Admission // WithAdmission; nil: keys not in perKey are not admitted
	perKey map[string]*Admission
}

// rules returns the config's admission rules, new if it has none.
func (c *config) admissionRules() *admissionRules {
	if c.rules == nil {
		c.rules = &admissionRules{}
	}
	return c.rules
}

// of returns key's limits; nil if the key is not admitted.
func (r *admissionRules) of(key string) *Admission {
	if r == nil {
		return nil
	}
	if a := r.perKey[key]; a != nil {
		return a
	}
	return r.all
}

// limits is the gate's view of the rules.
func (r *admissionRules) limits(key string) (admission.Limits, bool) {
	a := r.of(key)
	if a == nil {
		return admission.Limits{}, false
	}
	return admission.Limits{Rate: a.Rate, Per: a.Per, Burst: a.Burst, MaxConcurrent: a.MaxConcurrent}, true
}

// newGate returns the pool's dial gate.
func newGate(cfg *config) *admission.Gate {
	return admission.New(admission.Config{Slots: cfg.maxDials, Limits: cfg.rules.limits})
}

// admissionKey returns the admission key of a dial to u with headers h.
func (c *Client) admissionKey(u *url.URL, h http.Header) string {
	key := u.Host
	if r := c.cfg.rules; r != nil && r.all != nil && r.all.Key != nil {
		func() {
			defer c.recoverCallback("admission key func")
			key = r.all.Key(u, h)
		}()
	}
	return key
}

// enterGate passes the pool's gate for a dial to host under key (a lone
// Client has none). A wait is reported as a state change only for the
// feed's own dial (not a standby connection's: the feed's state and attempt
// count are the primary's, owned by the feed's loop), and only while the
// feed is connecting (not for a rotation's dial).
func (c *Client) enterGate(ctx context.Context, host, key string, own bool) (*admission.Ticket, error) {
	if c.cfg.gate == nil {
		return nil, nil
	}
	var start time.Time
	t, err := c.cfg.gate.Enter(ctx, host, key, func(reason string, d time.Duration) {
		start = time.Now()
		c.admit.waits.Add(1)
		c.admit.waiting.Store(true)
		c.mu.Lock()
		connecting := own && c.state == StateConnecting
		c.mu.Unlock()
		if connecting {
			c.setState(StateConnecting, fmt.Errorf("%w (%s)", ErrAdmissionWait, reason), c.rp.failures, d)
		}
	})
	if !start.IsZero() {
		c.admit.waited.Add(int64(time.Since(start)))
		c.admit.waiting.Store(false)
	}
	return t, err
}

// handshakeSaid applies the penalty a handshake answer asked for (429, 418)
// to key, the key of the dial that got it.
func (c *Client) handshakeSaid(key string, he *HandshakeError) {
	a := c.cfg.rules.of(key)
	if a == nil {
		return
	}
	var d time.Duration
	switch {
	case he.StatusCode == http.StatusTooManyRequests && he.RetryAfter > 0:
		d = min(he.RetryAfter, c.cfg.maxRetryAfter)
	case he.StatusCode == http.StatusTooManyRequests || he.StatusCode == http.StatusTeapot:
		d = a.Penalty
	default:
		return
	}
	c.penalize(key, d, he)
}

// chargeCloses makes a close with 1008 or 1013 received on ws, whenever it
// comes (OnConnect, the read loop, a standby or rotated connection, the
// close handshake), hold key: the key of the dial that made this
// connection, not the feed's latest dial.
func (c *Client) chargeCloses(ws *websocket.Conn, key string) {
	a := c.cfg.rules.of(key)
	if a == nil || a.Penalty < 0 {
		return
	}
	next := ws.CloseHandler()
	ws.SetCloseHandler(func(code int, text string) error {
		if code == int(CloseCodePolicyViolation) || code == int(CloseCodeTryAgainLater) {
			c.penalize(key, a.Penalty, &websocket.CloseError{Code: code, Text: text})
		}
		return next(code, text)
	})
}

func (c *Client) penalize(key string, d time.Duration, cause error) {
	if d <= 0 || c.cfg.gate == nil {
		return
	}
	c.log.Warn("upstream asked to slow down: holding its admission key", "err", cause, "for", d)
	c.cfg.gate.Penalize(key, d)
}

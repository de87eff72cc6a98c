package wspool

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wspool/wspool/internal/ratewindow"
)

// Admission and dial slots.
//
// Every dial of a pool's feeds (first connects, reconnects, rotations, feeds
// woken after an outage) passes two gates, in this order, while holding
// neither the feed's lock nor anything else a callback could need:
//
//  1. Admission per upstream key (WithAdmission): a FIFO line per key, let
//     through while the key is under its rate, its burst and its concurrency
//     cap, and not held by a penalty. The rate counts each admitted dial from
//     the moment it ends (response, failure or timeout), not from when it
//     started, so that N+1 dials never reach the upstream within one window
//     however their latencies vary: the upstream counted a dial before we saw
//     its answer.
//  2. A pool-wide handshake slot (WithMaxConcurrentDials), shared fairly by
//     host: a freed slot goes to the host with the fewest handshakes in
//     flight (FIFO within a host, oldest first between equals), so that a
//     host that stalls every handshake holds only the slots it already has
//     and a feed to another host gets the next slot that frees, within one
//     handshake of asking.
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

// WithAdmission limits new connections per upstream key, pool-wide (see
// Admission). Pool only. By default there is no admission limit; the pool's
// handshake slots (WithMaxConcurrentDials) are shared fairly by host either way.
func WithAdmission(a Admission) PoolOption {
	return poolOption(func(c *config) {
		if a.Rate < 0 || a.Burst < 0 || a.MaxConcurrent < 0 || a.Per < 0 {
			c.errorf("admission limits must not be negative")
			return
		}
		if a.Rate > 0 && a.Per <= 0 {
			c.errorf("admission Rate needs a positive Per")
			return
		}
		if a.Burst > 0 && a.Rate == 0 {
			c.errorf("admission Burst needs a Rate")
			return
		}
		if a.Penalty == 0 {
			a.Penalty = DefaultPenalty
		}
		c.admission = &a
	})
}

// admitCounters are a feed's admission figures (Stats).
type admitCounters struct {
	waits   atomic.Int64
	waited  atomic.Int64 // nanoseconds
	waiting atomic.Bool
	key     atomic.Pointer[string] // the key of the latest dial
}

// dialGate is a pool's admission and handshake-slot gate (nil for a lone
// Client: no limit).
type dialGate struct {
	adm *Admission // nil: no admission limits or penalties

	mu sync.Mutex
	// Handshake slots.
	slots, used  int
	slotWaiting  int
	seq          uint64
	hosts        map[string]*hostSlots
	keys         map[string]*keyGate
	sweepAt      int // len(keys) at which the next new key sweeps idle ones
	maxRetryWait time.Duration
}

type hostSlots struct {
	inflight int
	waiting  []*gateWaiter
}

type gateWaiter struct {
	ch      chan struct{}
	seq     uint64
	granted bool
}

// keyGate is one admission key's line and history.
type keyGate struct {
	queue    []*gateWaiter
	window   *ratewindow.Window // the end times of the key's dials (nil: no Rate)
	tokens   float64
	refilled time.Time
	inflight int
	penalty  time.Time
	lastEnd  time.Time
	timer    *time.Timer
}

func newDialGate(slots int, adm *Admission) *dialGate {
	return &dialGate{adm: adm, slots: slots, hosts: map[string]*hostSlots{}, keys: map[string]*keyGate{}}
}

// dialTicket is what a dial holds between the gates and its end.
type dialTicket struct {
	g    *dialGate
	host string
	key  *keyGate
	w    *gateWaiter
}

// enter waits for admission (key) and then for a handshake slot (host).
// wait is called, outside any lock, once if the dial has to wait.
func (g *dialGate) enter(ctx context.Context, host, key string, wait func(reason string, d time.Duration)) (*dialTicket, error) {
	if g == nil {
		return nil, nil
	}
	t := &dialTicket{g: g, host: host}
	waited := false
	note := func(reason string, d time.Duration) {
		if !waited {
			waited = true
			wait(reason, d)
		}
	}
	if g.adm != nil {
		k, w, err := g.admit(ctx, key, note)
		if err != nil {
			return nil, err
		}
		t.key, t.w = k, w
	}
	if err := g.acquireSlot(ctx, host, note); err != nil {
		t.leaveKey()
		return nil, err
	}
	return t, nil
}

// leave ends the dial: it frees the slot and records the dial's end in the
// key's window.
func (t *dialTicket) leave() {
	if t == nil {
		return
	}
	t.g.releaseSlot(t.host)
	t.leaveKey()
}

func (t *dialTicket) leaveKey() {
	if t.key == nil {
		return
	}
	g := t.g
	g.mu.Lock()
	k := t.key
	now := time.Now()
	if k.window != nil {
		k.window.Add(now)
	}
	k.lastEnd = now
	k.inflight--
	g.pumpLocked(k)
	g.mu.Unlock()
	t.key = nil
}

// admit waits in key's line until the key lets the dial through.
func (g *dialGate) admit(ctx context.Context, key string, note func(string, time.Duration)) (*keyGate, *gateWaiter, error) {
	g.mu.Lock()
	k := g.keyLocked(key)
	w := &gateWaiter{ch: make(chan struct{})}
	k.queue = append(k.queue, w)
	g.pumpLocked(k)
	if w.granted {
		g.mu.Unlock()
		return k, w, nil
	}
	d, reason := g.delayLocked(k, time.Now())
	g.mu.Unlock()
	note(reason, max(d, 0))
	select {
	case <-w.ch:
		return k, w, nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	if w.granted {
		g.mu.Unlock()
		t := &dialTicket{g: g, key: k, w: w}
		t.leaveKey() // admitted meanwhile: give it back as a dial that ended now
		return nil, nil, ctx.Err()
	}
	for i, q := range k.queue {
		if q == w {
			k.queue = append(k.queue[:i], k.queue[i+1:]...)
			break
		}
	}
	g.pumpLocked(k)
	g.mu.Unlock()
	return nil, nil, ctx.Err()
}

// keyLocked returns key's state, new if the key has none. Before it adds
// one it now and then (each time the map has doubled since the last sweep)
// forgets the keys that have nothing left to remember, so that a pool whose
// keys come and go (hosts, API keys, local addresses) holds state only for
// the keys dialled within the last window, however long it runs.
func (g *dialGate) keyLocked(key string) *keyGate {
	if k := g.keys[key]; k != nil {
		return k
	}
	if len(g.keys) >= g.sweepAt {
		now := time.Now()
		for kk, k := range g.keys {
			if g.idleLocked(k, now) {
				delete(g.keys, kk)
			}
		}
		g.sweepAt = max(64, 2*len(g.keys))
	}
	k := &keyGate{}
	if g.adm.Rate > 0 {
		k.window = ratewindow.New(g.adm.Rate, g.adm.Per)
	}
	if g.adm.Burst > 0 && g.adm.Burst < g.adm.Rate {
		k.tokens = float64(g.adm.Burst)
		k.refilled = time.Now()
	}
	g.keys[key] = k
	return k
}

// idleLocked reports whether k is as good as new: nobody waits or dials,
// no penalty holds it, every dial it counts has left the window and its
// burst has refilled.
func (g *dialGate) idleLocked(k *keyGate, now time.Time) bool {
	if len(k.queue) > 0 || k.inflight > 0 || k.timer != nil || now.Before(k.penalty) {
		return false
	}
	if !k.lastEnd.IsZero() && now.Before(k.lastEnd.Add(g.adm.Per)) {
		return false // lastEnd is the latest end in the window
	}
	if g.adm.Burst > 0 && g.adm.Burst < g.adm.Rate {
		g.refillLocked(k, now)
		if k.tokens < float64(g.adm.Burst) {
			return false
		}
	}
	return true
}

// delayLocked returns how long the head of k's line must still wait (-1:
// until a dial of the key ends) and why.
func (g *dialGate) delayLocked(k *keyGate, now time.Time) (time.Duration, string) {
	a := g.adm
	var d time.Duration
	reason := ""
	if now.Before(k.penalty) {
		d, reason = k.penalty.Sub(now), "penalty"
	}
	if a.MaxConcurrent > 0 && k.inflight >= a.MaxConcurrent {
		return -1, "concurrency"
	}
	if k.window != nil {
		w := k.window.Wait(now, k.inflight)
		if w < 0 {
			return -1, "rate"
		}
		if w > d {
			d, reason = w, "rate"
		}
	}
	if a.Burst > 0 && a.Burst < a.Rate {
		g.refillLocked(k, now)
		if k.tokens < 1 {
			if w := time.Duration((1 - k.tokens) * float64(a.Per) / float64(a.Rate)); w > d {
				d, reason = w+time.Microsecond, "burst"
			}
		}
	}
	return d, reason
}

func (g *dialGate) refillLocked(k *keyGate, now time.Time) {
	a := g.adm
	el := now.Sub(k.refilled)
	if el <= 0 {
		return
	}
	k.tokens = min(float64(a.Burst), k.tokens+float64(el)*float64(a.Rate)/float64(a.Per))
	k.refilled = now
}

// pumpLocked admits the head of k's line while the key allows it, and arms
// a timer for the next one.
func (g *dialGate) pumpLocked(k *keyGate) {
	for len(k.queue) > 0 {
		now := time.Now()
		d, _ := g.delayLocked(k, now)
		if d < 0 {
			break // a dial's end pumps again
		}
		if d > 0 {
			if k.timer == nil {
				k.timer = time.AfterFunc(d, func() {
					g.mu.Lock()
					k.timer = nil
					g.pumpLocked(k)
					g.mu.Unlock()
				})
			} else {
				k.timer.Reset(d)
			}
			return
		}
		w := k.queue[0]
		k.queue[0] = nil
		k.queue = k.queue[1:]
		if g.adm.Burst > 0 && g.adm.Burst < g.adm.Rate {
			k.tokens--
		}
		k.inflight++
		w.granted = true
		close(w.ch)
	}
	if len(k.queue) == 0 && k.timer != nil {
		k.timer.Stop()
		k.timer = nil
	}
}

// penalize holds every dial of key until now+d.
func (g *dialGate) penalize(key string, d time.Duration) {
	if g == nil || g.adm == nil || d <= 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	k := g.keyLocked(key)
	if until := time.Now().Add(d); until.After(k.penalty) {
		k.penalty = until
	}
	if k.timer != nil {
		k.timer.Stop()
		k.timer = nil
	}
	g.pumpLocked(k)
}

// acquireSlot takes one of the pool's handshake slots for host.
func (g *dialGate) acquireSlot(ctx context.Context, host string, note func(string, time.Duration)) error {
	g.mu.Lock()
	h := g.hosts[host]
	if h == nil {
		h = &hostSlots{}
		g.hosts[host] = h
	}
	if g.used < g.slots && g.slotWaiting == 0 {
		g.used++
		h.inflight++
		g.mu.Unlock()
		return nil
	}
	g.seq++
	w := &gateWaiter{ch: make(chan struct{}), seq: g.seq}
	h.waiting = append(h.waiting, w)
	g.slotWaiting++
	g.mu.Unlock()
	note("handshake slots", 0)
	select {
	case <-w.ch:
		return nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	if w.granted {
		g.mu.Unlock()
		g.releaseSlot(host)
		return ctx.Err()
	}
	for i, q := range h.waiting {
		if q == w {
			h.waiting = append(h.waiting[:i], h.waiting[i+1:]...)
			g.slotWaiting--
			break
		}
	}
	g.forgetHostLocked(host, h)
	g.mu.Unlock()
	return ctx.Err()
}

// releaseSlot frees host's slot and hands it to the host with the fewest
// handshakes in flight among those waiting (oldest first between equals).
func (g *dialGate) releaseSlot(host string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.used--
	h := g.hosts[host]
	h.inflight--
	g.forgetHostLocked(host, h)
	for g.used < g.slots && g.slotWaiting > 0 {
		var best *hostSlots
		for _, o := range g.hosts {
			if len(o.waiting) == 0 {
				continue
			}
			if best == nil || o.inflight < best.inflight || (o.inflight == best.inflight && o.waiting[0].seq < best.waiting[0].seq) {
				best = o
			}
		}
		w := best.waiting[0]
		best.waiting[0] = nil
		best.waiting = best.waiting[1:]
		g.slotWaiting--
		best.inflight++
		g.used++
		w.granted = true
		close(w.ch)
	}
}

func (g *dialGate) forgetHostLocked(host string, h *hostSlots) {
	if h.inflight == 0 && len(h.waiting) == 0 {
		delete(g.hosts, host)
	}
}

// admissionKey returns the admission key of a dial to u with headers h.
func (c *Client) admissionKey(u *url.URL, h http.Header) string {
	key := u.Host
	if a := c.cfg.admission; a != nil && a.Key != nil {
		func() {
			defer c.recoverCallback("admission key func")
			key = a.Key(u, h)
		}()
	}
	c.admit.key.Store(&key)
	return key
}

// enterGate passes the pool's gates for a dial to host under key. A wait
// is reported as a state change only for the feed's own dial (not a
// standby connection's: the feed's state and attempt count are the
// primary's, owned by the feed's loop), and only while the feed is
// connecting (not for a rotation's dial).
func (c *Client) enterGate(ctx context.Context, host, key string, own bool) (*dialTicket, error) {
	var start time.Time
	t, err := c.cfg.dialSem.enter(ctx, host, key, func(reason string, d time.Duration) {
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

// upstreamSaid applies the penalty an upstream asked for with err (a
// handshake answer or a close code) to the key of the feed's latest dial.
func (c *Client) upstreamSaid(err error) {
	a := c.cfg.admission
	if a == nil || err == nil {
		return
	}
	kp := c.admit.key.Load()
	if kp == nil {
		return
	}
	var d time.Duration
	var he *HandshakeError
	switch {
	case errors.As(err, &he) && he.StatusCode == http.StatusTooManyRequests && he.RetryAfter > 0:
		d = min(he.RetryAfter, c.cfg.maxRetryAfter)
	case errors.As(err, &he) && (he.StatusCode == http.StatusTooManyRequests || he.StatusCode == http.StatusTeapot):
		d = a.Penalty
	case CloseStatus(err) == CloseCodePolicyViolation || CloseStatus(err) == CloseCodeTryAgainLater:
		d = a.Penalty
	default:
		return
	}
	if d > 0 {
		c.log.Warn("upstream asked to slow down: holding its admission key", "err", err, "for", d)
		c.cfg.dialSem.penalize(*kp, d)
	}
}

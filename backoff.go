package wspool

import (
	"errors"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Backoff parameters that are not options: growth per failure and the
// randomisation applied to every wait (±50% spreads a fleet of feeds that
// failed together over a window as wide as the wait itself).
const (
	backoffMultiplier    = 1.5
	backoffRandomization = 0.5
)

// retryPolicy is one feed's reconnect policy: a jittered exponential backoff
// (backoff/v4, one per feed since it is not safe for concurrent use) that
// never gives up on its own, reset only after a connection proved stable, and
// stretched to honour a server's Retry-After.
type retryPolicy struct {
	c          *Client
	cfg        *config
	bo         *backoff.ExponentialBackOff // created at the first failure
	failures   int                         // consecutive attempts without a stable connection
	healthyEnd bool                        // the last event was the end of a healthy connection
}

func newRetryPolicy(c *Client) retryPolicy { return retryPolicy{c: c, cfg: &c.cfg} }

// backoff returns the exponential backoff, creating it on first use (a feed
// that never fails never needs one).
func (r *retryPolicy) backoff() *backoff.ExponentialBackOff {
	if r.bo == nil {
		bo := backoff.NewExponentialBackOff()
		bo.InitialInterval = r.cfg.initialBO
		bo.MaxInterval = r.cfg.maxBO
		bo.Multiplier = backoffMultiplier
		bo.RandomizationFactor = backoffRandomization
		// backoff/v4 defaults MaxElapsedTime to 15 minutes, after which NextBackOff
		// returns Stop: that would silently end a feed meant to retry forever.
		bo.MaxElapsedTime = 0
		bo.Reset()
		r.bo = bo
	}
	return r.bo
}

type Health uint8

const (
	// HealthMinUptime: the connection stayed up for the minimum uptime
	// (WithMinUptime). The default.
	HealthMinUptime Health = 1 << iota
	// HealthOnConnect: the handshake and OnConnect succeeded.
	HealthOnConnect
	// HealthFirstMessage: a data message (not a heartbeat reply) arrived.
	HealthFirstMessage
)

// WithHealthyWhen sets when a connection counts as healthy and resets the
// backoff. The default, HealthMinUptime, keeps waits growing against an
// upstream that accepts, lets the feed subscribe and then kicks it; add
// HealthFirstMessage to also require data, or use HealthOnConnect alone for
// upstreams that legitimately close short sessions.
func WithHealthyWhen(h Health) Option {
	return func(c *config) {
		if h == 0 || h&^(HealthMinUptime|HealthOnConnect|HealthFirstMessage) != 0 {
			c.errorf("invalid health condition %d", h)
			return
		}
		c.healthy = h
	}
}

// connectionEnded records how a connection that reached the connected state
// went. Only a healthy one resets the backoff; a server that accepts and drops
// at once keeps the waits growing.
func (r *retryPolicy) connectionEnded(uptime time.Duration, gotData bool) {
	h := r.cfg.healthy
	if h&HealthMinUptime != 0 && uptime < r.cfg.minUptime {
		return
	}
	if h&HealthFirstMessage != 0 && !gotData {
		return
	}
	if r.bo != nil {
		r.bo.Reset()
	}
	r.failures = 0
	r.healthyEnd = true
}

// next records a failed attempt and returns how long to wait before the next
// one, and false when WithMaxAttempts says to give up.
func (r *retryPolicy) next(err error) (time.Duration, bool) {
	if r.healthyEnd {
		// The end of a healthy connection is not a failed attempt: it does
		// not count against WithMaxAttempts (the wait still applies).
		r.healthyEnd = false
	} else {
		r.failures++
		if r.cfg.maxAttempts > 0 && r.failures >= r.cfg.maxAttempts {
			return 0, false
		}
	}
	var wait time.Duration
	if f := r.cfg.retryFunc; f != nil {
		w, retry, ok := r.c.askRetryFunc(f, r.failures, err)
		if ok && !retry {
			return 0, false
		}
		if ok {
			wait = w
		} else {
			wait = r.defaultWait(err)
		}
	} else {
		wait = r.defaultWait(err)
	}
	var he *HandshakeError
	if errors.As(err, &he) && he.RetryAfter > 0 {
		ra := min(he.RetryAfter, r.cfg.maxRetryAfter)
		wait = max(wait, ra)
	}
	return wait, true
}

// defaultWait is the built-in curve: the jittered exponential backoff, or a
// short random wait after a 1012 (service restart) close.
func (r *retryPolicy) defaultWait(err error) time.Duration {
	if CloseStatus(err) == CloseCodeServiceRestart {
		return restartWait(r.cfg.initialBO)
	}
	bo := r.backoff()
	wait := bo.NextBackOff()
	if wait == backoff.Stop { // cannot happen with MaxElapsedTime 0; be safe
		wait = bo.MaxInterval
	}
	return wait
}

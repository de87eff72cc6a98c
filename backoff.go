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

// retryPolicy is one connection loop's reconnect policy (the feed's, or one
// standby connection's: the same rule for both, see "Failure accounting" in
// doc.go): a jittered exponential backoff (backoff/v4, one per loop since it
// is not safe for concurrent use) that never gives up on its own, reset only
// after a connection that was not a failure, and stretched to honour a
// server's Retry-After.
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

// Health is a condition under which a connection that ended counts as
// healthy (WithHealthyWhen).
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

// connectionEnded records how a connection that reached the connected state
// ended (cause): requested says a reconnect was asked for on it. Only a
// connection that was not a failure resets the backoff (the table in doc.go);
// a server that accepts and drops at once keeps the waits growing.
func (r *retryPolicy) connectionEnded(uptime time.Duration, gotData, requested bool, cause error) {
	if !connectionHealthy(r.cfg, uptime, gotData, requested, cause) {
		return
	}
	if r.bo != nil {
		r.bo.Reset()
	}
	r.failures = 0
	r.healthyEnd = true
}

// connectionHealthy is the failure-accounting rule for a connection that
// reached the connected state: see "Failure accounting" in doc.go.
func connectionHealthy(cfg *config, uptime time.Duration, gotData, requested bool, cause error) bool {
	if code := CloseStatus(cause); code == CloseCodePolicyViolation || code == CloseCodeTryAgainLater {
		return false // the upstream said slow down: never reset
	}
	if requested {
		return true // we asked for the reconnect: the connection was fine
	}
	h := cfg.healthy
	if h == 0 { // the default: data or the minimum uptime, whichever first
		return gotData || uptime >= cfg.minUptime
	}
	if h&HealthMinUptime != 0 && uptime < cfg.minUptime {
		return false
	}
	if h&HealthFirstMessage != 0 && !gotData {
		return false
	}
	return true
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

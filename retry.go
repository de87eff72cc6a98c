package wspool

import (
	"math/rand/v2"
	"time"
)

// WithRetryPolicy replaces the built-in backoff curve (×1.5 per failure,
// ±50 % jitter, capped by WithBackoff's max) with f, which reads the failure
// and decides: it returns how long to wait before the next attempt, or
// retry=false to end the feed (Run then returns an error wrapping
// ErrMaxAttempts and err). attempt counts consecutive failed attempts,
// this one included; it is 0 when a connection that had been healthy (see
// WithHealthyWhen) ended. err is the failure: use errors.As with
// *HandshakeError for the HTTP status and Retry-After, CloseStatus for the
// close code.
//
// f runs on the feed's own goroutine after the permanent classification
// (WithPermanentFunc), which still ends the feed first. What the library
// enforces either way: WithMaxAttempts, a server's Retry-After as the
// least wait, the pool's admission and its penalties (WithAdmission), and
// the wake after an outage. A panic in f is reported and the built-in
// curve used for that failure. Without this option the built-in curve
// applies, with a short random wait (up to the initial backoff) after a
// 1012 (service restart) close.
func WithRetryPolicy(f func(attempt int, err error) (wait time.Duration, retry bool)) Option {
	return func(c *config) {
		if f == nil {
			c.errorf("retry policy must not be nil")
			return
		}
		c.retryFunc = f
	}
}

// askRetryFunc calls the retry policy; ok is false if it panicked or
// returned a negative wait.
func (c *Client) askRetryFunc(f func(int, error) (time.Duration, bool), attempt int, err error) (wait time.Duration, retry, ok bool) {
	defer func() {
		if !ok {
			wait, retry = 0, true
		}
	}()
	defer c.recoverCallback("retry policy")
	wait, retry = f(attempt, err)
	return wait, retry, wait >= 0 || !retry
}

// restartWait is the wait after a 1012 close: the server is restarting and
// asks to come back soon, so a random wait of up to initial, not a growing one.
func restartWait(initial time.Duration) time.Duration {
	return rand.N(initial) + time.Millisecond
}

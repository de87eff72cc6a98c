package wspool

import (
	"math/rand/v2"
	"time"
)

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

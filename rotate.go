package wspool

import (
	"context"
	"math/rand/v2"
	"time"
)

// WithMaxConnectionAge makes the feed replace each connection after about d
// (randomised by up to -10% so a fleet does not rotate in step), for
// upstreams that cut connections at a fixed age. Replacement is
// make-before-break: a new connection is dialled and its OnConnect run while
// the old one keeps delivering; then Send switches to the new connection, the
// old one is closed with 1000 and drained to its end, and delivery continues
// from the new one. There is no gap; the two connections overlap, so messages
// published during the switch may arrive on both — see WithDuplicateFilter.
// If the new connection cannot be made, the old one is kept and the
// replacement retried after d/10. Zero, the default, never rotates.
func WithMaxConnectionAge(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.errorf("max connection age must not be negative, got %v", d)
			return
		}
		c.maxAge = d
	}
}

// WithDuplicateFilter sets a function consulted, after a rotation, for the
// first messages of the new connection: each message for which it returns
// true is dropped as a duplicate of one the old connection delivered, until it
// first returns false. Typically it compares a sequence number with the last
// one the handler saw. It runs on the feed's reader, before the queue: with
// WithQueue the handler lags behind the reader, so a filter that compares
// with what the handler has handled lets some duplicates through to the
// handler, which must then drop them itself.
func WithDuplicateFilter(isDup func(Message) bool) Option {
	return func(c *config) { c.dupFilter = isDup }
}

// rotator replaces one connection by a new one in the background.
type rotator struct {
	c      *Client
	old    *Conn
	timer  *time.Timer
	cancel context.CancelFunc
	done   chan struct{}
	ctx    context.Context
}

func (c *Client) startRotator(ctx context.Context, old *Conn) *rotator {
	if c.cfg.maxAge <= 0 {
		return nil
	}
	rctx, cancel := context.WithCancel(ctx)
	r := &rotator{c: c, old: old, cancel: cancel, done: make(chan struct{}), ctx: rctx}
	age := c.cfg.maxAge - time.Duration(rand.Int64N(int64(c.cfg.maxAge/10)+1))
	r.timer = time.AfterFunc(age, r.run)
	return r
}

// run dials the replacement, publishes it to Send and starts closing the old
// connection; the reader then finds the replacement in old.next.
func (r *rotator) run() {
	defer close(r.done)
	id := markOwn() // runs the request func and OnConnect
	defer unmarkOwn(id)
	c := r.c
	for r.ctx.Err() == nil {
		next, err := c.dial(r.ctx)
		if err == nil {
			err = c.runOnConnect(r.ctx, next)
			if err != nil {
				next.close()
			}
		}
		if err == nil && r.ctx.Err() != nil {
			// The old connection ended or the feed is stopping meanwhile:
			// the feed's loop takes it from here.
			next.closeHandshake(true)
			next.close()
			return
		}
		if err == nil {
			err = next.deadCause()
		}
		if err == nil {
			next.afterRotation.Store(true)
			c.mu.Lock()
			next.start = time.Now()
			r.old.next.Store(next)
			c.mu.Unlock()
			// Send switches to the new connection: a message being written
			// on the old one finishes before the old one's close frame (it
			// waits for the writer lock); one that had picked the old one
			// but not started finds it closing and goes on the new one.
			c.publish(next)
			c.log.Info("rotating connection")
			r.old.closeHandshake(false)
			return
		}
		if r.ctx.Err() != nil {
			return
		}
		c.recordError(err)
		c.log.Warn("rotation failed, keeping the current connection", "err", err)
		t := time.NewTimer(c.cfg.maxAge / 10)
		select {
		case <-r.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// stop cancels a rotation that has not switched yet and waits for it.
func (r *rotator) stop() {
	if r == nil {
		return
	}
	r.cancel()
	if r.timer.Stop() {
		close(r.done) // never started
	}
	<-r.done
}

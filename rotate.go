package wspool

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// Rotate replaces the current connection make-before-break, on demand: a new
// connection is dialled (through the pool's admission like any dial) and its
// OnConnect run while the current one keeps delivering; then Send switches to
// the new one and the old one is closed with 1000 and drained to its end, as
// for WithMaxConnectionAge. It returns once Send has switched (nil), or with
// the error of the attempt (the current connection is then kept), or
// ErrNotConnected if the feed has no connection, or ctx.Err() if ctx ends
// first (the rotation goes on). A rotation already under way is joined; with
// WithMaxConnectionAge that includes the connection's timed rotation, which
// Rotate starts early: a failed attempt of it is retried after a tenth of the
// age, so Rotate then returns once one succeeds or ctx ends.
// With a context the library passed to a callback (or one derived from it)
// it starts the rotation and returns nil without waiting for it. Otherwise it
// waits for the rotation's OnConnect: a goroutine that an OnConnect waits for
// must pass OnConnect's context (or one derived from it), as it must to any
// wait in OnConnect, or the two wait for each other until ctx ends.
func (c *Client) Rotate(ctx context.Context) error {
	c.mu.Lock()
	conn := c.liveConnLocked()
	var r *rotator
	if conn != nil {
		r = conn.rot
		if r == nil && !conn.rotStopped && c.feedCtx != nil {
			r = c.newRotator(c.feedCtx, conn, false)
			conn.rot = r
		}
	}
	c.mu.Unlock()
	if r == nil {
		return ErrNotConnected
	}
	r.fireNow()
	if inCallback(ctx) {
		return nil
	}
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// rotator replaces one connection by a new one in the background.
type rotator struct {
	c      *Client
	old    *Conn
	retry  bool // timed rotation: a failed attempt is retried after maxAge/10
	timer  *time.Timer
	once   sync.Once // starts run
	cancel context.CancelFunc
	done   chan struct{}
	err    error // the outcome, written before done is closed
	ctx    context.Context
	// feedCtx is the feed's: the replacement's reader runs under it, since
	// it goes on with the feed's loop.
	feedCtx context.Context
}

// armRotationLocked arms the timed rotation of conn (WithMaxConnectionAge)
// as it becomes the connection Send writes on, under c.mu: a Rotate that
// finds conn then joins this rotator instead of starting a second one that
// the reader's stopRotation would not know of. c.mu is held.
func (c *Client) armRotationLocked(conn *Conn) {
	if c.cfg.maxAge <= 0 || conn.rot != nil || conn.rotStopped || c.feedCtx == nil {
		return
	}
	r := c.newRotator(c.feedCtx, conn, true)
	age := c.cfg.maxAge - time.Duration(rand.Int64N(int64(c.cfg.maxAge/10)+1))
	r.timer = time.AfterFunc(age, r.fireFromTimer)
	conn.rot = r
}

func (c *Client) newRotator(ctx context.Context, old *Conn, retry bool) *rotator {
	rctx, cancel := context.WithCancel(ctx)
	return &rotator{c: c, old: old, retry: retry, cancel: cancel, done: make(chan struct{}), ctx: rctx, feedCtx: ctx}
}

// fireFromTimer starts the timed rotation (the timer has fired: nothing to
// stop, and r.timer may not be visible to this goroutine yet).
func (r *rotator) fireFromTimer() {
	r.once.Do(func() { go r.run() })
}

// fireNow starts the rotation if it has not started (Rotate; r came through
// client.mu, so r.timer is visible).
func (r *rotator) fireNow() {
	r.once.Do(func() {
		if r.timer != nil {
			r.timer.Stop()
		}
		go r.run() // runs the request func and OnConnect
	})
}

// run dials the replacement, publishes it to Send and starts closing the old
// connection; the reader then finds the replacement in old.next.
func (r *rotator) run() {
	defer close(r.done)
	c := r.c
	for {
		if r.err = r.ctx.Err(); r.err != nil {
			return
		}
		// The replacement is read from its handshake on (read.go); what
		// arrives on it is held until the old connection's reader has read
		// the old one to its end and releases it (handOff).
		next, err := c.open(r.ctx, r.feedCtx, c.url, nil)
		if err == nil {
			if dead := next.deadCause(); dead != nil {
				// It ended during OnConnect: keep the old one (which has
				// delivered the same stream meanwhile).
				c.abort(next, false)
				next, err = nil, dead
			}
		}
		if err == nil && r.ctx.Err() != nil {
			// The old connection ended or the feed is stopping meanwhile:
			// the feed's loop takes it from here.
			c.abort(next, true)
			r.err = r.ctx.Err()
			return
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
			r.old.sendClose()
			return
		}
		r.err = err
		if r.ctx.Err() != nil {
			return
		}
		c.recordError(err)
		c.log.Warn("rotation failed, keeping the current connection", "err", err)
		if !r.retry {
			return
		}
		t := time.NewTimer(c.cfg.maxAge / 10)
		select {
		case <-r.ctx.Done():
			t.Stop()
			r.err = r.ctx.Err()
			return
		case <-t.C:
		}
	}
}

// stopRotation cancels a rotation of conn that has not switched yet, waits
// for it, and keeps Rotate from starting another.
func (c *Client) stopRotation(conn *Conn) {
	c.mu.Lock()
	conn.rotStopped = true
	r := conn.rot
	c.mu.Unlock()
	if r == nil {
		return
	}
	r.cancel()
	started := true
	r.once.Do(func() { // never started: nobody else will close done
		started = false
		if r.timer != nil {
			r.timer.Stop()
		}
		r.err = ErrNotConnected
		close(r.done)
	})
	if started {
		<-r.done
	}
}

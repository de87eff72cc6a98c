package wspool

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wspool/wspool/internal/redact"
)

// Standby configures hot standby connections (WithStandby).
type Standby struct {
	// Connections is how many standby connections the feed keeps beside its
	// primary one. Required (>= 1).
	Connections int
	// URLs, if set, are what the standby connections dial (connection i uses
	// URLs[(i-1) % len(URLs)]) instead of the feed's URL: alternate
	// endpoints of the same stream. They must have the feed URL's scheme.
	URLs []string
}

// StandbyStats describes one standby connection.
type StandbyStats struct {
	// Index is 1 for the first standby connection.
	Index int
	// URL is the endpoint it dials (redacted).
	URL string
	// Connected reports whether it has a live connection now.
	Connected bool
	// Connects and Disconnects count its connections.
	Connects, Disconnects int64
	// MessagesIn counts the messages it read; Won those it delivered first
	// (the rest were copies the other connections had delivered already).
	MessagesIn, Won int64
	LastError       error
}

// lane is one standby connection's loop.
type lane struct {
	c   *Client
	idx int
	url *url.URL
	rp  retryPolicy

	connected                   atomic.Bool
	connects, disconnects, msgs atomic.Int64
	won, data                   atomic.Int64
	mu                          sync.Mutex
	lastErr                     error
}

// startLanes starts the standby connections' loops (under the feed's
// goroutine supervision); finish stops and waits for them.
func (c *Client) startLanes(ctx context.Context) {
	sb := c.cfg.standby
	if sb == nil {
		return
	}
	lctx, cancel := context.WithCancel(ctx)
	set := &standbySet{cancel: cancel}
	c.sb = set
	for i := 1; i <= sb.Connections; i++ {
		u := c.url
		if len(sb.URLs) > 0 {
			u, _ = url.Parse(sb.URLs[(i-1)%len(sb.URLs)]) // validated by WithStandby
		}
		l := &lane{c: c, idx: i, url: u, rp: newRetryPolicy(c)}
		set.lanes = append(set.lanes, l)
		set.wg.Add(1)
		c.spawn(func() error {
			defer set.wg.Done()
			l.run(lctx, nil)
			return nil
		})
	}
}

// stopLanes ends the standby connections (close frames, bounded by the close
// timeout) and waits for their goroutines.
func (c *Client) stopLanes() {
	if c.sb == nil {
		return
	}
	c.sb.cancel()
	c.sb.wg.Wait()
}

// standbySet is a feed's standby connections (WithStandby): set by begin,
// then read-only but for its WaitGroup and the merge turn; a feed without
// standby connections holds none (an idle feed's memory).
type standbySet struct {
	lanes  []*lane
	cancel context.CancelFunc
	wg     sync.WaitGroup
	merge  sync.Mutex // the merge turn (doc.go's lock table)
}

// run keeps the standby connection up until ctx ends or a permanent
// failure; cause is why its previous connection ended (nil at the start). Once
// a connection is released, run returns: the connection's reader (read.go)
// calls it again when the connection ends.
func (l *lane) run(ctx context.Context, cause error) {
	c := l.c
	for {
		if cause != nil {
			if ctx.Err() != nil {
				return
			}
			l.mu.Lock()
			l.lastErr = cause
			l.mu.Unlock()
			if c.isPermanent(cause) {
				c.log.Warn("standby connection stopped", "standby", l.idx, "err", cause)
				return
			}
			wait, retry := l.rp.next(cause)
			if !retry {
				// WithMaxAttempts or WithRetryPolicy says stop: this standby
				// connection stops (the feed goes on), as the feed's own loop
				// would end the feed.
				err := fmt.Errorf("%w (%d): %w", ErrMaxAttempts, l.rp.failures, cause)
				l.mu.Lock()
				l.lastErr = err
				l.mu.Unlock()
				c.log.Warn("standby connection stopped", "standby", l.idx, "err", err)
				err = fmt.Errorf("wspool: standby %d stopped: %w", l.idx, err)
				c.recordError(err)
				if c.cfg.onError != nil {
					c.post(event{err: err})
				}
				return
			}
			c.log.Debug("standby connection lost", "standby", l.idx, "err", cause, "wait", wait)
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
		if ctx.Err() != nil {
			return
		}
		conn, err := c.open(ctx, ctx, l.url, l)
		if err == nil {
			l.connects.Add(1)
			l.connected.Store(true)
			conn.since = time.Now()
			c.release(ctx, conn)
			return
		}
		cause = err
	}
}

// ended records the end of the standby connection conn with cause.
func (l *lane) ended(conn *Conn, cause error) {
	l.connected.Store(false)
	l.disconnects.Add(1)
	conn.close()
	l.rp.connectionEnded(time.Since(conn.since), conn.gotData.Load(), conn.endReason.Load() != nil, cause)
}

// deliverMerged delivers a message of any of the feed's connections when
// standby connections are on: the connections take turns (the handler is
// never called concurrently with itself), and with sequenced data the first
// copy wins. It reports whether msg was delivered.
func (c *Client) deliverMerged(ctx context.Context, conn *Conn, msg Message, data bool) bool {
	c.sb.merge.Lock()
	defer c.sb.merge.Unlock()
	if data {
		switch c.checkSequence(conn, &msg) {
		case seqDuplicate:
			c.stats.duplicates.Add(1)
			return false
		case seqResync:
			return false
		}
	}
	if c.inq != nil {
		c.enqueue(ctx, conn, msg)
	} else {
		c.deliver(ctx, msg)
	}
	return true
}

// standbyStats reports the standby connections.
func standbyStats(lanes []*lane) []StandbyStats {
	if len(lanes) == 0 {
		return nil
	}
	out := make([]StandbyStats, len(lanes))
	for i, l := range lanes {
		l.mu.Lock()
		le := l.lastErr
		l.mu.Unlock()
		out[i] = StandbyStats{
			Index: l.idx, URL: redact.URL(l.url), Connected: l.connected.Load(),
			Connects: l.connects.Load(), Disconnects: l.disconnects.Load(),
			MessagesIn: l.msgs.Load(), Won: l.won.Load(), LastError: le,
		}
	}
	return out
}

// checkStandby validates the standby option against the rest.
func (c *config) checkStandby(u *url.URL) error {
	sb := c.standby
	if sb == nil {
		return nil
	}
	if c.sequence == nil {
		return fmt.Errorf("%w: WithStandby needs WithSequence to merge its connections", ErrInvalidOption)
	}
	for _, raw := range sb.URLs {
		su, _ := url.Parse(raw)
		if su.Scheme != u.Scheme {
			return fmt.Errorf("%w: standby URL scheme %q differs from the feed's %q", ErrInvalidOption, su.Scheme, u.Scheme)
		}
	}
	return nil
}

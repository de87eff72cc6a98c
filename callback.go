package wspool

import (
	"context"
	"sync"
)

// Callbacks and the methods they may call.
//
// The library never recognises goroutines (Go has no goroutine identity, and
// the design needs none). Instead, two rules make every exported method safe
// from every callback and from every goroutine a callback starts:
//
//  1. The stopping methods (Client.Close, Client.Drain, Pool.Close,
//     Pool.Drain, Pool.Remove) only start the stop and return at once; Done
//     and Run's return say when it is over. A stop never waits for a
//     callback, so a callback that stops its own feed, or a goroutine it
//     waits for that does, cannot wait for itself.
//  2. What must differ inside a callback is read from the context the
//     library passed to it: every such context derives from the feed's own
//     and carries the callback mark, and so does every context a callback
//     derives from it for the goroutines it starts. A Send with such a
//     context never waits for a connection (the reconnect may need the very
//     callback to return first), and a Rotate with one starts the rotation
//     and returns without waiting for it.
//
// And no library lock is held while user code runs (see the lock table in
// doc.go), so user code can never wait on a lock its own caller holds.

// inCallback reports whether ctx is, or derives from, a context the library
// passed to a callback: the mark is the feed that ClientFromContext returns,
// set on the feed's context by begin.
func inCallback(ctx context.Context) bool {
	return ctx != nil && ctx.Value(clientKey{}) != nil
}

// The event dispatcher.
//
// OnStateChange and OnError are not called by the goroutine that saw the
// event (the feed's loop, its reader, a writer): they are queued, in order,
// and called by one dispatcher goroutine per feed, started while events wait
// and gone when none do (an idle feed holds no dispatcher). So the feed's
// loop never waits for these callbacks, whatever they wait for, and they are
// never called concurrently with themselves. The queue is bounded
// (maxPendingEvents): a callback that blocks for longer than that many
// events loses the oldest, which are counted (Stats.EventsDropped) and
// logged. The last event, StateClosed, is delivered after all others before
// Run returns.

// maxPendingEvents bounds the events waiting for a blocked callback.
const maxPendingEvents = 1024

// event is one queued callback call: a state change or an error.
type event struct {
	change StateChange
	err    error // OnError's; nil for a state change
}

// events is a feed's queue of callback calls (guarded by its mu).
type events struct {
	mu      sync.Mutex
	q       []event
	running bool // a dispatcher goroutine is delivering
}

// post queues ev for the dispatcher, starting one if none runs. After the
// feed has finished (no background goroutine may start), the caller
// delivers inline: see drainEvents.
func (c *Client) post(ev event) {
	e := &c.events
	e.mu.Lock()
	if len(e.q) >= maxPendingEvents {
		e.q[0] = event{}
		e.q = e.q[1:]
		c.stats.eventsDropped.Add(1)
	}
	e.q = append(e.q, ev)
	if e.running || !c.bgEnter() {
		e.mu.Unlock()
		return
	}
	e.running = true
	e.mu.Unlock()
	go func() {
		defer c.bgLeave()
		c.dispatch(true)
	}()
}

// dispatch delivers queued events in order until none is left. bg: it runs
// as the dispatcher goroutine (and clears running when it leaves).
func (c *Client) dispatch(bg bool) {
	e := &c.events
	for {
		e.mu.Lock()
		if len(e.q) == 0 {
			if bg {
				e.running = false
			}
			e.q = nil
			e.mu.Unlock()
			return
		}
		ev := e.q[0]
		e.q[0] = event{}
		e.q = e.q[1:]
		e.mu.Unlock()
		if ev.err != nil {
			c.callOnError(ev.err)
		} else {
			c.callOnState(ev.change)
		}
	}
}

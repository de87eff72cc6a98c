package wspool

import (
	"errors"
	"sync"
	"time"
)

// SendPacing limits the messages written on one connection, for upstreams
// that close a connection (or ban its IP) when it sends too fast.
type SendPacing struct {
	// Messages is the most messages written on one connection within any
	// window of length Per. Required (> 0), with Per.
	Messages int
	Per      time.Duration
	// Pings counts ping control frames too (some upstreams count every
	// frame); a ping that finds no room is put off to a later tick. By
	// default pings are not paced.
	Pings bool
}

// WithSendPacing paces what the library writes on a connection for the
// user: OnConnect's Conn.Send, the flush of the send buffer after a
// reconnect, Send and SendAsync, heartbeat messages, and with Pings ping
// frames; at most Messages within any window of Per on one connection (a new
// connection starts a fresh count). A window counts each message from the
// moment its write ended, so the upstream never sees more than Messages per
// Per however the writes are delayed on the way. Close frames are not paced.
//
// A write waits for its turn without holding the writer role's lock, and
// the wait ends if the connection dies (the message is then carried to the
// next connection or fails, as without pacing) or, for Send and Conn.Send,
// if ctx ends (Send returns ctx.Err(); nothing was written). Pacing waits
// are waits for a turn, never for a connection, so a Send from a callback
// may wait for them. Note the OnConnect hook's context (the handshake
// timeout) bounds a paced resubscription done there: 500 subscriptions at
// 100 per second need a handshake timeout above 5 s, or go through the send
// buffer (SendAsync while disconnected), which has no such bound.
func WithSendPacing(p SendPacing) Option {
	return func(c *config) {
		if p.Messages <= 0 || p.Per <= 0 {
			c.errorf("send pacing needs Messages > 0 and Per > 0, got %d per %v", p.Messages, p.Per)
			return
		}
		c.pacing = &p
	}
}

// pacer is one connection's sliding window of write end times.
type pacer struct {
	per   time.Duration
	pings bool

	mu     sync.Mutex
	window []time.Time // end times of the last Messages writes (zero: unused)
	next   int         // oldest entry
	last   int         // entry of the write in progress
}

func newPacer(p *SendPacing) *pacer {
	if p == nil {
		return nil
	}
	return &pacer{per: p.Per, pings: p.Pings, window: make([]time.Time, p.Messages)}
}

// delay is how long until one more message fits the window.
func (p *pacer) delay(now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.delayLocked(now)
}

func (p *pacer) delayLocked(now time.Time) time.Duration {
	e := p.window[p.next]
	if e.IsZero() {
		return 0
	}
	return max(e.Add(p.per).Sub(now), 0)
}

// take claims room for one message now; false if there is none. The writer
// lock is held, so at most one claim is in progress.
func (p *pacer) take() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if p.delayLocked(now) > 0 {
		return false
	}
	p.window[p.next] = now
	p.last = p.next
	p.next = (p.next + 1) % len(p.window)
	return true
}

// done records when the claimed message's write ended.
func (p *pacer) done() {
	p.mu.Lock()
	p.window[p.last] = time.Now()
	p.mu.Unlock()
}

// errStopped is Conn.write's answer when its stop channel (the sender's
// context) closed while the message waited for its turn: nothing written.
var errStopped = errors.New("wspool: send wait stopped")

// lockWriterPaced takes the writer lock with room in the pacing window; false
// if the connection died or stop closed first. The pacing wait is done
// without the lock, so a close frame or another writer is never held up by it.
func (cn *Conn) lockWriterPaced(stop <-chan struct{}) bool {
	p := cn.pacer
	if p == nil {
		return cn.lockWriter(stop)
	}
	for {
		if d := p.delay(time.Now()); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-cn.dead:
				t.Stop()
				return false
			case <-stop:
				t.Stop()
				return false
			}
		}
		if !cn.lockWriter(stop) {
			return false
		}
		if p.take() {
			return true
		}
		cn.unlockWriter() // a ping or heartbeat took the room meanwhile
	}
}

// unlockWriterPaced releases the writer lock taken by lockWriterPaced.
func (cn *Conn) unlockWriterPaced() {
	if cn.pacer != nil {
		cn.pacer.done()
	}
	cn.unlockWriter()
}

// pingPaced claims room for a ping with the writer lock held; false if pings
// are paced and there is none.
func (cn *Conn) pingPaced() bool {
	p := cn.pacer
	return p == nil || !p.pings || p.take()
}

// pingPacedDone records the end of a paced ping's write.
func (cn *Conn) pingPacedDone() {
	if p := cn.pacer; p != nil && p.pings {
		p.done()
	}
}

// pacesPings reports whether ping frames are paced on cn.
func (cn *Conn) pacesPings() bool { return cn.pacer != nil && cn.pacer.pings }

// stopped reports whether stop is closed.
func stopped(stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
		return false
	}
}

package wspool

import (
	"errors"
	"sync"
	"time"

	"github.com/wspool/wspool/internal/ratewindow"
)

// SendPacing limits the messages written on one connection, for upstreams
// that close a connection (or ban its IP) when it sends too fast.
type SendPacing struct {
	// Messages is the most messages written on one connection within any
	// window of length Per, as the upstream counts them. Required (> 0),
	// with Per: set them to the upstream's own limit (10 per second for
	// "10 messages per second").
	Messages int
	Per      time.Duration
	// Margin is how much the time from the end of a message's write to the
	// upstream's count of it may vary between messages (network, the
	// upstream's scheduling) without the upstream ever counting more than
	// Messages within a window of Per: the library keeps Messages per
	// Per+Margin from the end of one write to the start of another. Zero
	// means Per/10; it costs that much throughput (10 per second with the
	// default margin is at most 10 every 1.1 s).
	Margin time.Duration
	// Pings counts ping control frames too (some upstreams count every
	// frame); a ping that finds no room is put off to a later tick. By
	// default pings are not paced.
	Pings bool
}

// pacer is one connection's sliding window of write end times.
type pacer struct {
	pings bool

	mu  sync.Mutex
	win *ratewindow.Window // end times of the writes, over Per+Margin

	// A server ping's reply that found no room waits here for the replier
	// goroutine (at most one at a time, tracked by wg).
	reply    *pendingReply
	replying bool
	wg       sync.WaitGroup
}

type pendingReply struct {
	typ  MessageType
	data []byte
}

func newPacer(p *SendPacing) *pacer {
	if p == nil {
		return nil
	}
	return &pacer{pings: p.Pings, win: ratewindow.New(p.Messages, p.Per+p.Margin)}
}

// delay is how long until one more message fits the window.
func (p *pacer) delay(now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return max(p.win.Wait(now, 0), 0)
}

// take claims room for one message now; false if there is none. The writer
// lock is held, so at most one claim is in progress; done records its end.
func (p *pacer) take() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.win.Wait(time.Now(), 0) == 0
}

// done records that the claimed message's write ended now: the window
// counts it from then, since it may reach the upstream as late as that.
func (p *pacer) done() {
	p.mu.Lock()
	p.win.Add(time.Now())
	p.mu.Unlock()
}

// wait waits for the replier goroutine, if any, to end (it ends once the
// connection is torn down). Nil-safe.
func (p *pacer) wait() {
	if p != nil {
		p.wg.Wait()
	}
}

// writeReply writes the reply to a server ping without ever making the
// reader wait for a pacing turn: with no room now, the reply waits for one
// on a goroutine of its own (a newer reply replaces one still waiting: the
// upstream wants its latest ping answered). It returns errNotSent or the
// write's error when it wrote at once, nil otherwise.
func (cn *Conn) writeReply(typ MessageType, data []byte) error {
	p := cn.pacer
	if p == nil {
		return cn.write(nil, typ, data)
	}
	p.mu.Lock()
	if p.replying {
		p.reply = &pendingReply{typ, data}
		p.mu.Unlock()
		return nil
	}
	p.mu.Unlock()
	if !cn.lockWriter(nil) {
		return errNotSent
	}
	if p.take() {
		err := cn.writeLocked(typ, data)
		cn.unlockWriterPaced()
		return err
	}
	cn.unlockWriter()
	p.mu.Lock()
	p.reply = &pendingReply{typ, data}
	if !p.replying {
		p.replying = true
		p.wg.Add(1)
		go cn.replyLater()
	}
	p.mu.Unlock()
	return nil
}

// replyLater writes the waiting ping replies as the window makes room; it
// ends when none is left or the connection is torn down.
func (cn *Conn) replyLater() {
	p := cn.pacer
	defer p.wg.Done()
	for {
		p.mu.Lock()
		if p.reply == nil {
			p.replying = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		ok := cn.lockWriterPaced(nil) // ends when the connection dies
		p.mu.Lock()
		r := p.reply
		p.reply = nil
		if !ok {
			p.replying = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		err := cn.writeLocked(r.typ, r.data)
		cn.unlockWriterPaced()
		if err != nil && err != errNotSent {
			cn.client.log.Warn("server ping reply failed", "err", err)
		}
	}
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

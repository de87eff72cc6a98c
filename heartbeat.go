package wspool

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Heartbeat configures an application-level heartbeat: a data message some
// upstreams require every so often ("ping", {"op":"ping"}), sent on its own
// timer per feed, separate from the ping control frames.
type Heartbeat struct {
	// Interval between heartbeat messages. Required.
	Interval time.Duration
	// Message returns the heartbeat to send; it is called on every tick, so it
	// can carry a timestamp or a counter. Required.
	Message func() (MessageType, []byte)
	// IsReply, if set, recognises the upstream's heartbeat replies. Replies
	// prove liveness like any inbound frame, but they are not data: they do not
	// hold off the stale-data watchdog.
	IsReply func(Message) bool
	// DropReplies keeps replies recognised by IsReply from the handler;
	// without IsReply it is an error.
	DropReplies bool
}

// monoBase anchors monotonic timestamps stored as int64 nanoseconds.
var monoBase = time.Now()

func monoNow() int64 { return int64(time.Since(monoBase)) }

// heartbeat runs one connection's timers: ping/pong, the application
// heartbeat and the stale-data watchdog. Timers are time.AfterFunc, so an idle
// connection costs no goroutine. The ping and stale callbacks hold mu for
// their whole run (they run no user code), so stop, which takes mu, returns
// only when none of them is running; the application heartbeat runs the
// user's Message func and its write without mu, as a background goroutine of
// the feed (bgEnter), and only re-arms its timer under mu if not stopped.
type heartbeat struct {
	cn *Conn

	mu      sync.Mutex
	stopped bool

	ping      *time.Timer
	quantum   time.Duration
	awaiting  bool // a ping is out; the next ping timer fire is its check
	snapBytes int64
	snapHeld  uint64
	seq       uint64
	payload   []byte
	putOff    bool // the last ping was put off: a message was being written

	app *time.Timer

	stale       *time.Timer
	lastData    int64
	lastDataAt  int64
	staleTicker time.Duration
}

func startHeartbeat(cn *Conn) *heartbeat {
	cfg := &cn.client.cfg
	h := &heartbeat{cn: cn} // the pong handler is set before the reader starts (startReader)
	h.mu.Lock()
	defer h.mu.Unlock()
	if cfg.pingInterval > 0 {
		h.quantum = min(maxTimerQuantum, cfg.pingInterval/10, cfg.pongTimeout/10)
		// The first ping goes out after a random half to whole interval, so
		// that feeds connected together (after an outage, at start) spread
		// their pings over the interval instead of firing in one burst of
		// timer goroutines every interval. Detection is never later.
		first := cfg.pingInterval/2 + rand.N(cfg.pingInterval/2+1)
		h.ping = time.AfterFunc(h.coarse(first), h.onPing)
	}
	if cfg.heartbeat != nil {
		h.app = time.AfterFunc(cfg.heartbeat.Interval, h.onApp)
	}
	if cfg.staleTimeout > 0 {
		h.staleTicker = max(cfg.staleTimeout/4, time.Millisecond)
		h.lastData = cn.dataCount()
		h.lastDataAt = monoNow()
		h.stale = time.AfterFunc(h.staleTicker, h.onStale)
	}
	return h
}

// stop stops every timer and waits for a running callback to finish.
func (h *heartbeat) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = true
	for _, t := range []*time.Timer{h.ping, h.app, h.stale} {
		if t != nil {
			t.Stop()
		}
	}
}

// heldBack reports whether the reader is, or was since the snapshot, busy
// with our own handler (or IsReply, or the duplicate filter) rather than
// waiting for the peer.
func (h *heartbeat) heldBack(snapHeld uint64) bool {
	held := h.cn.held.Load()
	return held&1 == 1 || held != snapHeld
}

func (h *heartbeat) onPing() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return
	}
	cn := h.cn
	cfg := &cn.client.cfg
	if h.awaiting {
		h.awaiting = false
		if cn.nc.BytesIn() == h.snapBytes && !h.heldBack(h.snapHeld) {
			cn.kill(fmt.Errorf("%w (%v)", ErrPongTimeout, cfg.pongTimeout))
			return
		}
		h.ping.Reset(h.coarse(max(cfg.pingInterval-cfg.pongTimeout, 0)))
		return
	}
	if cn.closing.Load() {
		return // our close frame is out: the close timeout bounds the rest
	}
	h.snapBytes = cn.nc.BytesIn()
	h.snapHeld = cn.held.Load()
	h.seq++
	h.payload = strconv.AppendUint(h.payload[:0], h.seq, 10)
	cn.pingSeq.Store(h.seq)
	cn.pingSent.Store(monoNow())
	var err error
	if !h.putOff {
		var sent bool
		if sent, err = cn.writePing(h.payload); err == nil && !sent {
			// A message is being written: try again at the next tick.
			h.putOff = true
			h.ping.Reset(h.coarse(max(h.quantum, time.Millisecond)))
			return
		}
	} else if cn.pacesPings() {
		// Paced pings never bypass the window: try again at the next tick.
		var sent bool
		if sent, err = cn.writePing(h.payload); err == nil && !sent {
			h.ping.Reset(h.coarse(max(h.quantum, time.Millisecond)))
			return
		}
	} else {
		// Still busy (a stream of sends): WriteControl slips the ping in
		// between their frames.
		err = cn.ws.WriteControl(websocket.PingMessage, h.payload, time.Now().Add(cfg.writeTimeout))
	}
	h.putOff = false
	if err != nil {
		if !cn.closing.Load() { // a close frame that went out meanwhile is not a failure
			cn.kill(fmt.Errorf("wspool: ping: %w", err))
		}
		return
	}
	h.awaiting = true
	h.ping.Reset(h.coarse(cfg.pongTimeout))
}

func (h *heartbeat) onApp() {
	h.mu.Lock()
	stopped := h.stopped
	h.mu.Unlock()
	c := h.cn.client
	if stopped || !c.bgEnter() {
		return
	}
	defer c.bgLeave()
	// The user's Message func and the (perhaps paced) write run without
	// h.mu: stop never waits for user code, and a write stuck behind pacing
	// or a peer that does not read ends when the connection does.
	hb := c.cfg.heartbeat
	if typ, data, ok := h.message(hb); ok {
		// Send kills the connection itself on a write error; a connection
		// that is already gone or closing needs no heartbeat.
		if err := h.cn.Send(context.Background(), typ, data); err != nil {
			return
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return
	}
	h.app.Reset(hb.Interval)
}

func (h *heartbeat) onStale() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return
	}
	cn := h.cn
	now := monoNow()
	if d := cn.dataCount(); d != h.lastData || cn.held.Load()&1 == 1 {
		h.lastData, h.lastDataAt = d, now
	} else if time.Duration(now-h.lastDataAt) >= cn.client.cfg.staleTimeout {
		cn.kill(fmt.Errorf("%w (%v)", ErrStaleData, cn.client.cfg.staleTimeout))
		return
	}
	h.stale.Reset(h.staleTicker)
}

// onPong runs on the reader goroutine when a pong arrives; a pong answering
// our latest ping gives the round-trip time.
func (cn *Conn) onPong(appData string) error {
	seq, err := strconv.ParseUint(appData, 10, 64)
	if err != nil || seq != cn.pingSeq.Load() {
		return nil // unsolicited or stale pong: still proof of life, no RTT
	}
	rtt := monoNow() - cn.pingSent.Load()
	if rtt < 0 {
		return nil
	}
	st := &cn.client.stats
	st.rtt.Store(rtt)
	// Smoothed like TCP's SRTT: srtt += (rtt - srtt) / 8.
	if old := st.srtt.Load(); old == 0 {
		st.srtt.Store(rtt)
	} else {
		st.srtt.Store(old + (rtt-old)/8)
	}
	return nil
}

// maxTimerQuantum is the coarsest alignment of ping timers (at the default
// 15 s interval): timers of all feeds fire on common instants, so an idle
// process wakes once per instant for many feeds instead of once per feed,
// which halves the idle CPU of 10,000 feeds (see bench/BENCHMARKS.md).
const maxTimerQuantum = 500 * time.Millisecond

// coarse returns d rounded up so that a timer set now fires on a multiple of
// the quantum (a tenth of the ping interval and pong timeout, at most
// maxTimerQuantum) since monoBase.
func (h *heartbeat) coarse(d time.Duration) time.Duration {
	q := int64(h.quantum)
	if q <= 0 {
		return d
	}
	now := monoNow()
	when := (now + int64(d) + q - 1) / q * q
	return time.Duration(when - now)
}

// message runs Heartbeat.Message on this timer goroutine (no lock held:
// it may call any method); a panic is reported and the tick skipped.
func (h *heartbeat) message(hb *Heartbeat) (typ MessageType, data []byte, ok bool) {
	defer h.cn.client.recoverCallback("Heartbeat.Message")
	typ, data = hb.Message()
	return typ, data, true
}

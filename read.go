package wspool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/frameread"
	"github.com/wspool/wspool/internal/msgbuf"
)

// The read side: one reader loop for every connection.
//
// Every connection a feed makes (its primary one, a rotation's replacement,
// a standby connection) gets its reader goroutine the moment its handshake
// completes, before OnConnect runs, and that goroutine reads the connection
// to its end in two phases.
//
// Hold, until the connection is released or its attempt fails. OnConnect runs
// on the goroutine that dialled, while the reader reads: control frames are
// handled as always (pings answered, pongs counted), Heartbeat.IsReply and
// WithServerPing run as messages arrive, and a close frame or a read error
// ends the connection at once with its cause, which ends OnConnect's context
// and is what the attempt fails with (an upstream's 1008 or 1013 says so, and
// its penalty applies). Messages to be delivered are copied into the hold
// buffer, at most holdMessages messages or holdBytes bytes (one larger message
// is held alone); when it is full the reader stops reading until the
// connection is released, and TCP pushes back on the server. Conn.ReadMessage
// takes messages from the front of the hold buffer.
//
// Live, from the release on: the reader delivers each message as it reads it,
// with nothing copied. The release happens once OnConnect has returned nil and
// the connection is connected, even if it has ended meanwhile (what it
// received is delivered, and its end is reported as any connection's); for a
// rotation's replacement, once the old connection has been read to its end,
// so that nothing is delivered out of order (a replacement that ended during
// OnConnect is given up, and the old connection kept). The goroutine that
// releases delivers the held messages, in order, before the reader delivers
// the next.
//
// Exactly one goroutine goes on with the feed's loop (or the standby
// connection's): if the attempt fails, the goroutine that ran OnConnect does,
// once the reader has exited (abort); once released, the reader does when the
// connection ends (after a rotation, the replacement's reader). The verdict
// is the hold's phase, set by whoever releases or aborts: the reader of a
// connection that ended before it waits for it, and nobody else waits for
// the reader except an abort, which has given its verdict first.

// The hold buffer's bounds: whichever is reached first.
const (
	holdMessages = 256
	holdBytes    = 1 << 20
)

type holdPhase uint8

const (
	holdHolding   holdPhase = iota // OnConnect runs (or, for a rotation, the old connection is being drained)
	holdReleasing                  // the held messages are being delivered
	holdLive                       // released: the reader delivers
	holdFailed                     // the attempt failed: the reader delivers nothing and reads to the end
)

// holdState is a connection's hold phase (see above).
type holdState struct {
	mu      sync.Mutex
	msgs    []heldMsg
	end     error         // the reader's end cause, once its read failed before the release
	changed chan struct{} // closed and replaced at every change (messages, phase, end); nil once live
	hb      *heartbeat    // the connection's timers, started at the release

	done   chan struct{}           // closed when the reader of a failed attempt has exited (abort waits)
	cancel context.CancelCauseFunc // ends OnConnect's context (the reader ended)

	bytes int32 // of msgs' data, each counted as heldSize: at most 2 × holdBytes
	phase holdPhase
}

// heldSize is how much a message of n bytes counts against holdBytes: its
// size, but no more than just over the bound (one larger message is held
// alone), so that the sum fits an int32 whatever the read limit.
func heldSize(n int) int32 { return int32(min(n, holdBytes+1)) }

type heldMsg struct {
	msg  Message // Data is a copy
	data bool    // a data message (not a heartbeat reply or server ping)
}

func (h *holdState) notifyLocked() {
	if h.changed == nil {
		return // live: nobody waits any more
	}
	close(h.changed)
	h.changed = make(chan struct{})
}

// startReader starts conn's reader in the hold phase. ctx is the reader's
// (the feed's, or the standby connections'), actx the attempt's; it returns
// the context for OnConnect, which ends when actx does or the reader ends.
func (c *Client) startReader(ctx, actx context.Context, conn *Conn) context.Context {
	h := &conn.hold
	octx, cancel := context.WithCancelCause(actx)
	h.cancel = cancel
	h.changed = make(chan struct{})
	h.done = make(chan struct{})
	conn.ws.SetPongHandler(conn.onPong) // before the reader runs: it calls it
	if l := conn.lane; l != nil {
		c.sb.wg.Add(1)
		c.spawn(func() error {
			defer c.sb.wg.Done()
			cn := conn
			conn = nil // not kept by this closure while the standby loop goes on
			c.runReader(ctx, cn)
			return nil
		})
		return octx
	}
	c.spawn(func() error {
		cn := conn
		conn = nil // not kept by this closure while the loop goes on
		return c.runReader(ctx, cn)
	})
	return octx
}

// runReader is a connection's reader goroutine: it reads the connection to
// its end, then goes on with the loop if the connection was released.
func (c *Client) runReader(ctx context.Context, conn *Conn) error {
	// The message reader lives in this frame, the bottom of the stack the
	// reader parks on: an idle feed's reader then fits the 2 KiB a goroutine
	// starts with (read's frame held it, over 1 KiB, and every idle feed's
	// stack grew to 4 KiB).
	var mr msgReader
	mr.init(conn)
	cause, live := c.read(ctx, conn, &mr)
	if !live {
		close(conn.hold.done)
		return nil // the attempt failed: the goroutine that ran OnConnect goes on
	}
	if l := conn.lane; l != nil {
		l.ended(conn, cause)
		l.run(ctx, cause)
		return nil
	}
	if next := conn.next.Load(); next != nil {
		c.handOff(ctx, conn, next)
		return nil // next's reader goes on
	}
	return c.connectLoop(ctx, c.connEnded(conn, cause))
}

// read reads conn from its handshake to its end: the hold phase, then, once
// released, the live one. It returns the end cause and whether conn was
// released.
func (c *Client) read(ctx context.Context, conn *Conn, mr *msgReader) (cause error, live bool) {
	h := &conn.hold
	stopCloser := closeOnShutdown(ctx, conn)
	defer func() {
		mr.release()
		stopCloser()
		c.stopRotation(conn)
		conn.close() // unblocks heartbeat writes before stop waits for them
		h.mu.Lock()
		hb := h.hb
		h.mu.Unlock()
		if hb != nil {
			hb.stop()
		}
	}()
	if err, live := c.holdPhase(ctx, conn, mr); err != nil {
		return err, live
	}
	return c.serve(ctx, conn, mr), true
}

// holdPhase reads conn's hold phase and, once released, delivers the
// message read last if it is due. It returns the read's error if the
// connection ended before, with the verdict: released (this goroutine goes
// on with the loop) or failed (the one that ran OnConnect does). Its frame,
// with the message, is gone before serve's: the stack the reader parks on
// stays small.
func (c *Client) holdPhase(ctx context.Context, conn *Conn, mr *msgReader) (err error, live bool) {
	h := &conn.hold
	msg, data, inHand, err := c.readHeld(conn, mr)
	if err != nil {
		h.mu.Lock()
		for h.phase == holdHolding || h.phase == holdReleasing {
			ch := h.changed
			h.mu.Unlock()
			<-ch
			h.mu.Lock()
		}
		live = h.phase == holdLive
		h.mu.Unlock()
		return err, live
	}
	if inHand { // it follows the held messages
		conn.held.Add(1)
		c.route(ctx, conn, msg, data)
		conn.held.Add(1)
		mr.release()
	}
	return nil, true
}

// readHeld is the hold phase: it reads, holding what is to be delivered,
// until the connection is released (it then returns, with the message read
// last if that one is still to be delivered: inHand) or the read fails (the
// connection then ends with the cause, which OnConnect's context and
// Conn.ReadMessage report). After a failed attempt it reads on, delivering
// nothing, until the connection ends.
func (c *Client) readHeld(conn *Conn, mr *msgReader) (msg Message, data, inHand bool, err error) {
	h := &conn.hold
	for {
		msg, err = mr.next()
		if err != nil {
			conn.kill(err) // the connection's cause, whoever asks (deadCause)
			h.mu.Lock()
			h.end = err
			cancel := h.cancel
			h.notifyLocked()
			h.mu.Unlock()
			if cancel != nil {
				cancel(err)
			}
			return Message{}, false, false, err
		}
		// Once released, the timers run: IsReply and a ping's answer hold
		// the reader back as in serve.
		conn.held.Add(1)
		data, keep := c.classify(conn, msg)
		conn.held.Add(1)
		c.countIn(conn, msg)
		switch h.put(msg, data, keep) {
		case holdLive:
			return msg, data, keep, nil
		case holdFailed:
			if keep { // read after the attempt failed: counted, never delivered
				c.stats.heldDropped.Add(1)
			}
		}
		mr.release()
	}
}

// put holds a copy of msg if keep, waiting while the buffer is full or being
// delivered; it returns the phase: holding (held, or not to be kept), live
// (not held: deliver it now if keep) or failed (discard it).
func (h *holdState) put(msg Message, data, keep bool) holdPhase {
	h.mu.Lock()
	defer h.mu.Unlock()
	for {
		switch h.phase {
		case holdLive, holdFailed:
			return h.phase
		case holdHolding:
			if !keep {
				return holdHolding
			}
			if n := len(h.msgs); n == 0 || n < holdMessages && int(h.bytes)+len(msg.Data) <= holdBytes {
				msg.Data = append([]byte(nil), msg.Data...)
				h.msgs = append(h.msgs, heldMsg{msg: msg, data: data})
				h.bytes += heldSize(len(msg.Data))
				h.notifyLocked()
				return holdHolding
			}
		}
		// Full (room comes from Conn.ReadMessage or the release), or being
		// released: wait. The socket is not read meanwhile.
		ch := h.changed
		h.mu.Unlock()
		<-ch
		h.mu.Lock()
	}
}

// take removes the oldest held message for Conn.ReadMessage, waiting for one
// until ctx ends; once none is left and the reader has ended, it returns the
// connection's end cause.
func (h *holdState) take(ctx context.Context) (Message, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for len(h.msgs) == 0 {
		if h.end != nil {
			return Message{}, h.end
		}
		if h.phase != holdHolding {
			return Message{}, errors.New("wspool: Conn.ReadMessage called outside OnConnect")
		}
		ch := h.changed
		h.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		h.mu.Lock()
		if len(h.msgs) == 0 && h.end == nil && ctx.Err() != nil {
			return Message{}, fmt.Errorf("wspool: read: %w", ctx.Err())
		}
	}
	m := h.msgs[0].msg
	h.msgs[0] = heldMsg{}
	h.msgs = h.msgs[1:]
	h.bytes -= heldSize(len(m.Data))
	h.notifyLocked()
	return m, nil
}

// release ends conn's hold phase: it delivers the held messages in order on
// the calling goroutine (while the reader waits), starts the connection's
// timers, and makes the reader deliver from then on and go on with the loop
// when conn ends. It is called once OnConnect has returned nil and the feed
// (or standby connection) is connected; for a rotation's replacement, by the
// old connection's reader once the old connection has been read to its end.
func (c *Client) release(ctx context.Context, conn *Conn) {
	h := &conn.hold
	conn.filterDups = conn.afterRotation.Load() && c.cfg.dupFilter != nil
	h.mu.Lock()
	h.phase = holdReleasing
	held := h.msgs
	h.msgs, h.bytes = nil, 0
	if h.end == nil {
		h.hb = startHeartbeat(conn)
	}
	h.notifyLocked()
	h.mu.Unlock()
	if len(held) > 0 {
		// They were read before any shutdown began (classify keeps nothing
		// after): delivered even if it has begun since, as the reader
		// delivers a message it read just before.
		conn.held.Add(1) // the reader is held back while they are delivered
		for i := range held {
			c.route(ctx, conn, held[i].msg, held[i].data)
			held[i] = heldMsg{}
		}
		conn.held.Add(1)
	}
	h.mu.Lock()
	h.phase = holdLive
	close(h.changed)
	// Nothing waits on them any more; OnConnect's context has ended (open).
	h.changed, h.done, h.cancel = nil, nil, nil
	h.mu.Unlock()
}

// abort ends the attempt of conn (OnConnect failed, or the connection is not
// wanted any more): its reader delivers nothing and reads only until the
// connection ends. With graceful (shutdown) our close frame goes out and the
// reader reads the answer, bounded by the close timeout; otherwise the socket
// is closed at once. It returns once the reader has exited its read.
func (c *Client) abort(conn *Conn, graceful bool) {
	h := &conn.hold
	h.mu.Lock()
	h.phase = holdFailed
	c.stats.heldDropped.Add(int64(len(h.msgs))) // read, counted, never delivered
	h.msgs, h.bytes = nil, 0
	done := h.done
	h.notifyLocked()
	h.mu.Unlock()
	if !graceful || !conn.sendClose() {
		conn.close()
	}
	<-done
}

// serve is the live phase: it reads and delivers until the connection ends,
// and returns the cause. This loop runs per message on every connection:
// nothing in it allocates.
func (c *Client) serve(ctx context.Context, conn *Conn, mr *msgReader) error {
	for {
		msg, err := mr.next()
		if err != nil {
			return err
		}
		// From here user code may hold the reader back (IsReply, the
		// duplicate filter, the handler): the liveness checks must not blame
		// the peer for it.
		conn.held.Add(1) // odd: held back
		if data, keep := c.classify(conn, msg); keep {
			c.route(ctx, conn, msg, data)
		}
		conn.held.Add(1) // even again: a check since the first Add sees a change
		c.countIn(conn, msg)
		mr.release() // a big message's buffer goes back to its pool
	}
}

// classify runs what a message needs as soon as it is read, in either phase:
// Heartbeat.IsReply, a server ping's answer, the data mark. It reports
// whether msg is data and whether it is to be delivered. While the feed shuts
// down nothing is (the reader drains until the close frame).
func (c *Client) classify(conn *Conn, msg Message) (data, keep bool) {
	if conn.stopping.Load() {
		return false, false
	}
	if hb := c.cfg.heartbeat; hb != nil && hb.IsReply != nil && c.isReply(hb.IsReply, msg) {
		if conn.lane == nil {
			c.stats.replies.Add(1) // the primary's data count leaves them out
		}
		return false, !hb.DropReplies
	}
	if c.cfg.serverPing != nil && c.answerPing(conn, msg) {
		return false, c.cfg.serverPing.Deliver
	}
	if l := conn.lane; l != nil {
		l.data.Add(1)
	}
	if !conn.gotData.Load() {
		conn.gotData.Store(true)
	}
	return true, true
}

// countIn counts a message read: in the feed's counters for the primary
// connection, in its own for a standby one.
func (c *Client) countIn(conn *Conn, msg Message) {
	if l := conn.lane; l != nil {
		l.msgs.Add(1)
		return
	}
	c.stats.bytesIn.Add(int64(len(msg.Data)))
	c.stats.msgsIn.Add(1)
}

// route delivers a message classify kept: after a rotation through the
// duplicate filter, with standby connections merged with theirs (first copy
// wins), otherwise through the sequence check (WithSequence); then to the
// queue or the handler. It runs on the reader, or on the goroutine releasing
// the connection (one at a time).
func (c *Client) route(ctx context.Context, conn *Conn, msg Message, data bool) {
	if data {
		if !conn.timedFirst {
			conn.timedFirst = true
			if c.cfg.timings != nil && conn.lane == nil {
				c.timing(TimingFirstMessage, time.Since(conn.start))
			}
		}
		if conn.filterDups {
			if c.isDup(msg) {
				c.stats.duplicates.Add(1)
				return
			}
			conn.filterDups = false
		}
	}
	switch {
	case c.sb != nil:
		// Standby connections deliver too: take turns, first copy wins.
		if c.deliverMerged(ctx, conn, msg, data) && data {
			if l := conn.lane; l != nil {
				l.won.Add(1)
			} else {
				c.stats.won.Add(1)
			}
		}
		return
	case data && c.cfg.sequence != nil:
		switch c.checkSequence(conn, &msg) {
		case seqDuplicate:
			c.stats.duplicates.Add(1)
			return
		case seqResync:
			return
		}
	}
	if c.inq != nil {
		c.enqueue(ctx, conn, msg)
	} else {
		c.deliver(ctx, msg)
	}
}

// enqueue hands msg to the queue, which copies it once it has room; under
// Block it waits for room (TCP then pushes back on the server) until
// shutdown or the connection dies.
func (c *Client) enqueue(ctx context.Context, conn *Conn, msg Message) {
	// The wait for room ends with the queue handler's context: at shutdown,
	// or with Drain at its deadline (a drain keeps the message the reader
	// holds: it was received).
	ok, started := c.inq.Push(msg, c.qdone)
	if !ok {
		c.inq.CountDropped() // given up at shutdown: counted like the queue's leftovers
	}
	if started {
		err := fmt.Errorf("%w: queue full (%d messages), dropping (%v)", ErrSlowConsumer, c.cfg.queue.Messages, c.cfg.queue.Policy)
		c.recordError(err)
		c.log.Warn("slow consumer", "err", err)
		if c.cfg.onError != nil {
			c.post(event{err: err})
		}
	}
}

// deliverQueued runs the handler on queued messages until the queue is
// closed or ctx ends; what is left then is counted as dropped. Leaving, it
// closes the queue: a reader may still be between its shutdown check and
// its push, and what it pushes now is refused and counted as dropped, not
// left in a queue nobody pops.
func (c *Client) deliverQueued(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	for {
		var m Message
		ok := ctx.Err() == nil // shutting down (or a drain's deadline): the rest is dropped
		if ok {
			m, ok = c.inq.Pop(ctx)
		}
		if !ok {
			c.inq.Close()
			c.inq.DiscardAll()
			return
		}
		c.deliver(ctx, m)
		c.inq.Delivered()
	}
}

func (c *Client) deliver(ctx context.Context, msg Message) {
	defer func() { // one deferred call per message: count, and recover a panic
		c.stats.delivered.Add(1)
		if r := recover(); r != nil {
			c.panicked("", r)
		}
	}()
	if c.cfg.timings != nil {
		start := time.Now()
		if !msg.Received.IsZero() {
			c.timing(TimingQueueWait, start.Sub(msg.Received))
		}
		defer func() { c.timing(TimingHandler, time.Since(start)) }()
	}
	if err := c.handler(ctx, msg); err != nil {
		if errors.Is(err, ErrReconnect) {
			c.Reconnect(err)
			return
		}
		c.reportHandlerError(&HandlerError{Feed: c.name, Err: err})
	}
}

// isReply runs Heartbeat.IsReply; a panic is reported and the message
// treated as data.
func (c *Client) isReply(f func(Message) bool, msg Message) (reply bool) {
	defer c.recoverCallback("Heartbeat.IsReply")
	return f(msg)
}

// isDup runs the duplicate filter; a panic is reported and the message
// delivered.
func (c *Client) isDup(msg Message) (dup bool) {
	defer c.recoverCallback("duplicate filter")
	return c.cfg.dupFilter(msg)
}

// msgReader reads one connection's messages. A plain ws:// connection with
// pooled reads and no compression offered is read by internal/frameread,
// frames parsed in the socket's buffer and a message of one frame delivered
// in place; any other through gorilla's reader into
// a msgbuf.Buffer, with frameread.Check's checks. The message's Data is
// valid until release.
type msgReader struct {
	conn      *Conn
	checkUTF8 bool // WithUTF8Validation (on by default)
	direct    bool // read by fr
	fr        frameread.Reader
	rb        msgbuf.Buffer
	mc        *frameread.Check // the gorilla path's checks (heap: gorilla's reader is an interface)
}

func (m *msgReader) init(conn *Conn) {
	m.conn, m.checkUTF8 = conn, !conn.client.cfg.noUTF8Check
	if conn.nc.Pooled() && !conn.mayInflate {
		m.direct = true
		m.fr.Init(conn.nc.Frames(), (*framePeer)(conn))
		m.fr.Limit = conn.client.cfg.readLimit
		m.fr.CheckUTF8 = m.checkUTF8
	}
}

// next reads the next message; the error is the connection's end cause.
func (m *msgReader) next() (Message, error) {
	cn := m.conn
	var (
		typ int
		buf []byte
		err error
	)
	if m.direct {
		typ, buf, err = m.fr.Next()
	} else {
		var r io.Reader
		if typ, r, err = cn.ws.NextReader(); err == nil {
			var limit int64
			if cn.mayInflate {
				limit = cn.client.cfg.readLimit // gorilla's limit counts wire bytes
			}
			if m.mc == nil {
				m.mc = new(frameread.Check)
			}
			buf, err = m.rb.ReadAll(m.mc.Reset(r, (*framePeer)(cn), typ, limit, m.checkUTF8))
		}
	}
	if err != nil {
		return Message{}, cn.causeOf(err)
	}
	return Message{Type: MessageType(typ), Data: buf, Feed: cn.client.name, Received: cn.nc.ReadAt(), ConnID: cn.id}, nil
}

// release ends the message next returned.
func (m *msgReader) release() {
	if m.direct {
		m.fr.Release()
	} else {
		m.rb.Release()
	}
}

// framePeer is a Conn as internal/frameread acts on it: control frames go to
// the handlers installed on gorilla's Conn (a pong to the heartbeat, a
// close's admission penalty), violations close the connection with their
// code and the cause gorilla's reader would give.
type framePeer Conn

func (p *framePeer) Ping(b []byte) error { return p.ws.PingHandler()(string(b)) }

func (p *framePeer) Pong(b []byte) error { return p.ws.PongHandler()(string(b)) }

func (p *framePeer) Close(code int, text string) error { return p.ws.CloseHandler()(code, text) }

func (p *framePeer) Fail(code int, err error) error {
	cn := (*Conn)(p)
	var ue *frameread.UTF8Error
	switch {
	case errors.Is(err, websocket.ErrReadLimit):
		err = fmt.Errorf("wspool: message over read limit (%d bytes, after decompression if compressed; closed with 1009): %w", cn.client.cfg.readLimit, err)
	case errors.As(err, &ue) && ue.CutOff:
		err = fmt.Errorf("%w (a sequence cut off at the end of the message; closed with 1007)", ErrInvalidUTF8)
	case ue != nil:
		err = fmt.Errorf("%w (at byte %d of the message; closed with 1007)", ErrInvalidUTF8, ue.At)
	default:
		err = fmt.Errorf("wspool: read: %w", err)
	}
	return cn.fail(code, err)
}

// closeOnShutdown sends conn's close frame when ctx ends (shutdown) and gives
// the server the close timeout to answer; the reader sees the answer (or the
// deadline) and returns. The returned func cancels that, or waits for a close
// frame already being sent.
func closeOnShutdown(ctx context.Context, conn *Conn) (stop func()) {
	done := make(chan struct{})
	stopAF := context.AfterFunc(ctx, func() {
		defer close(done)
		conn.stopping.Store(true)
		conn.sendClose()
	})
	return func() {
		if !stopAF() {
			<-done
		}
	}
}

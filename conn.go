package wspool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/socket"
)

// Conn is one live connection of a feed. The OnConnect hook gets it to
// subscribe, authenticate or resume; it is valid until the connection ends.
type Conn struct {
	client *Client
	ws     *websocket.Conn
	nc     *socket.Conn
	id     uint64
	lane   *lane // the standby connection it serves; nil for the primary

	wlock chan struct{} // one writer at a time, waitable with a context
	pacer *pacer        // WithSendPacing (pacing.go); nil without
	dead  chan struct{} // closed when the connection is torn down
	cause error         // why it was torn down; written before dead is closed

	// held counts the reader's passes through user code (IsReply, the
	// duplicate filter, the handler): odd while one is running, so that any
	// completed or running pass since a snapshot shows in one load.
	held      atomic.Uint64
	next      atomic.Pointer[Conn]  // the replacement after a rotation
	rot       *rotator              // the rotation under way or armed (under client.mu)
	endReason atomic.Pointer[error] // why we ended it (Reconnect), reported instead of the close that follows
	pingSeq   atomic.Uint64
	pingSent  atomic.Int64
	start     time.Time // when it reached the connected state (written under client.mu)

	once      sync.Once // kill
	closeOnce sync.Once // sendClose

	// Flags, packed together (a connection's memory); each says who owns it.
	inOnConnect   atomic.Bool // ReadMessage is allowed
	closing       atomic.Bool // our close frame is being or has been sent
	stopping      atomic.Bool // the feed is shutting down: deliver nothing more
	gotData       atomic.Bool // a data message (not a heartbeat reply) arrived
	resyncing     atomic.Bool // a resync after a gap was asked for: deliver no more data from it
	afterRotation atomic.Bool // this connection replaced a rotated one
	// mayInflate: permessage-deflate was offered, so messages may arrive
	// compressed and the read limit must count decompressed bytes.
	mayInflate bool
	closeSent  bool // written in closeOnce
	rotStopped bool // no more rotations (under client.mu)
	filterDups bool // the read side's: the duplicate filter applies to the next data message
	timedFirst bool // the read side's: its first data message has been timed

	// The read side (read.go). hold is the hold phase's state; the rest is
	// used by whoever delivers (the releasing goroutine, then the reader).
	hold  holdState
	since time.Time // when the first connection of its chain of rotations connected (uptime)
}

func newConn(c *Client, ws *websocket.Conn, nc *socket.Conn) *Conn {
	return &Conn{client: c, ws: ws, nc: nc, id: c.stats.connSeq.Add(1), wlock: make(chan struct{}, 1), dead: make(chan struct{}), pacer: newPacer(c.cfg.pacing)}
}

// ID returns the connection's number within its feed (Message.ConnID): 1
// for the first connection, counting every connection the feed made.
func (cn *Conn) ID() uint64 { return cn.id }

// Feed returns the name of the feed the connection belongs to.
func (cn *Conn) Feed() string { return cn.client.name }

// Subprotocol returns the subprotocol the server chose, if any.
func (cn *Conn) Subprotocol() string { return cn.ws.Subprotocol() }

// Done returns a channel that is closed when the connection has ended (torn
// down, its socket released), for work tied to one connection: requests a
// goroutine started by OnConnect sends on it, answers expected from it.
func (cn *Conn) Done() <-chan struct{} { return cn.dead }

// Reconnect ends this connection as Client.Reconnect ends the feed's
// current one (close 1000; the end's cause wraps ErrReconnect and cause),
// and whatever served it dials anew: the feed, or its standby connection's
// loop (WithStandby). It applies to this connection whether or not Send
// writes on it yet (OnConnect, a rotation's replacement) and does nothing
// once it is ending. It never waits, so it may be called from anywhere.
func (cn *Conn) Reconnect(cause error) { cn.requestEnd(cause) }

// Send writes one message on this connection, for OnConnect's
// subscriptions and logins; it returns once the message is written or has
// failed (ErrNotConnected once the connection is gone or closing, nothing
// written). ctx bounds the wait for the connection's writer; the write itself
// is bounded by the write timeout. Outside OnConnect use Client.Send, which
// follows the feed across reconnects and rotations.
func (cn *Conn) Send(ctx context.Context, typ MessageType, data []byte) error {
	if err := checkType(typ); err != nil {
		return err
	}
	if !cn.lockWriterPaced(ctx.Done()) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return ErrNotConnected
	}
	err := cn.writeLocked(typ, data)
	cn.unlockWriterPaced()
	if err == errNotSent {
		return ErrNotConnected
	}
	return err
}

// write writes one message; errNotSent means the connection is closing or
// gone and nothing was written, errStopped that stop closed while the
// message waited for its turn (pacing) or the writer. Any other error broke
// the connection.
func (cn *Conn) write(stop <-chan struct{}, typ MessageType, data []byte) error {
	if !cn.lockWriterPaced(stop) {
		if stopped(stop) {
			return errStopped
		}
		return errNotSent
	}
	err := cn.writeLocked(typ, data)
	cn.unlockWriterPaced()
	return err
}

// lockWriter takes the connection's writer lock; false if the connection
// died (or stop closed) first.
func (cn *Conn) lockWriter(stop <-chan struct{}) bool {
	select {
	case cn.wlock <- struct{}{}:
		return true
	default:
	}
	select {
	case cn.wlock <- struct{}{}:
		return true
	case <-cn.dead:
		return false
	case <-stop:
		return false
	}
}

func (cn *Conn) unlockWriter() { <-cn.wlock }

// writeLocked writes with the writer lock held.
func (cn *Conn) writeLocked(typ MessageType, data []byte) error {
	if !cn.writable() {
		return errNotSent // our close frame is out (or the connection is gone): nothing written
	}
	if err := cn.ws.SetWriteDeadline(time.Now().Add(cn.client.cfg.writeTimeout)); err != nil {
		err = fmt.Errorf("wspool: send: %w", err)
		cn.kill(err)
		return err
	}
	if err := cn.ws.WriteMessage(int(typ), data); err != nil {
		if errors.Is(err, websocket.ErrCloseSent) {
			// The reader answered the peer's close frame: nothing was
			// written, the connection takes no more writes, and the reader
			// reports its end with the peer's close (which a kill here
			// would hide).
			cn.closing.Store(true)
			return errNotSent
		}
		err = fmt.Errorf("wspool: send: %w", err)
		cn.kill(err)
		return err
	}
	cn.client.stats.msgsOut.Add(1)
	cn.client.stats.bytesOut.Add(int64(len(data)))
	return nil
}

// writable reports whether the connection takes writes: not torn down and
// our close frame not started.
func (cn *Conn) writable() bool {
	if cn.closing.Load() {
		return false
	}
	select {
	case <-cn.dead:
		return false
	default:
		return true
	}
}

// writePing writes a ping frame unless another message is being written
// (then it returns false). It goes through the connection's writer like a
// data message, not gorilla's WriteControl, which allocates a frame buffer
// and a timer per call: at 10,000 idle feeds that was most of the garbage an
// idle pool makes.
func (cn *Conn) writePing(payload []byte) (sent bool, err error) {
	select {
	case cn.wlock <- struct{}{}:
	default:
		return false, nil
	}
	defer func() { <-cn.wlock }()
	if cn.closing.Load() {
		return true, nil // our close frame is out: no more pings
	}
	if !cn.pingPaced() {
		return false, nil // no room in the pacing window: put off
	}
	defer cn.pingPacedDone()
	if err := cn.ws.SetWriteDeadline(time.Now().Add(cn.client.cfg.writeTimeout)); err != nil {
		return false, err
	}
	return true, cn.ws.WriteMessage(websocket.PingMessage, payload)
}

// ReadMessage returns the next message of the connection, for
// request-reply exchanges inside OnConnect (e.g. wait for "authenticated").
// It may only be called while OnConnect runs (from it, or from a goroutine
// it started, e.g. one that reads acknowledgements while OnConnect sends); it
// is safe for concurrent use, and ctx bounds the wait.
//
// A connection is read from the moment its handshake completes: while
// OnConnect runs, pings and pongs are handled, Heartbeat.IsReply and
// WithServerPing see messages as they arrive, and the messages to be
// delivered are held, up to 256 messages or 1 MiB (a larger message is held
// alone). ReadMessage takes the oldest held message (or waits for one); a
// message it returns is not passed to the handler, and those it leaves are
// delivered, in order, once OnConnect has returned nil. When the hold buffer
// is full the connection is not read until OnConnect returns or ReadMessage
// makes room (TCP pushes back on the server), so a close frame behind it is
// seen only then.
//
// A close frame or a read error ends the connection at once, and with it
// OnConnect's ctx: ReadMessage then returns the connection's end cause (for
// the server's close, a *websocket.CloseError within; see CloseStatus) once
// the held messages are taken, and the attempt fails with that cause. If ctx
// ends first, ReadMessage returns an error wrapping ctx.Err() and the
// connection stays usable.
func (cn *Conn) ReadMessage(ctx context.Context) (Message, error) {
	if !cn.inOnConnect.Load() {
		return Message{}, errors.New("wspool: Conn.ReadMessage called outside OnConnect")
	}
	return cn.hold.take(ctx)
}

// kill tears the connection down with cause; the first cause wins. It
// unblocks the reader and any writer.
func (cn *Conn) kill(cause error) {
	cn.once.Do(func() {
		cn.cause = cause
		close(cn.dead)
		_ = cn.nc.Close()
	})
}

// causeOf turns the reader's error into the connection's end cause: the reason
// the connection was killed if it was, else the read error.
func (cn *Conn) causeOf(readErr error) error {
	select {
	case <-cn.dead:
		if cn.cause != nil {
			return cn.cause
		}
	default:
	}
	if p := cn.endReason.Load(); p != nil {
		return *p // a reconnect was asked for: the close that followed is its effect
	}
	if errors.Is(readErr, websocket.ErrReadLimit) {
		return fmt.Errorf("wspool: message over read limit (%d bytes; closed with 1009 where the frame allowed): %w", cn.client.cfg.readLimit, readErr)
	}
	return fmt.Errorf("wspool: read: %w", readErr)
}

// sendClose sends our close frame once and sets the read deadline by which
// the peer must answer; false if it could not be sent (the connection is then
// torn down). The close frame goes through the writer lock, after a message
// being written, so that nothing sent before it is cut off; the close timeout
// bounds that wait too (a peer that stopped reading must not stretch it to
// the write timeout): past it the connection is torn down.
func (cn *Conn) sendClose() bool {
	cn.closeOnce.Do(func() {
		cn.closing.Store(true)
		deadline := time.Now().Add(cn.client.cfg.closeTimeout)
		if !cn.lockWriterUntil(deadline) {
			cn.kill(ErrClosed)
			return
		}
		msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
		err := cn.ws.WriteControl(websocket.CloseMessage, msg, deadline)
		cn.unlockWriter()
		if err != nil {
			cn.kill(ErrClosed)
			return
		}
		_ = cn.nc.SetReadDeadline(deadline)
		cn.closeSent = true
	})
	return cn.closeSent
}

// deadCause returns why the connection was torn down, nil while it is not.
func (cn *Conn) deadCause() error {
	select {
	case <-cn.dead:
		if cn.cause != nil {
			return cn.cause
		}
		return ErrConnectionClosed
	default:
		return nil
	}
}

// lockWriterUntil takes the writer lock, waiting at most until deadline.
func (cn *Conn) lockWriterUntil(deadline time.Time) bool {
	select {
	case cn.wlock <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case cn.wlock <- struct{}{}:
		return true
	case <-cn.dead:
		return false
	case <-t.C:
		return false
	}
}

// close releases the socket and waits for a ping reply still waiting for
// its pacing turn (pacing.go) to give up.
func (cn *Conn) close() {
	cn.kill(ErrConnectionClosed)
	cn.pacer.wait()
}

// dataCount is the number of data messages read on this connection's side
// of the feed (the primary's, or its standby connection's), for the
// stale-data watchdog.
func (cn *Conn) dataCount() int64 {
	if cn.lane != nil {
		return cn.lane.data.Load()
	}
	return cn.client.dataCount()
}

// fail ends the connection for a protocol violation of the peer's: our
// close frame with code (unless one was sent already), then teardown with
// cause, which the reader reports. It returns cause.
func (cn *Conn) fail(code int, cause error) error {
	cn.closeOnce.Do(func() {
		cn.closing.Store(true)
		// The socket is closed right after: a short, bounded try.
		deadline := time.Now().Add(min(cn.client.cfg.closeTimeout, time.Second))
		if cn.lockWriterUntil(deadline) {
			_ = cn.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), deadline)
			cn.unlockWriter()
		}
	})
	cn.kill(cause)
	return cause
}

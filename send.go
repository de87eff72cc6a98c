package wspool

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// SendBuffer configures a bounded buffer for messages sent while a feed is
// not connected. Buffered messages are written in order on the next
// connection, after OnConnect has run (so subscriptions go first), before any
// message sent later.
type SendBuffer struct {
	// Messages is the most messages buffered at once. Required (> 0).
	Messages int
	// Bytes is the most payload bytes buffered at once; 0 means Messages × 64 KiB.
	Bytes int
	// MaxAge fails a message (ErrSendExpired) that waited longer than this for
	// a connection; 0 means no limit.
	MaxAge time.Duration
}

// A SendOption changes how one message is sent.
type SendOption func(*sendReq)

// NoReplay marks a message that is only meaningful on the connection that is
// up when it is sent (an order tied to a session, a reply to a request): it
// is written on that connection or fails with ErrNotConnected, never written
// on a later one, even across a rotation.
func NoReplay() SendOption { return func(r *sendReq) { r.noReplay = true } }

// The send path.
//
// One writer at a time writes a feed's messages, in the order Send and
// SendAsync were called. The writer role (c.writing) is taken, under c.mu,
// by a Send that finds the feed connected and nobody writing (the fast path:
// it writes its own message on its own goroutine) or by a flusher goroutine
// started when messages are waiting and a connection is live. Messages that
// find the writer busy, or no live connection, wait in c.sendQ; the writer
// drains sendQ before it gives the role up, and whoever gives it up while
// messages wait on a live connection hands it to a new flusher. So:
//   - a connected feed never holds messages that nothing will write;
//   - the writer always writes on the current connection (c.conn), read
//     again for every message: a message that raced a rotation either went
//     out on the old connection before its close frame (which waits for the
//     old connection's writer lock) or finds the old connection closing,
//     nothing written, and is written on the new one, still in order;
//   - no goroutine waits for work that only it can do: the writer never holds
//     the role while it runs a user callback, and a Send whose context came
//     from a callback (see callback.go) never waits for a connection, since
//     the reconnect may need that very callback to return first.

// sendReq is one message waiting to be written.
type sendReq struct {
	typ      MessageType
	data     []byte
	noReplay bool
	ctx      context.Context // Send's: ends a pacing wait (nil: none)
	conn     *Conn           // noReplay: the only connection it may go on
	own      bool            // a Send with a callback's context: never carried to a later connection
	async    bool            // SendAsync: nobody waits, so it may wait for a later connection from anywhere
	buffered bool            // counted against the send buffer (it waited for a connection)
	expiry   *time.Timer
	done     func(error) // called exactly once, outside c.mu
	userDone bool        // done is the user's (SendAsync): the writer gives up its role around it
}

// Send writes one message and returns when it has been written to the socket
// or has failed; every message is one or the other, exactly once, and the
// messages of a feed are written in the order Send and SendAsync were called.
// It is safe from any goroutine. While connected it writes at once (or after
// the messages ahead of it), each write bounded by the write timeout; a write
// that fails or times out breaks the connection, which is redialled. A
// message that races a reconnect or a rotation is written once, on the old
// connection before its close frame or on the new one.
//
// While not connected Send fails at once with ErrNotConnected, or, with
// WithSendBuffer, waits in the buffer for the next connection. If ctx ends
// while the message is still waiting it is withdrawn and Send returns
// ctx.Err(). After Close, Send fails with ErrClosed.
//
// Send may wait for the messages ahead of it, but it never waits for a
// connection when that wait could depend on the caller: when ctx is (or
// derives from) a context the library passed to a callback, or while the
// feed's reader is running user code (the handler without a queue, IsReply,
// a filter, the sequence callbacks), whose return the next connection waits
// for. Then, while the feed is not connected, it fails at once with an error
// wrapping ErrNotConnected, even with WithSendBuffer, and a message it
// queued behind the writer is not carried to a later connection; use
// SendAsync to buffer from there. So a handler, and any goroutine it starts
// and waits for, can Send without deadlock, whatever context it passes.
//
// data is not retained after Send returns.
func (c *Client) Send(ctx context.Context, typ MessageType, data []byte, opts ...SendOption) (err error) {
	defer func() { c.countFailed(err) }()
	return c.send(ctx, typ, data, opts)
}

// send is Send without the failure count (SendAsync's done counts its own).
func (c *Client) send(ctx context.Context, typ MessageType, data []byte, opts []SendOption) error {
	if err := checkType(typ); err != nil {
		return err
	}
	c.mu.Lock()
	if conn := c.liveConnLocked(); conn != nil && !c.writing && len(c.sendQ) == 0 {
		// The fast path: nobody writes and nothing waits, so write on this
		// goroutine.
		c.writing = true
		c.mu.Unlock()
		sr := sendReq{typ: typ, data: data, ctx: ctx} // on the stack: options go through a copy
		if len(opts) > 0 && sendOptions(opts).noReplay {
			sr.noReplay, sr.conn = true, conn
		}
		err := c.writeOwn(conn, &sr)
		c.releaseWriter()
		return err
	}
	result := make(chan error, 1)
	r := &sendReq{typ: typ, data: data, ctx: ctx, done: func(err error) { result <- err }}
	applySendOptions(r, opts)
	err := c.enqueueLocked(r)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	select {
	case err = <-result:
		return err
	case <-ctx.Done():
		if c.withdraw(r) {
			return ctx.Err()
		}
		return <-result // already being written: report the real outcome
	}
}

// SendAsync sends one message without waiting for a connection; done (if not
// nil) is called exactly once with the outcome: nil once written to the
// socket, or the error. While connected, SendAsync writes the message (after
// the messages ahead of it) before it returns and calls done on the caller's
// goroutine, like Send. While not connected the message waits in the send
// buffer (WithSendBuffer), from callbacks too, and done is called later from
// the library's goroutine that writes it or a timer; it must not block. Order
// is kept with Send. data must not be modified until done is called.
func (c *Client) SendAsync(typ MessageType, data []byte, done func(error), opts ...SendOption) {
	userDone := done
	done = func(err error) {
		c.countFailed(err)
		if userDone != nil {
			c.callDone(userDone, err)
		}
	}
	if err := checkType(typ); err != nil {
		done(err)
		return
	}
	c.mu.Lock()
	if c.liveConnLocked() != nil {
		// Connected: block like Send (bounded by the write timeout of the
		// messages ahead), so that a loop of SendAsync cannot queue without limit.
		c.mu.Unlock()
		done(c.send(context.Background(), typ, data, opts))
		return
	}
	r := &sendReq{typ: typ, data: data, done: done, async: true, userDone: userDone != nil}
	applySendOptions(r, opts)
	err := c.enqueueLocked(r)
	c.mu.Unlock()
	if err != nil {
		done(err)
	}
}

// sendOptions returns what opts set.
func sendOptions(opts []SendOption) *sendReq {
	var r sendReq
	applySendOptions(&r, opts)
	return &r
}

func applySendOptions(r *sendReq, opts []SendOption) {
	for _, o := range opts {
		o(r)
	}
}

func (c *Client) countFailed(err error) {
	if err != nil {
		c.stats.sendFailed.Add(1)
	}
}

func checkType(typ MessageType) error {
	if typ != TextMessage && typ != BinaryMessage {
		return fmt.Errorf("wspool: send: invalid message type %d", int(typ))
	}
	return nil
}

// errOwnNotConnected fails a Send that must not wait for a connection (its
// context came from a callback, or the reader is running user code) while
// the feed is not connected.
var errOwnNotConnected = fmt.Errorf("%w (Send from a callback does not wait for a connection; use SendAsync)", ErrNotConnected)

// readerBusyLocked reports whether the current connection's reader is
// running user code (the handler without a queue, IsReply, a filter, the
// sequence callbacks): the feed's next connection then waits for that code
// to return, so a Send made now must not wait for it (the Send may be that
// very code's, or one it waits for). c.mu is held.
func (c *Client) readerBusyLocked() bool {
	cn := c.conn
	return cn != nil && cn.held.Load()&1 == 1
}

// liveConnLocked returns the current connection if it can take writes.
func (c *Client) liveConnLocked() *Conn {
	if cn := c.conn; cn != nil && cn.writable() {
		return cn
	}
	return nil
}

// enqueueLocked puts r in line: behind the writer on a live connection, or
// in the send buffer while there is none. c.mu is held.
func (c *Client) enqueueLocked(r *sendReq) error {
	if c.closed || c.finished {
		return ErrClosed
	}
	conn := c.liveConnLocked()
	if r.noReplay {
		if conn == nil {
			return ErrNotConnected
		}
		r.conn = conn
	}
	if conn == nil {
		sb := c.cfg.sendBuffer
		if sb == nil {
			return ErrNotConnected
		}
		if !r.async && (inCallback(r.ctx) || c.readerBusyLocked()) {
			return errOwnNotConnected
		}
		if c.sendQBuffered >= sb.Messages || c.sendQBytes+len(r.data) > sb.Bytes {
			return fmt.Errorf("%w (%d messages, %d bytes buffered)", ErrSendBufferFull, c.sendQBuffered, c.sendQBytes)
		}
		c.bufferLocked(r)
	} else if !r.async {
		// Waiting behind the writer. A Send from a callback may wait for the
		// writer, but not for a later connection if this one dies.
		r.own = inCallback(r.ctx) || c.readerBusyLocked()
	}
	c.sendQ = append(c.sendQ, r)
	if conn != nil && !c.writing {
		c.startFlusherLocked()
	}
	return nil
}

// bufferLocked counts r against the send buffer and arms its expiry.
func (c *Client) bufferLocked(r *sendReq) {
	if r.buffered {
		return
	}
	r.buffered = true
	c.sendQBuffered++
	c.sendQBytes += len(r.data)
	if sb := c.cfg.sendBuffer; sb != nil && sb.MaxAge > 0 {
		r.expiry = time.AfterFunc(sb.MaxAge, func() {
			if !c.bgEnter() {
				return
			}
			defer c.bgLeave()
			if c.withdraw(r) {
				r.done(fmt.Errorf("%w after %v", ErrSendExpired, sb.MaxAge))
			}
		})
	}
}

// unbufferLocked undoes bufferLocked for a request leaving the queue.
func (c *Client) unbufferLocked(r *sendReq) {
	if !r.buffered {
		return
	}
	r.buffered = false
	c.sendQBuffered--
	c.sendQBytes -= len(r.data)
	if r.expiry != nil {
		r.expiry.Stop()
	}
}

// withdraw removes r from the queue if it is still there.
func (c *Client) withdraw(r *sendReq) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.Index(c.sendQ, r)
	if i < 0 {
		return false
	}
	c.sendQ = slices.Delete(c.sendQ, i, i+1)
	c.unbufferLocked(r)
	return true
}

// writeOwn writes r while holding the writer role (Send and SendAsync's
// synchronous path), starting on conn: if a rotation closed it before a byte
// was written, on the connection that replaced it.
func (c *Client) writeOwn(conn *Conn, r *sendReq) error {
	for {
		if r.noReplay && conn != r.conn {
			return ErrNotConnected
		}
		err := conn.write(r.stop(), r.typ, r.data)
		if err == errStopped {
			return r.ctx.Err()
		}
		if err != errNotSent {
			return err
		}
		c.mu.Lock()
		conn = c.liveConnLocked()
		c.mu.Unlock()
		if conn == nil {
			return ErrNotConnected
		}
	}
}

// releaseWriter gives the writer role up; messages that queued behind it
// meanwhile are handed to a flusher (or, with no live connection, left for
// the next one, failing those that cannot wait).
func (c *Client) releaseWriter() {
	c.mu.Lock()
	c.writing = false
	var failed []*sendReq
	if len(c.sendQ) > 0 {
		if c.liveConnLocked() != nil {
			c.startFlusherLocked()
		} else {
			failed = c.dropUncarriedLocked()
		}
	}
	c.mu.Unlock()
	finishAll(failed, ErrNotConnected)
}

// startFlusherLocked takes the writer role for a new flusher goroutine.
func (c *Client) startFlusherLocked() {
	if c.finished || !c.bgEnterLocked() {
		return
	}
	c.writing = true
	go func() {
		defer c.bgLeave()
		c.flush()
	}()
}

// flush writes the queued messages in order on the current connection, while
// there is one; it holds the writer role and gives it up when done.
func (c *Client) flush() {
	for {
		c.mu.Lock()
		conn := c.liveConnLocked()
		if conn == nil || len(c.sendQ) == 0 {
			c.writing = false
			var failed []*sendReq
			if conn == nil {
				failed = c.dropUncarriedLocked()
			}
			c.mu.Unlock()
			finishAll(failed, ErrNotConnected)
			return
		}
		r := c.sendQ[0]
		if r.noReplay && r.conn != conn {
			c.popLocked()
			c.mu.Unlock()
			r.done(ErrNotConnected)
			continue
		}
		c.popLocked()
		c.mu.Unlock()
		err := conn.write(r.stop(), r.typ, r.data)
		if err == errStopped {
			err = r.ctx.Err() // Send's ctx ended while it waited for its turn
		}
		if err == errNotSent {
			// The connection closed (rotation) or died before a byte was
			// written: back to the head of the line, for the next connection.
			c.mu.Lock()
			c.sendQ = slices.Insert(c.sendQ, 0, r)
			c.mu.Unlock()
			continue
		}
		if !r.userDone {
			r.done(err)
			continue
		}
		// The user's done func runs without the writer role, so that it may
		// Send (and become the writer itself).
		c.mu.Lock()
		c.writing = false
		c.mu.Unlock()
		r.done(err)
		c.mu.Lock()
		if c.writing || c.finished {
			c.mu.Unlock()
			return // someone else writes now
		}
		c.writing = true
		c.mu.Unlock()
	}
}

// popLocked removes the head of the queue.
func (c *Client) popLocked() {
	r := c.sendQ[0]
	c.sendQ[0] = nil
	c.sendQ = c.sendQ[1:]
	c.unbufferLocked(r)
}

// dropUncarriedLocked removes, with no live connection, the queued messages
// that must not wait for the next one: all of them without a send buffer,
// NoReplay messages, and Sends made from callbacks. The caller fails them.
// Those that stay now wait for a connection and count against the send
// buffer (not bounded again: they were let in already).
func (c *Client) dropUncarriedLocked() []*sendReq {
	var out []*sendReq
	keep := c.sendQ[:0]
	for _, r := range c.sendQ {
		if c.cfg.sendBuffer == nil || r.noReplay || r.own {
			c.unbufferLocked(r)
			out = append(out, r)
			continue
		}
		c.bufferLocked(r)
		keep = append(keep, r)
	}
	clear(c.sendQ[len(keep):])
	c.sendQ = keep
	return out
}

// finishAll reports err to every request (outside c.mu).
func finishAll(rs []*sendReq, err error) {
	for _, r := range rs {
		r.done(err)
	}
}

// failQueued fails every queued message with err (at shutdown).
func (c *Client) failQueued(err error) {
	c.mu.Lock()
	q := c.sendQ
	c.sendQ = nil
	for _, r := range q {
		c.unbufferLocked(r)
	}
	c.mu.Unlock()
	finishAll(q, err)
}

// callDone runs a SendAsync done func, recovering a panic.
func (c *Client) callDone(done func(error), err error) {
	defer c.recoverCallback("SendAsync done")
	done(err)
}

// errNotSent is Conn.write's answer when the connection is closing or gone
// and nothing of the message was written.
var errNotSent = errors.New("wspool: not sent")

// stop is the channel that ends r's wait for its turn (pacing): its Send's
// context's; nil for SendAsync.
func (r *sendReq) stop() <-chan struct{} {
	if r.ctx == nil {
		return nil
	}
	return r.ctx.Done()
}

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

// WithSendBuffer makes Send wait in a bounded buffer while the feed is not
// connected instead of failing at once with ErrNotConnected (the default).
// A message that does not fit fails at once with ErrSendBufferFull.
func WithSendBuffer(b SendBuffer) Option {
	return func(c *config) {
		if b.Messages <= 0 {
			c.errorf("send buffer needs Messages > 0, got %d", b.Messages)
			return
		}
		if b.Bytes < 0 || b.MaxAge < 0 {
			c.errorf("send buffer Bytes and MaxAge must not be negative")
			return
		}
		if b.Bytes == 0 {
			b.Bytes = b.Messages * (64 << 10)
		}
		c.sendBuffer = &b
	}
}

// A SendOption changes how one message is sent.
type SendOption func(*sendReq)

// NoReplay marks a message that is only meaningful on the connection that is
// up now (an order tied to a session, a reply to a request): it is never
// buffered for a later connection and fails with ErrNotConnected instead.
func NoReplay() SendOption { return func(r *sendReq) { r.noReplay = true } }

// sendReq is one message waiting in the send buffer.
type sendReq struct {
	typ      MessageType
	data     []byte
	noReplay bool
	at       time.Time
	expiry   *time.Timer
	done     func(error) // called exactly once, outside c.mu
}

// Send writes one message and returns when it has been written to the socket
// or has failed; every message is one or the other, exactly once. It is safe
// from any goroutine; writes are serialized. While connected (and nothing is
// buffered) it writes at once, bounded by the write timeout; a write that
// fails or times out breaks the connection, which is redialled. While not
// connected it fails at once with ErrNotConnected, or, with WithSendBuffer,
// waits in the buffer for the next connection. If ctx ends while the message
// is still buffered it is withdrawn and Send returns ctx.Err(). After Close,
// Send fails with ErrClosed.
//
// data is not retained after Send returns.
func (c *Client) Send(ctx context.Context, typ MessageType, data []byte, opts ...SendOption) (err error) {
	defer func() { c.countFailed(err) }()
	if err := checkType(typ); err != nil {
		return err
	}
	c.mu.Lock()
	if conn := c.conn; conn != nil {
		c.mu.Unlock()
		err := conn.Send(ctx, typ, data)
		if !c.retryBuffered(err, opts) {
			return err
		}
		c.mu.Lock() // the connection died before a byte was written: buffer it
	}
	result := make(chan error, 1)
	r, err := c.bufferLocked(typ, data, func(err error) { result <- err }, opts)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	select {
	case err := <-result:
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
// socket, or the error. While connected (and nothing is buffered) the write
// happens before SendAsync returns and done is called on the caller's
// goroutine; otherwise the message is buffered (WithSendBuffer) and done is
// called later from the feed's goroutine or a timer, and must not block. The
// order of messages from one goroutine is kept. data must not be modified
// until done is called.
func (c *Client) SendAsync(typ MessageType, data []byte, done func(error), opts ...SendOption) {
	userDone := done
	done = func(err error) {
		c.countFailed(err)
		if userDone != nil {
			userDone(err)
		}
	}
	if err := checkType(typ); err != nil {
		done(err)
		return
	}
	c.mu.Lock()
	if conn := c.conn; conn != nil {
		c.mu.Unlock()
		err := conn.Send(context.Background(), typ, data)
		if !c.retryBuffered(err, opts) {
			done(err)
			return
		}
		c.mu.Lock() // the connection died before a byte was written: buffer it
	}
	_, err := c.bufferLocked(typ, data, done, opts)
	c.mu.Unlock()
	if err != nil {
		done(err)
	}
}

func (c *Client) countFailed(err error) {
	if err != nil {
		c.stats.sendFailed.Add(1)
	}
}

// retryBuffered reports whether a direct write that failed because the
// connection was already gone (nothing written) should go to the send buffer.
func (c *Client) retryBuffered(err error, opts []SendOption) bool {
	if c.cfg.sendBuffer == nil || !errors.Is(err, ErrNotConnected) {
		return false
	}
	var r sendReq
	for _, o := range opts {
		o(&r)
	}
	return !r.noReplay
}

func checkType(typ MessageType) error {
	if typ != TextMessage && typ != BinaryMessage {
		return fmt.Errorf("wspool: send: invalid message type %d", int(typ))
	}
	return nil
}

// bufferLocked queues a message for the next connection, or says why it
// cannot; c.mu is held and c.conn is nil.
func (c *Client) bufferLocked(typ MessageType, data []byte, done func(error), opts []SendOption) (*sendReq, error) {
	r := &sendReq{typ: typ, data: data, done: done}
	for _, o := range opts {
		o(r)
	}
	sb := c.cfg.sendBuffer
	switch {
	case c.closed || c.finished:
		return nil, ErrClosed
	case sb == nil || r.noReplay:
		return nil, ErrNotConnected
	case len(c.sendQ) >= sb.Messages || c.sendQBytes+len(data) > sb.Bytes:
		return nil, fmt.Errorf("%w (%d messages, %d bytes buffered)", ErrSendBufferFull, len(c.sendQ), c.sendQBytes)
	}
	r.at = time.Now()
	c.sendQ = append(c.sendQ, r)
	c.sendQBytes += len(data)
	if sb.MaxAge > 0 {
		r.expiry = time.AfterFunc(sb.MaxAge, func() {
			if c.withdraw(r) {
				r.done(fmt.Errorf("%w after %v", ErrSendExpired, sb.MaxAge))
			}
		})
	}
	return r, nil
}

// withdraw removes r from the buffer if it is still there.
func (c *Client) withdraw(r *sendReq) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.Index(c.sendQ, r)
	if i < 0 {
		return false
	}
	c.sendQ = slices.Delete(c.sendQ, i, i+1)
	c.sendQBytes -= len(r.data)
	if r.expiry != nil {
		r.expiry.Stop()
	}
	return true
}

// takeLocked removes the oldest buffered message.
func (c *Client) takeLocked() *sendReq {
	r := c.sendQ[0]
	c.sendQ[0] = nil
	c.sendQ = c.sendQ[1:]
	c.sendQBytes -= len(r.data)
	if r.expiry != nil {
		r.expiry.Stop()
	}
	return r
}

// flushAndPublish writes the buffered messages on conn in order and then
// makes conn the feed's current connection, atomically with seeing the buffer
// empty, so that a message sent meanwhile is never overtaken.
func (c *Client) flushAndPublish(ctx context.Context, conn *Conn) error {
	for {
		c.mu.Lock()
		if len(c.sendQ) == 0 {
			c.conn = conn
			c.mu.Unlock()
			return nil
		}
		r := c.takeLocked()
		c.mu.Unlock()
		err := conn.Send(ctx, r.typ, r.data)
		r.done(err)
		if err != nil {
			return err
		}
	}
}

// failBuffered fails every buffered message with err (at shutdown).
func (c *Client) failBuffered(err error) {
	c.mu.Lock()
	q := c.sendQ
	c.sendQ, c.sendQBytes = nil, 0
	c.mu.Unlock()
	for _, r := range q {
		if r.expiry != nil {
			r.expiry.Stop()
		}
		r.done(err)
	}
}

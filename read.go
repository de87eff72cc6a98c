package wspool

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// serve reads and delivers until the connection ends; it returns the cause.
func (c *Client) serve(ctx context.Context, conn *Conn) error {
	hb := startHeartbeat(conn)
	stopCloser := closeOnShutdown(ctx, conn)
	defer func() {
		stopCloser()
		c.stopRotation(conn)
		if conn.next.Load() == nil {
			conn.close() // unblocks heartbeat writes before stop waits for them
		}
		hb.stop()
	}()
	filterDups := conn.afterRotation.Load() && c.cfg.dupFilter != nil

	isReply, dropReplies := c.replyFilter()
	mr := newMsgReader(conn)
	defer mr.rb.release()
	for {
		msg, err := mr.next()
		if err != nil {
			return err
		}
		deliver := !conn.stopping.Load() // shutting down: drain until the close frame
		// From here user code may hold the reader back (IsReply, the
		// duplicate filter, the handler): the liveness checks must not blame
		// the peer for it.
		conn.held.Add(1) // odd: held back
		data := false
		if isReply != nil && c.isReply(isReply, msg) {
			c.stats.replies.Add(1)
			deliver = deliver && !dropReplies
		} else if c.cfg.serverPing != nil && c.answerPing(conn, msg) {
			deliver = deliver && c.cfg.serverPing.Deliver
		} else {
			data = true
			if filterDups {
				if c.isDup(msg) {
					c.stats.duplicates.Add(1)
					deliver = false
				} else {
					filterDups = false
				}
			}
			if deliver && c.cfg.sequence != nil && c.lanes == nil {
				switch c.checkSequence(conn, &msg) {
				case seqDuplicate:
					c.stats.duplicates.Add(1)
					deliver = false
				case seqResync:
					deliver = false
				}
			}
			if !conn.gotData.Load() {
				conn.gotData.Store(true)
				if c.cfg.timings != nil {
					c.timing(TimingFirstMessage, time.Since(conn.start))
				}
			}
		}
		if deliver {
			switch {
			case c.lanes != nil:
				// Standby connections deliver too: take turns, first copy wins.
				if c.deliverMerged(ctx, conn, msg, data) && data {
					c.stats.won.Add(1)
				}
			case c.inq != nil:
				c.enqueue(ctx, conn, msg)
			default:
				c.deliver(ctx, msg)
			}
		}
		c.stats.bytesIn.Add(int64(len(msg.Data)))
		c.stats.msgsIn.Add(1)
		conn.held.Add(1) // even again: a check since the first Add sees a change
		mr.rb.release()  // a big message's buffer goes back to its pool
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

// msgReader reads one connection's messages, checked (msgread.go), into the
// reader's buffer (readmsg.go); the message's Data is valid until next.
type msgReader struct {
	conn      *Conn
	checkUTF8 bool // WithUTF8Validation (on by default)
	rb        readBuffer
	mc        msgCheck
}

func newMsgReader(conn *Conn) msgReader {
	return msgReader{conn: conn, checkUTF8: !conn.client.cfg.noUTF8Check}
}

// next reads the next message; the error is the connection's end cause.
func (m *msgReader) next() (Message, error) {
	cn := m.conn
	typ, r, err := cn.ws.NextReader()
	if err != nil {
		return Message{}, cn.causeOf(err)
	}
	buf, err := m.rb.read(m.mc.reset(cn, typ, r, m.checkUTF8))
	if err != nil {
		return Message{}, cn.causeOf(err)
	}
	return Message{Type: MessageType(typ), Data: buf, Feed: cn.client.name, Received: cn.nc.readAt, ConnID: cn.id}, nil
}

// replyFilter returns Heartbeat.IsReply and DropReplies, if set.
func (c *Client) replyFilter() (isReply func(Message) bool, drop bool) {
	if hbc := c.cfg.heartbeat; hbc != nil {
		return hbc.IsReply, hbc.DropReplies
	}
	return nil, false
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
		conn.closeHandshake(false)
	})
	return func() {
		if !stopAF() {
			<-done
		}
	}
}

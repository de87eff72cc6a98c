package wspool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Conn is one live connection of a feed. The OnConnect hook gets it to
// subscribe, authenticate or resume; it is valid until the connection ends.
type Conn struct {
	client *Client
	ws     *websocket.Conn
	nc     *trackedConn

	wlock chan struct{} // one writer at a time, waitable with a context
	dead  chan struct{} // closed when the connection is torn down
	once  sync.Once
	cause error // why it was torn down; written before dead is closed

	inOnConnect   atomic.Bool // ReadMessage is allowed
	closing       atomic.Bool // our close frame is being or has been sent
	stopping      atomic.Bool // the feed is shutting down: deliver nothing more
	delivering    atomic.Bool // the reader is held back by the handler
	closeOnce     sync.Once
	gotData       atomic.Bool          // a data message (not a heartbeat reply) arrived
	next          atomic.Pointer[Conn] // the replacement after a rotation
	afterRotation atomic.Bool          // this connection replaced a rotated one
	pingSeq       atomic.Uint64
	pingSent      atomic.Int64
	start         time.Time // when it reached the connected state (written under client.mu)
}

func newConn(c *Client, ws *websocket.Conn, nc *trackedConn) *Conn {
	return &Conn{client: c, ws: ws, nc: nc, wlock: make(chan struct{}, 1), dead: make(chan struct{})}
}

// Feed returns the name of the feed the connection belongs to.
func (cn *Conn) Feed() string { return cn.client.name }

// Subprotocol returns the subprotocol the server chose, if any.
func (cn *Conn) Subprotocol() string { return cn.ws.Subprotocol() }

// Send writes one message on this connection; see Client.Send.
func (cn *Conn) Send(ctx context.Context, typ MessageType, data []byte) error {
	if err := checkType(typ); err != nil {
		return err
	}
	select {
	case cn.wlock <- struct{}{}:
	case <-cn.dead:
		return ErrNotConnected
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-cn.wlock }()
	select {
	case <-cn.dead:
		return ErrNotConnected
	default:
	}
	if cn.closing.Load() {
		return ErrClosed
	}
	if err := cn.ws.SetWriteDeadline(time.Now().Add(cn.client.cfg.writeTimeout)); err != nil {
		cn.kill(err)
		return fmt.Errorf("wspool: send: %w", err)
	}
	if err := cn.ws.WriteMessage(int(typ), data); err != nil {
		err = fmt.Errorf("wspool: send: %w", err)
		cn.kill(err)
		return err
	}
	cn.client.stats.msgsOut.Add(1)
	cn.client.stats.bytesOut.Add(int64(len(data)))
	return nil
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
	if err := cn.ws.SetWriteDeadline(time.Now().Add(cn.client.cfg.writeTimeout)); err != nil {
		return false, err
	}
	return true, cn.ws.WriteMessage(websocket.PingMessage, payload)
}

// ReadMessage reads the next message directly from the connection, for
// request-reply exchanges inside OnConnect (e.g. wait for "authenticated").
// Messages read this way are not passed to the handler. It may only be called
// from OnConnect; ctx bounds the wait.
func (cn *Conn) ReadMessage(ctx context.Context) (Message, error) {
	if !cn.inOnConnect.Load() {
		return Message{}, errors.New("wspool: Conn.ReadMessage called outside OnConnect")
	}
	// When ctx ends the OnConnect attempt fails anyway, so a read deadline in
	// the past (which leaves the connection unusable) is the right interrupt.
	stop := context.AfterFunc(ctx, func() { _ = cn.ws.SetReadDeadline(time.Now()) })
	typ, data, err := cn.ws.ReadMessage()
	stop()
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return Message{}, fmt.Errorf("wspool: read: %w", err)
	}
	cn.client.stats.msgsIn.Add(1)
	cn.client.stats.bytesIn.Add(int64(len(data)))
	return Message{Type: MessageType(typ), Data: data, Feed: cn.client.name}, nil
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
	if errors.Is(readErr, websocket.ErrReadLimit) {
		return fmt.Errorf("wspool: message over read limit (%d bytes; closed with 1009 where the frame allowed): %w", cn.client.cfg.readLimit, readErr)
	}
	return fmt.Errorf("wspool: read: %w", readErr)
}

// closeHandshake sends a close frame (1000) and gives the server the close
// timeout to answer. With drain it reads the answer itself (no reader is
// running); otherwise the running reader sees it.
func (cn *Conn) closeHandshake(drain bool) {
	cn.closeOnce.Do(func() {
		cn.closing.Store(true)
		// The close timeout bounds the whole handshake, our write included
		// (a peer that stopped reading must not stretch it to the write timeout).
		deadline := time.Now().Add(cn.client.cfg.closeTimeout)
		msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
		if err := cn.ws.WriteControl(websocket.CloseMessage, msg, deadline); err != nil {
			cn.kill(ErrClosed)
			return
		}
		_ = cn.ws.SetReadDeadline(deadline)
		if drain {
			for {
				if _, _, err := cn.ws.NextReader(); err != nil {
					return
				}
			}
		}
	})
}

// close releases the socket.
func (cn *Conn) close() { cn.kill(ErrConnectionClosed) }

package wspooltest

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// inboxSize bounds the messages a Conn keeps for Read; past it the oldest
// unread one is discarded.
const inboxSize = 4096

// writeWait bounds each write and the wait for the client's close answer.
const writeWait = 5 * time.Second

// ErrClosed is returned by Send and Read once the connection has ended.
var ErrClosed = errors.New("wspooltest: connection closed")

// Conn is one server-side connection. Its methods are safe for concurrent
// use; it is read on a goroutine of its own, so pings and close frames are
// answered (unless frozen) whether or not the script reads.
type Conn struct {
	ws   *websocket.Conn
	req  *http.Request
	done chan struct{} // closed when the connection has ended

	// What the client sent and Read has not taken yet: at most inboxSize,
	// in a slice that grows with use (a connection nobody reads from
	// holds only what arrived). arrived is signalled on every message.
	inMu    sync.Mutex
	inbox   []message
	arrived chan struct{}

	wmu sync.Mutex // one writer at a time

	mu     sync.Mutex
	frozen bool
	thawed chan struct{} // closed when Freeze(false) follows Freeze(true)
}

type message struct {
	typ  int
	data []byte
	at   int64 // when the reader got it from the socket (UnixNano)
}

func newConn(ws *websocket.Conn, r *http.Request) *Conn {
	c := &Conn{ws: ws, req: r, arrived: make(chan struct{}, 1), done: make(chan struct{}), thawed: make(chan struct{})}
	ws.SetPingHandler(func(data string) error {
		if c.isFrozen() {
			return nil
		}
		err := ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(writeWait))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		return err
	})
	ws.SetCloseHandler(func(code int, _ string) error {
		if c.isFrozen() {
			return nil
		}
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(writeWait))
		return nil
	})
	go c.read()
	return c
}

func (c *Conn) read() {
	defer close(c.done)
	defer c.ws.NetConn().Close()
	for {
		typ, data, err := c.ws.ReadMessage()
		if err != nil {
			return
		}
		m := message{typ, data, time.Now().UnixNano()}
		c.inMu.Lock() // the reader never blocks: past inboxSize the oldest goes
		if len(c.inbox) >= inboxSize {
			c.inbox = append(c.inbox[:0], c.inbox[1:]...)
		}
		c.inbox = append(c.inbox, m)
		c.inMu.Unlock()
		select {
		case c.arrived <- struct{}{}:
		default:
		}
	}
}

// Request returns the upgrade request: its URL (path and query, such as a
// resume point) and headers (such as credentials) for the script to check.
func (c *Conn) Request() *http.Request { return c.req }

// Read returns the next data message the client sent (its type,
// websocket.TextMessage or websocket.BinaryMessage, and data), waiting until
// one arrives, the connection ends (ErrClosed) or ctx ends (ctx.Err()).
// The last 4,096 messages not read yet are kept; older ones are discarded.
func (c *Conn) Read(ctx context.Context) (typ int, data []byte, err error) {
	m, err := c.readAt(ctx)
	return m.typ, m.data, err
}

// readAt is Read with the time the message was read from the socket (a
// message limit counts arrivals, not when the script got to them).
func (c *Conn) readAt(ctx context.Context) (message, error) {
	for {
		c.inMu.Lock()
		if len(c.inbox) > 0 {
			m := c.inbox[0]
			c.inbox[0] = message{}
			c.inbox = c.inbox[1:]
			c.inMu.Unlock()
			return m, nil
		}
		c.inMu.Unlock()
		select {
		case <-c.done:
			c.inMu.Lock()
			left := len(c.inbox)
			c.inMu.Unlock()
			if left == 0 { // the reader has ended: nothing more comes
				return message{}, ErrClosed
			}
		case <-c.arrived:
		case <-ctx.Done():
			return message{}, ctx.Err()
		}
	}
}

// Send writes one data message (typ is websocket.TextMessage or
// websocket.BinaryMessage). While the connection is frozen it waits until it
// is thawed. It fails with ErrClosed once the connection has ended.
func (c *Conn) Send(typ int, data []byte) error {
	for {
		c.mu.Lock()
		frozen, thawed := c.frozen, c.thawed
		c.mu.Unlock()
		if !frozen {
			break
		}
		select {
		case <-thawed:
		case <-c.done:
			return ErrClosed
		}
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	select {
	case <-c.done:
		return ErrClosed
	default:
	}
	_ = c.ws.SetWriteDeadline(time.Now().Add(writeWait))
	if err := c.ws.WriteMessage(typ, data); err != nil {
		c.Drop()
		return ErrClosed
	}
	return nil
}

// SendText writes one text message.
func (c *Conn) SendText(s string) error { return c.Send(websocket.TextMessage, []byte(s)) }

// Close closes the connection gracefully with a close frame carrying code
// (1000 normal, 1001 going away, 1008 policy violation, 1012 service
// restart, 1013 try again later, ...) and reason, then waits a few seconds at
// most for the client's answer before closing the socket. It returns once
// the connection has ended.
func (c *Conn) Close(code int, reason string) {
	c.wmu.Lock()
	err := c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(writeWait))
	c.wmu.Unlock()
	if err == nil {
		t := time.NewTimer(writeWait)
		defer t.Stop()
		select {
		case <-c.done:
			return
		case <-t.C:
		}
	}
	c.Drop()
	<-c.done
}

// Drop closes the connection abruptly, without a close frame, like a process
// that died or a network that failed: the client sees an abnormal closure
// (1006).
func (c *Conn) Drop() { _ = c.ws.NetConn().Close() }

// Freeze(true) makes the connection hang, like a server process that stopped
// while its kernel still acknowledges packets: pings and close frames go
// unanswered and Send waits. Freeze(false) thaws it. Messages from the client
// are still read and kept for Read.
func (c *Conn) Freeze(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if on == c.frozen {
		return
	}
	c.frozen = on
	if !on {
		close(c.thawed)
		c.thawed = make(chan struct{})
	}
}

func (c *Conn) isFrozen() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frozen
}

// Done returns a channel closed once the connection has ended (the client
// closed it or went away, or the test closed or dropped it).
func (c *Conn) Done() <-chan struct{} { return c.done }

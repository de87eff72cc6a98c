package wspool_test

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
)

// TestRotateOfAConnectionNotYetReadEndsWithIt: a Rotate called on the
// connection a rotation has just switched to, before the reader reaches it,
// ends when that connection dies; it never switches Send to a connection of
// its own after the feed has reconnected.
//
// Found by the all-features soak
// (WSPOOL_SOAK_SEED=666048389: "f074: connection 4275 after 4297", two
// OnConnects of one feed overlapping). With WithMaxConnectionAge, a Rotate
// called on the connection a rotation has just switched to, while the
// reader still drains the old one, started a rotator on it; when the reader
// reached the new connection it armed the timed rotation over it, so the
// connection's end stopped only the timed one. The orphan rotation went on
// while the feed reconnected, and on success published its connection as
// the one Send writes on: a connection nobody reads, never closed, with the
// feed's sends going into it.
func TestRotateOfAConnectionNotYetReadEndsWithIt(t *testing.T) {
	var (
		mu     sync.Mutex
		conns  []*websocket.Conn
		holdUp = make(chan struct{}) // the first connection ignores our close frame until the end
	)
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		mu.Lock()
		conns = append(conns, c)
		n := len(conns)
		mu.Unlock()
		if n == 1 {
			<-holdUp // never reads: the client's close handshake waits its close timeout
			return
		}
		if err := c.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
			return
		}
		for { // echo
			typ, m, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(typ, m); err != nil {
				return
			}
		}
	})
	t.Cleanup(func() { close(holdUp) }) // before the server's Close, which waits for its handlers
	serverConn := func(i int) *websocket.Conn {
		mu.Lock()
		defer mu.Unlock()
		return conns[i-1]
	}
	var dials atomic.Int64
	inThird, releaseThird := make(chan struct{}), make(chan struct{})
	got := make(chan wspool.Message, 64)
	c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
		m.Data = append([]byte(nil), m.Data...)
		got <- m
		return nil
	},
		wspool.WithMaxConnectionAge(time.Hour),
		wspool.WithCloseTimeout(2*time.Second),
		wspool.WithOnConnectTimeout(time.Minute), // longer than the test
		wspool.WithOnConnect(func(ctx context.Context, _ *wspool.Conn) error {
			if dials.Add(1) == 3 { // the second rotation's connection
				close(inThird)
				select {
				case <-releaseThird:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	waitFor(t, 10*time.Second, "connected", func() bool { return c.State() == wspool.StateConnected })

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Rotate(ctx); err != nil { // to connection 2; connection 1 drains for its close timeout
		t.Fatalf("first Rotate: %v", err)
	}
	second := make(chan error, 1)
	go func() { second <- c.Rotate(ctx) }() // on connection 2, before its reader started
	recv(t, inThird, 10*time.Second, "the second rotation's OnConnect")
	// Connection 1 ends after its close timeout; the reader goes on with 2.
	waitConn := func(id uint64) {
		t.Helper()
		deadline := time.After(15 * time.Second)
		var seen []uint64
		for {
			select {
			case m := <-got:
				if m.ConnID == id {
					return
				}
				seen = append(seen, m.ConnID)
			case <-deadline:
				t.Fatalf("no message from connection %d within 15s (messages from %v; %d OnConnects; stats %+v)", id, seen, dials.Load(), c.Stats())
			}
		}
	}
	waitConn(2)
	// Connection 2 dies: the feed reconnects (connection 4), and the
	// rotation that was replacing 2 must end with it.
	serverConn(2).NetConn().Close()
	waitConn(4)
	close(releaseThird) // the second rotation's OnConnect would now succeed
	if err := recv(t, second, 10*time.Second, "the second Rotate to return"); err == nil {
		t.Fatal("the second Rotate switched after the connection it was replacing had died and the feed had reconnected")
	}
	// Send writes on the connection the feed reads: the echo comes back.
	if err := c.Send(ctx, wspool.TextMessage, []byte("probe")); err != nil {
		t.Fatalf("Send: %v", err)
	}
	for {
		m := recv(t, got, 10*time.Second, "the echo of a Send after the reconnect (written on a connection nobody reads?)")
		if string(m.Data) == "probe" {
			if m.ConnID != 4 {
				t.Fatalf("echo on connection %d, want 4", m.ConnID)
			}
			break
		}
	}
}

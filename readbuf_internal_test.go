//go:build unix

package wspool

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/socket"
	"github.com/wspool/wspool/internal/wstest"
)

// TestIdleFeedHoldsNoReadBuffer checks the point of pooled reads: a plain
// ws:// feed reads through the shared buffers and, once it has read
// everything the server sent, holds none of them while it waits.
func TestIdleFeedHoldsNoReadBuffer(t *testing.T) {
	srv, err := wstest.New(func(c *websocket.Conn, _ *http.Request) {
		for i := 0; i < 3; i++ {
			if err := c.WriteMessage(websocket.BinaryMessage, make([]byte, 40000)); err != nil {
				return
			}
		}
		wstest.Drain(c, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	got := make(chan struct{}, 3)
	c, err := NewClient(srv.URL("/"), func(context.Context, Message) error {
		got <- struct{}{}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.dialer.ReadBufferSize != socket.GorillaBufferSize {
		t.Fatalf("gorilla read buffer %d, want %d", c.dialer.ReadBufferSize, socket.GorillaBufferSize)
	}
	runInternal(t, c)
	for i := 0; i < 3; i++ {
		select {
		case <-got:
		case <-time.After(10 * time.Second):
			t.Fatal("timed out waiting for the messages")
		}
	}
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn == nil || !conn.nc.Pooled() {
		t.Fatal("the connection does not use pooled reads")
	}
	// The reader is now parked waiting for the socket; the last message (of
	// more than the buffer holds, assembled) was consumed before it was
	// delivered.
	if conn.nc.HoldsBuffer() {
		t.Fatal("an idle connection holds a read buffer")
	}
}

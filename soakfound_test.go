package wspool_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
)

// TestSoakFoundSendOvertakesQueue: found by the all-features soak
// (WSPOOL_SOAK_SEED=22 and 33 at WSPOOL_SOAK=60s: "server: conn 876 of feed
// 56: send s37 arrived after s40", a SendAsync sender with a send buffer).
// While the flusher runs a SendAsync done func it gives the writer role up,
// with messages still queued behind it; a Send made meanwhile (here from that
// done func, as its doc allows; in the soak from another goroutine) finds a
// live connection and nobody writing, and writes at once, ahead of the
// queued messages that were sent before it. Send's doc promises the messages
// of a feed are written in the order Send and SendAsync were called.
func TestSoakFoundSendOvertakesQueue(t *testing.T) {
	got := make(chan string, 16)
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		for {
			_, m, err := c.ReadMessage()
			if err != nil {
				return
			}
			got <- string(m)
		}
	})
	c, err := wspool.NewClient(srv.URL("/"), nil, wspool.WithSendBuffer(wspool.SendBuffer{Messages: 8}))
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	// Not connected yet: both wait in the send buffer, in this order.
	c.SendAsync(wspool.TextMessage, []byte("1"), func(error) {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			// Called after "2": must be written after it.
			_ = c.Send(ctx, wspool.TextMessage, []byte("3"))
		})
	})
	c.SendAsync(wspool.TextMessage, []byte("2"), nil)
	runClient(t, c)
	var order []string
	for len(order) < 3 {
		select {
		case m := <-got:
			order = append(order, m)
		case <-time.After(10 * time.Second):
			t.Fatalf("server got %v, want 3 messages", order)
		}
	}
	if order[0] != "1" || order[1] != "2" || order[2] != "3" {
		t.Fatalf("server got %v, want [1 2 3]: a Send made after SendAsync(\"2\") overtook it", order)
	}
}

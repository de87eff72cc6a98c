package wspool

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/wstest"
)

// TestPingWhileWriterBusy checks that a ping is not starved while a message
// is being written: an idle feed pings through the connection's writer, and
// a ping that finds the writer taken goes out through WriteControl (between
// the frames of the message) at the next tick.
func TestPingWhileWriterBusy(t *testing.T) {
	var pings atomic.Int64
	srv, err := wstest.New(func(c *websocket.Conn, r *http.Request) {
		c.SetPingHandler(func(data string) error {
			pings.Add(1)
			return c.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		})
		wstest.Drain(c, r)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	c, err := NewClient(srv.URL("/"), nil, WithPingInterval(50*time.Millisecond), WithPongTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	runInternal(t, c)
	var conn *Conn
	waitUntil(t, 10*time.Second, "a connection", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		conn = c.conn
		return conn != nil && c.state == StateConnected
	})
	waitUntil(t, 10*time.Second, "a first ping", func() bool { return pings.Load() >= 1 })

	// Hold the writer as a long Send would.
	conn.wlock <- struct{}{}
	held := pings.Load()
	waitUntil(t, 10*time.Second, "pings while the writer is held", func() bool { return pings.Load() >= held+2 })
	<-conn.wlock
	if st := c.Stats(); st.Disconnects != 0 {
		t.Fatalf("%d disconnects; last error %v", st.Disconnects, st.LastError)
	}
}

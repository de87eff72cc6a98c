package wspool_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/wstest"
)

// BenchmarkReadTextUTF8 reads 1 KiB JSON text messages from a loopback
// server through a feed's read loop, with UTF-8 validation on (the default)
// and off: the ratio of the two is the validation's cost on the read path.
func BenchmarkReadTextUTF8(b *testing.B) {
	msg := []byte(strings.Repeat(`{"e":"trade","s":"BTCUSDT","p":"64231.50","q":"0.0130"},`, 20)[:1024])
	pm, err := websocket.NewPreparedMessage(websocket.TextMessage, msg)
	if err != nil {
		b.Fatal(err)
	}
	srv, err := wstest.New(func(c *websocket.Conn, _ *http.Request) {
		for c.WritePreparedMessage(pm) == nil {
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	for _, on := range []bool{true, false} {
		name := "validate=on"
		if !on {
			name = "validate=off"
		}
		b.Run(name, func(b *testing.B) {
			var n atomic.Int64
			done := make(chan struct{})
			target := int64(b.N)
			c, err := wspool.NewClient(srv.URL("/"), func(context.Context, wspool.Message) error {
				if n.Add(1) == target {
					close(done)
				}
				return nil
			}, wspool.WithUTF8Validation(on))
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(msg)))
			b.ResetTimer()
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() { errc <- c.Run(ctx) }()
			select {
			case <-done:
			case <-time.After(time.Minute):
				b.Fatal("timed out")
			}
			b.StopTimer()
			cancel()
			<-errc
		})
	}
}

package main

// The -demo upstream: a gorilla WebSocket server on 127.0.0.1 with two feeds,
// so that tail can be tried without a network:
//
//	/trades  a JSON text message every 200ms; the server drops the
//	         connection every 5s, to show reconnects on stderr
//	/frames  an 8-byte big-endian counter as a binary message every 500ms

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/wstest"
)

func startDemoServer() (*wstest.Server, error) {
	return wstest.New(func(c *websocket.Conn, r *http.Request) {
		// Keep reading, for pings and the close handshake.
		gone, release := wstest.ReadInBackground(c)
		defer release()

		every, typ := 200*time.Millisecond, websocket.TextMessage
		var drop <-chan time.Time
		switch r.URL.Path {
		case "/trades":
			t := time.NewTimer(5 * time.Second)
			defer t.Stop()
			drop = t.C
		case "/frames":
			every, typ = 500*time.Millisecond, websocket.BinaryMessage
		default:
			_ = c.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.ClosePolicyViolation, "no such feed"), time.Now().Add(time.Second))
			return
		}
		tk := time.NewTicker(every)
		defer tk.Stop()
		price := 100.0
		for n := uint64(1); ; n++ {
			select {
			case <-gone:
				return
			case <-drop:
				return // abrupt, without a close frame
			case <-tk.C:
			}
			var msg []byte
			if typ == websocket.BinaryMessage {
				msg = binary.BigEndian.AppendUint64(nil, n)
			} else {
				price += rand.NormFloat64() * 0.05
				msg = fmt.Appendf(nil, `{"type":"trade","id":%d,"price":%.2f,"qty":%d}`, n, price, 1+rand.IntN(10))
			}
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if err := c.WriteMessage(typ, msg); err != nil {
				return
			}
		}
	})
}

package wspool_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/faultproxy"
	"github.com/wspool/wspool/internal/rawws"
	"github.com/wspool/wspool/internal/wstest"
)

// readSizes straddle every buffer boundary of the read path: gorilla's small
// buffer (128), its default (4096), the pooled buffer (16 KiB) and beyond.
var readSizes = []int{0, 1, 2, 125, 126, 127, 128, 129, 255, 256, 257, 1000, 4095, 4096, 4097,
	16383, 16384, 16385, 32768, 65535, 65536, 65537, 100000, 300000, 3}

func patterned(i, n int) []byte {
	b := make([]byte, n)
	for j := range b {
		b[j] = byte(i*31 + j*7)
	}
	return b
}

// patternedOf is patterned for a binary message, and its ASCII form (valid
// UTF-8) for a text message.
func patternedOf(typ, i, n int) []byte {
	b := patterned(i, n)
	if typ == websocket.TextMessage {
		for j := range b {
			b[j] &= 0x7f
		}
	}
	return b
}

// TestReadIntegrity checks that every message arrives intact and in order
// through the read path, directly and through a proxy that forwards in tiny
// writes (so that reads often find the socket empty and wait).
func TestReadIntegrity(t *testing.T) {
	const rounds = 3
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		for r := 0; r < rounds; r++ {
			for i, n := range readSizes {
				typ := websocket.BinaryMessage
				if i%2 == 0 {
					typ = websocket.TextMessage
				}
				if err := c.WriteMessage(typ, patternedOf(typ, r*100+i, n)); err != nil {
					return
				}
				if i%5 == 0 {
					_ = c.WriteControl(websocket.PingMessage, []byte("p"), time.Now().Add(time.Second))
				}
			}
		}
		wstest.Drain(c, nil)
	})
	// A Dialer with ReadBufferSize set keeps gorilla's own buffering.
	ownBuffer := &websocket.Dialer{ReadBufferSize: 1024}
	for _, tc := range []struct {
		slice  int
		dialer *websocket.Dialer
	}{{0, nil}, {7, nil}, {1500, nil}, {0, ownBuffer}, {7, ownBuffer}} {
		slice := tc.slice
		t.Run(fmt.Sprintf("slice=%d/gorilla-buffer=%v", slice, tc.dialer != nil), func(t *testing.T) {
			target := srv.Addr()
			if slice > 0 {
				p, err := faultproxy.New(srv.Addr())
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { p.Close() })
				p.SetSlice(slice)
				target = p.Addr()
			}
			var mu sync.Mutex
			var got [][]byte
			var types []wspool.MessageType
			done := make(chan struct{})
			var opts []wspool.Option
			if tc.dialer != nil {
				opts = append(opts, wspool.WithDialer(tc.dialer))
			}
			c, err := wspool.NewClient("ws://"+target+"/", func(_ context.Context, m wspool.Message) error {
				mu.Lock()
				defer mu.Unlock()
				got = append(got, bytes.Clone(m.Data))
				types = append(types, m.Type)
				if len(got) == rounds*len(readSizes) {
					close(done)
				}
				return nil
			}, opts...)
			if err != nil {
				t.Fatal(err)
			}
			runClient(t, c)
			recv(t, done, 30*time.Second, "every message")
			mu.Lock()
			defer mu.Unlock()
			for r := 0; r < rounds; r++ {
				for i, n := range readSizes {
					k := r*len(readSizes) + i
					if want := patternedOf(int(types[k]), r*100+i, n); !bytes.Equal(got[k], want) {
						t.Fatalf("message %d (%d bytes): got %d bytes, content differs", k, n, len(got[k]))
					}
					wantT := wspool.BinaryMessage
					if i%2 == 0 {
						wantT = wspool.TextMessage
					}
					if types[k] != wantT {
						t.Fatalf("message %d: type %v, want %v", k, types[k], wantT)
					}
				}
			}
			if st := c.Stats(); st.Disconnects != 0 {
				t.Fatalf("%d disconnects during the exchange; last error %v", st.Disconnects, st.LastError)
			}
		})
	}
}

// TestReadErrorsReadLikeNet checks the causes reported when the peer resets
// or closes the TCP connection: they read like net.Conn's errors.
func TestReadErrorsReadLikeNet(t *testing.T) {
	srv := newServer(t, wstest.Drain)
	p, err := faultproxy.New(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	ev := newEvents()
	c, err := wspool.NewClient("ws://"+p.Addr()+"/", nil, ev.option(), wspool.WithBackoff(10*time.Millisecond, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	ev.waitCount(t, wspool.StateConnected, 1, 10*time.Second)
	p.ResetAll()
	ev.waitCount(t, wspool.StateBackingOff, 1, 10*time.Second)
	ev.waitCount(t, wspool.StateConnected, 2, 10*time.Second)
	p.CloseAll()
	ev.waitCount(t, wspool.StateBackingOff, 2, 10*time.Second)
	var causes []string
	for _, sc := range ev.snapshot() {
		if sc.To == wspool.StateBackingOff {
			causes = append(causes, sc.Err.Error())
		}
	}
	if !strings.Contains(causes[0], "read tcp") || !strings.Contains(causes[0], "connection reset") {
		t.Errorf("cause after a reset: %q, want a read error naming the reset", causes[0])
	}
	if strings.Contains(causes[0], "raw-read") {
		t.Errorf("cause after a reset names the raw read: %q", causes[0])
	}
	if !strings.Contains(causes[1], "EOF") {
		t.Errorf("cause after a close: %q, want EOF", causes[1])
	}
}

// TestFramesSentWithThe101AreDelivered: a server that writes its first
// messages in the same write as its 101 response (a snapshot pushed at
// once, more than a socket read buffer holds) gets every one delivered, in
// order, whatever the response check read with the head. Found when reads
// began parsing frames in the socket's buffer: the bytes read with the head
// were put in place of those still buffered, and a feed lost messages.
func TestFramesSentWithThe101AreDelivered(t *testing.T) {
	for _, size := range []int{10, 700, 5000} {
		t.Run(fmt.Sprintf("messages of %d bytes", size), func(t *testing.T) {
			const count = 40
			srv := newRawServer(t, func(ctx context.Context, c *rawws.Conn) {
				req, err := c.ReadRequest()
				if err != nil {
					return
				}
				out := []byte(rawws.UpgradeResponse(req.Header.Get("Sec-WebSocket-Key")))
				for i := 0; i < count; i++ {
					out = rawws.Binary(patterned(i, size)).Append(out)
				}
				if _, err := c.Write(out); err != nil {
					return
				}
				if c.WaitClose(false).Code > 0 {
					_ = c.WriteFrames(rawws.Close(1000, ""))
				}
			})
			var mu sync.Mutex
			var got [][]byte
			done := make(chan struct{})
			c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
				mu.Lock()
				defer mu.Unlock()
				got = append(got, bytes.Clone(m.Data))
				if len(got) == count {
					close(done)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			runClient(t, c)
			recv(t, done, 30*time.Second, "every message")
			mu.Lock()
			defer mu.Unlock()
			for i := 0; i < count; i++ {
				if !bytes.Equal(got[i], patterned(i, size)) {
					t.Fatalf("message %d differs (%d bytes)", i, len(got[i]))
				}
			}
		})
	}
}

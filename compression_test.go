package wspool_test

// permessage-deflate (RFC 7692): every response allowed for our offer is
// accepted, the others fail clearly and permanently, and a decompressed
// message is bounded by the read limit on every read path.

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/rawws"
)

// TestCompressionResponses: with compression offered, each response RFC 7692
// allows is accepted (a compressed message is delivered, and our own sends
// are compressed and inflate right on the server); a response the client
// cannot honour fails with a permanent *NegotiationError naming it.
// server_no_context_takeover alone used to fail with a false "invalid 101
// response (Upgrade, Connection or Sec-WebSocket-Accept wrong)" and redial
// forever.
func TestCompressionResponses(t *testing.T) {
	msg := strings.Repeat(`{"e":"trade","s":"BTCUSDT","p":"64231.50"}`, 20)
	for _, tt := range []struct {
		ext    string
		reason string // "" when accepted
	}{
		{"permessage-deflate; server_no_context_takeover", ""},
		{"permessage-deflate; server_no_context_takeover; client_no_context_takeover", ""},
		{"permessage-deflate;server_no_context_takeover;client_no_context_takeover", ""},
		{"permessage-deflate; client_no_context_takeover; server_no_context_takeover; server_max_window_bits=15", ""},
		{"permessage-deflate; server_no_context_takeover; server_max_window_bits=8", ""},
		{`permessage-deflate; server_no_context_takeover; server_max_window_bits="10"`, ""},
		{"PerMessage-Deflate; Server_No_Context_Takeover", ""},
		{"permessage-deflate", "no server_no_context_takeover"},
		{"permessage-deflate; client_no_context_takeover", "no server_no_context_takeover"},
		{"permessage-deflate; server_no_context_takeover; client_max_window_bits=10", "client_max_window_bits was not offered"},
		{"permessage-deflate; server_no_context_takeover; server_max_window_bits=16", "server_max_window_bits must be 8 to 15"},
		{"permessage-deflate; server_no_context_takeover; server_max_window_bits", "server_max_window_bits must be 8 to 15"},
		{"permessage-deflate; server_no_context_takeover; server_no_context_takeover", "given twice"},
		{"permessage-deflate; server_no_context_takeover=1", "takes no value"},
		{"permessage-deflate; server_no_context_takeover; x=1", "unknown permessage-deflate parameter"},
		{"permessage-deflate; server_no_context_takeover, permessage-deflate; server_no_context_takeover", "accepted twice"},
	} {
		t.Run(tt.ext, func(t *testing.T) {
			fromClient := make(chan rawws.Frame, 1)
			srv := newRawServer(t, func(ctx context.Context, c *rawws.Conn) {
				req, err := c.Handshake("Sec-WebSocket-Extensions: " + tt.ext)
				if err != nil {
					return
				}
				if !strings.Contains(req.Header.Get("Sec-WebSocket-Extensions"), "permessage-deflate") {
					return
				}
				if err := c.WriteFrames(rawws.Frame{Fin: true, RSV: rawws.RSV1, Opcode: rawws.OpText, Payload: rawws.Deflate([]byte(msg))}); err != nil {
					return
				}
				f, err := c.ReadFrame()
				if err == nil {
					select {
					case fromClient <- f:
					default:
					}
				}
				_ = c.WaitClose(true)
			})
			if tt.reason != "" {
				err, attempts := runOnce(t, srv.URL("/"), wspool.WithCompression(true))
				wantNegotiationError(t, err, attempts, "Sec-WebSocket-Extensions", tt.reason)
				if !strings.Contains(err.Error(), "permessage-deflate") {
					t.Errorf("error %q does not name what the server negotiated", err)
				}
				return
			}
			got := make(chan string, 1)
			ev := newEvents()
			c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
				got <- string(m.Data)
				return nil
			}, hostileOptions(ev, wspool.WithCompression(true))...)
			if err != nil {
				t.Fatal(err)
			}
			stop := runClient(t, c)
			if m := recv(t, got, 5*time.Second, "the compressed message"); m != msg {
				t.Fatalf("delivered %q", m)
			}
			if err := c.Send(context.Background(), wspool.TextMessage, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			f := recv(t, fromClient, 5*time.Second, "the client's message")
			if f.RSV != rawws.RSV1 || len(f.Payload) >= len(msg) {
				t.Errorf("client frame RSV %x, %d bytes for %d: not compressed", f.RSV, len(f.Payload), len(msg))
			}
			if b, err := rawws.Inflate(f.Payload, 1<<20); err != nil || string(b) != msg {
				t.Errorf("the client's message inflates to %q, %v", b, err)
			}
			stopWithin(t, stop, 3*time.Second)
		})
	}
}

// TestDecompressedMessageBoundedByReadLimit: 32 MiB of zeros deflate to
// ~32 KB; with a 1 MiB read limit the message closes the connection with
// 1009 and is reported like an oversized wire message, on the handler's read
// loop and in Conn.ReadMessage alike, without inflating it whole. With the
// extension not offered, the same server's 101 already fails (see
// TestUnofferedExtensionFails).
func TestDecompressedMessageBoundedByReadLimit(t *testing.T) {
	bomb := rawws.Deflate(make([]byte, 32<<20))
	t.Logf("bomb: %d bytes on the wire for 32 MiB", len(bomb))
	for _, path := range []string{"handler", "Conn.ReadMessage"} {
		for _, fragmented := range []bool{false, true} {
			name := path
			if fragmented {
				name += " fragmented"
			}
			t.Run(name, func(t *testing.T) {
				closes := newClientCloses()
				srv := newRawServer(t, func(ctx context.Context, c *rawws.Conn) {
					if _, err := c.Handshake("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover"); err != nil {
						return
					}
					frames := []rawws.Frame{{Fin: true, RSV: rawws.RSV1, Opcode: rawws.OpBinary, Payload: bomb}}
					if fragmented {
						h := len(bomb) / 2
						frames = []rawws.Frame{{RSV: rawws.RSV1, Opcode: rawws.OpBinary, Payload: bomb[:h]}, {Fin: true, Opcode: rawws.OpContinuation, Payload: bomb[h:]}}
					}
					if err := c.WriteFrames(frames...); err != nil {
						return
					}
					closes.wait(c)
				})
				ev := newEvents()
				delivered := make(chan int, 4)
				opts := []wspool.Option{wspool.WithCompression(true), wspool.WithReadLimit(1 << 20)}
				readErr := make(chan error, 1)
				if path == "Conn.ReadMessage" {
					opts = append(opts, wspool.WithOnConnect(func(ctx context.Context, cn *wspool.Conn) error {
						m, err := cn.ReadMessage(ctx)
						if err == nil {
							delivered <- len(m.Data)
						}
						select {
						case readErr <- err:
						default:
						}
						return err
					}))
				}
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
					delivered <- len(m.Data)
					return nil
				}, hostileOptions(ev, opts...)...)
				if err != nil {
					t.Fatal(err)
				}
				stop := runClient(t, c)
				cause := checkReported(t, c, ev, "over read limit", websocket.ErrReadLimit)
				t.Logf("cause: %v", cause)
				if path == "Conn.ReadMessage" {
					if err := recv(t, readErr, 5*time.Second, "ReadMessage's error"); !errors.Is(err, websocket.ErrReadLimit) {
						t.Errorf("ReadMessage returned %v, want ErrReadLimit", err)
					}
				}
				if cc := recv(t, closes.ch, 5*time.Second, "the client's close"); cc.Code != websocket.CloseMessageTooBig {
					t.Errorf("client closed with %d, want 1009", cc.Code)
				}
				stopWithin(t, stop, 3*time.Second)
				runtime.ReadMemStats(&after)
				if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
					t.Errorf("allocated %.1f MiB for a 1 MiB limit", float64(alloc)/(1<<20))
				}
				select {
				case n := <-delivered:
					t.Errorf("a %d-byte message was delivered", n)
				default:
				}
			})
		}
	}
}

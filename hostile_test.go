package wspool_test

// Hostile and broken servers: a raw TCP "WebSocket server" (internal/rawws)
// that botches the handshake, sends frames a conforming server never sends,
// or ignores our close frame. For each, the feed must report a clear error
// (state change cause and Stats.LastError), dial again, never panic, never
// hang, and leave nothing behind (TestMain checks for leaked goroutines).

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/rawws"
)

func newRawServer(t testing.TB, script rawws.Script) *rawws.Server {
	t.Helper()
	s, err := rawws.New(script)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// hostileOptions are fast-retry options for tests against hostile servers.
func hostileOptions(ev *events, more ...wspool.Option) []wspool.Option {
	return append([]wspool.Option{
		wspool.WithBackoff(10*time.Millisecond, 50*time.Millisecond),
		wspool.WithHandshakeTimeout(2 * time.Second),
		wspool.WithCloseTimeout(500 * time.Millisecond),
		ev.option(),
	}, more...)
}

// firstCause returns the cause and time of the first transition into state,
// and the time of the transition before it.
func (e *events) firstCause(state wspool.State) (cause error, at, prevAt time.Time) {
	all := e.snapshot()
	for i, sc := range all {
		if sc.To == state {
			if i > 0 {
				prevAt = all[i-1].At
			}
			return sc.Err, sc.At, prevAt
		}
	}
	return nil, time.Time{}, time.Time{}
}

// clientCloses collects what the client did at the end of each connection,
// as the server saw it.
type clientCloses struct {
	ch chan rawws.ClientClose
}

func newClientCloses() *clientCloses { return &clientCloses{ch: make(chan rawws.ClientClose, 64)} }

func (cc *clientCloses) wait(c *rawws.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	select {
	case cc.ch <- c.WaitClose(true):
	default:
	}
}

// checkReported checks that the feed reported a failure, with cause matching
// want (a substring, or "" for any) and wantIs (if not nil), in the first
// BackingOff state change and in Stats.LastError; it returns the cause.
func checkReported(t *testing.T, c *wspool.Client, ev *events, want string, wantIs error) error {
	t.Helper()
	ev.waitCount(t, wspool.StateBackingOff, 1, 10*time.Second)
	cause, _, _ := ev.firstCause(wspool.StateBackingOff)
	if cause == nil {
		t.Fatalf("BackingOff without a cause: %v", ev.snapshot())
	}
	if !strings.Contains(cause.Error(), want) {
		t.Errorf("cause %q, want it to contain %q", cause, want)
	}
	if wantIs != nil && !errors.Is(cause, wantIs) {
		t.Errorf("cause %q (%T), want errors.Is %v", cause, cause, wantIs)
	}
	if le := c.Stats().LastError; le == nil {
		t.Errorf("Stats.LastError is nil after %v", cause)
	}
	return cause
}

// stopWithin stops the feed and fails unless Run returns nil within d.
func stopWithin(t *testing.T, stop func() error, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	err := stop()
	took := time.Since(start)
	if err != nil {
		t.Errorf("Run returned %v, want nil after cancel", err)
	}
	if took > d {
		t.Errorf("Run took %v to return after cancel, want at most %v", took, d)
	}
	return took
}

func TestHostileFramesAfterHandshake(t *testing.T) {
	random := make([]byte, 4096)
	rand.New(rand.NewSource(1)).Read(random)
	big := bytes.Repeat([]byte("x"), 2048)

	type tc struct {
		name string
		send []byte
		opts []wspool.Option
		// want is a substring of the reported cause; wantIs, if set, must
		// match it with errors.Is.
		want   string
		wantIs error
		// wantClose is the close code the server must get from the client
		// (1002 for protocol errors), -1 for none, 0 to not check.
		wantClose int
	}
	cases := []tc{
		{name: "random bytes", send: random, want: "wspool: read: "},
		{name: "RSV1 without extension", send: rawws.Frame{Fin: true, RSV: rawws.RSV1, Opcode: rawws.OpText, Payload: []byte("x")}.Bytes(), want: "RSV1 set", wantClose: 1002},
		{name: "RSV2", send: rawws.Frame{Fin: true, RSV: rawws.RSV2, Opcode: rawws.OpBinary, Payload: []byte("x")}.Bytes(), want: "RSV2 set", wantClose: 1002},
		{name: "RSV3 on ping", send: rawws.Frame{Fin: true, RSV: rawws.RSV3, Opcode: rawws.OpPing}.Bytes(), want: "RSV3 set", wantClose: 1002},
		{name: "all reserved bits", send: rawws.Frame{Fin: true, RSV: 7, Opcode: rawws.OpText}.Bytes(), want: "RSV1 set, RSV2 set, RSV3 set", wantClose: 1002},
		{name: "ping with FIN=0", send: rawws.Frame{Opcode: rawws.OpPing, Payload: []byte("frag")}.Bytes(), want: "FIN not set on control", wantClose: 1002},
		{name: "close with FIN=0", send: rawws.Frame{Opcode: rawws.OpClose, Payload: []byte{3, 232}}.Bytes(), want: "FIN not set on control", wantClose: 1002},
		{name: "ping payload 126", send: rawws.Ping(bytes.Repeat([]byte("p"), 126)).Bytes(), want: "len > 125 for control", wantClose: 1002},
		{name: "pong payload 1000", send: rawws.Pong(bytes.Repeat([]byte("p"), 1000)).Bytes(), want: "len > 125 for control", wantClose: 1002},
		{name: "close payload 200", send: rawws.Close(1000, strings.Repeat("r", 198)).Bytes(), want: "len > 125 for control", wantClose: 1002},
		{name: "close code 999", send: rawws.Close(999, "").Bytes(), want: "bad close code 999", wantClose: 1002},
		{name: "close code 1005 on the wire", send: rawws.Close(1005, "").Bytes(), want: "bad close code 1005", wantClose: 1002},
		{name: "close code 1006 on the wire", send: rawws.Close(1006, "").Bytes(), want: "bad close code 1006", wantClose: 1002},
		{name: "close code 1015 on the wire", send: rawws.Close(1015, "").Bytes(), want: "bad close code 1015", wantClose: 1002},
		{name: "close code 5000", send: rawws.Close(5000, "").Bytes(), want: "bad close code 5000", wantClose: 1002},
		{name: "close reason invalid UTF-8", send: rawws.Close(1000, "\xff\xfe").Bytes(), want: "invalid utf8 payload in close frame", wantClose: 1002},
		{name: "masked server frame", send: rawws.Frame{Fin: true, Opcode: rawws.OpText, Payload: []byte("hi"), Masked: true, MaskKey: [4]byte{1, 2, 3, 4}}.Bytes(), want: "bad MASK", wantClose: 1002},
		{name: "continuation without a message", send: rawws.Frame{Fin: true, Opcode: rawws.OpContinuation, Payload: []byte("x")}.Bytes(), want: "continuation after FIN", wantClose: 1002},
		{name: "new message inside a fragmented one", send: append(rawws.Frame{Opcode: rawws.OpText, Payload: []byte("a")}.Bytes(), rawws.Text("b").Bytes()...), want: "data before FIN", wantClose: 1002},
		{
			name: "message over the read limit",
			send: rawws.Binary(big).Bytes(), opts: []wspool.Option{wspool.WithReadLimit(1024)},
			want: "over read limit", wantIs: websocket.ErrReadLimit, wantClose: websocket.CloseMessageTooBig,
		},
		{
			name: "fragmented message over the read limit",
			send: append(rawws.Frame{Opcode: rawws.OpBinary, Payload: big[:700]}.Bytes(), rawws.Frame{Fin: true, Opcode: rawws.OpContinuation, Payload: big[:700]}.Bytes()...),
			opts: []wspool.Option{wspool.WithReadLimit(1024)},
			want: "over read limit", wantIs: websocket.ErrReadLimit, wantClose: websocket.CloseMessageTooBig,
		},
		{
			// gorilla reports a 64-bit length with the top bit set as
			// ErrReadLimit but, unlike a real overrun, sends no 1009 first.
			name: "64-bit length with the top bit set",
			send: rawws.Frame{Fin: true, Opcode: rawws.OpBinary, LieLength: true, Length: 1 << 63}.Bytes(),
			want: "read limit", wantIs: websocket.ErrReadLimit, wantClose: -1,
		},
	}
	for op := 3; op <= 0xf; op++ {
		if op >= rawws.OpClose && op <= rawws.OpPong {
			continue
		}
		cases = append(cases, tc{
			name: "reserved opcode " + strconv.Itoa(op),
			send: rawws.Frame{Fin: true, Opcode: uint8(op), Payload: []byte("x")}.Bytes(),
			want: "bad opcode " + strconv.Itoa(op), wantClose: 1002,
		})
	}

	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			closes := newClientCloses()
			srv := newRawServer(t, func(ctx context.Context, c *rawws.Conn) {
				if _, err := c.Handshake(); err != nil {
					return
				}
				if _, err := c.Write(tt.send); err != nil {
					return
				}
				closes.wait(c)
			})
			ev := newEvents()
			var handlerCalls sync.Map
			c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
				handlerCalls.Store(string(m.Data), true)
				return nil
			}, hostileOptions(ev, tt.opts...)...)
			if err != nil {
				t.Fatal(err)
			}
			stop := runClient(t, c)
			cause := checkReported(t, c, ev, tt.want, tt.wantIs)
			t.Logf("cause: %v", cause)

			if tt.wantClose != 0 {
				cc := recv(t, closes.ch, 10*time.Second, "the server's view of the client's close")
				if cc.Code != tt.wantClose {
					t.Errorf("server saw close code %d (%q), want %d", cc.Code, cc.Reason, tt.wantClose)
				}
			}
			// It redials: a second handshake reaches the server.
			waitFor(t, 10*time.Second, "a second handshake", func() bool { return srv.Requests() >= 2 })
			stopWithin(t, stop, 3*time.Second)
			if s := c.Stats(); s.HandlerErrors != 0 || s.Attempts < 2 {
				t.Errorf("stats after stop: %+v", s)
			}
		})
	}
}

// TestInvalidUTF8TextIsDelivered documents what gorilla/websocket does with
// a text message that is not valid UTF-8: RFC 6455 section 8.1 says the
// endpoint MUST fail the connection, but gorilla does not check data
// messages (only close reasons), so wspool delivers the bytes as they came
// and the connection stays up. Handlers that need valid text must check it.
// TestInvalidUTF8TextFails: a text message that is not valid UTF-8 (whole
// or fragmented) is never delivered: the client closes with 1007 and
// reports ErrInvalidUTF8, then redials. A valid code point split across
// fragments is delivered. WithUTF8Validation(false) delivers it as is.
func TestInvalidUTF8TextFails(t *testing.T) {
	invalid := []byte("bad \xff\xfe\xc3 text")
	script := func(closes *clientCloses) rawws.Script {
		return func(ctx context.Context, c *rawws.Conn) {
			if _, err := c.Handshake(); err != nil {
				return
			}
			err := c.WriteFrames(
				rawws.Frame{Opcode: rawws.OpText, Payload: []byte("caf\xc3")},
				rawws.Frame{Fin: true, Opcode: rawws.OpContinuation, Payload: []byte("\xa9")},
				rawws.Frame{Fin: true, Opcode: rawws.OpText, Payload: invalid},
				rawws.Text("after"),
			)
			if err != nil {
				return
			}
			closes.wait(c)
		}
	}
	t.Run("validated", func(t *testing.T) {
		closes := newClientCloses()
		srv := newRawServer(t, script(closes))
		got := make(chan wspool.Message, 10)
		ev := newEvents()
		c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
			got <- m.Clone()
			return nil
		}, hostileOptions(ev)...)
		if err != nil {
			t.Fatal(err)
		}
		stop := runClient(t, c)
		if m := recv(t, got, 5*time.Second, "the valid message"); string(m.Data) != "café" {
			t.Fatalf("first message %q, want café", m.Data)
		}
		checkReported(t, c, ev, "closed with 1007", wspool.ErrInvalidUTF8)
		if cc := recv(t, closes.ch, 5*time.Second, "the client's close"); cc.Code != websocket.CloseInvalidFramePayloadData {
			t.Errorf("client closed with %d, want 1007", cc.Code)
		}
		waitFor(t, 10*time.Second, "a redial", func() bool { return srv.Accepted() >= 2 })
		stopWithin(t, stop, 3*time.Second)
		close(got)
		for m := range got {
			if string(m.Data) != "café" {
				t.Errorf("delivered %q", m.Data)
			}
		}
	})
	t.Run("validation off", func(t *testing.T) {
		srv := newRawServer(t, script(newClientCloses()))
		got := make(chan wspool.Message, 10)
		ev := newEvents()
		c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
			got <- m.Clone()
			return nil
		}, hostileOptions(ev, wspool.WithUTF8Validation(false))...)
		if err != nil {
			t.Fatal(err)
		}
		stop := runClient(t, c)
		for i, w := range []string{"café", string(invalid), "after"} {
			if m := recv(t, got, 5*time.Second, "message "+strconv.Itoa(i)); string(m.Data) != w {
				t.Fatalf("message %d: %q, want %q", i, m.Data, w)
			}
		}
		if s := c.Stats(); s.Connects != 1 || s.Disconnects != 0 {
			t.Fatalf("the connection did not survive: %+v", s)
		}
		stopWithin(t, stop, 3*time.Second)
	})
}

// TestTruncatedFrameThenSilence: a frame that declares 100 bytes and sends
// 10, then nothing: the reader waits for the rest, so only the ping/pong
// liveness check can end it.
func TestTruncatedFrameThenSilence(t *testing.T) {
	srv := newRawServer(t, func(ctx context.Context, c *rawws.Conn) {
		if _, err := c.Handshake(); err != nil {
			return
		}
		f := rawws.Frame{Fin: true, Opcode: rawws.OpText, Payload: []byte("0123456789"), LieLength: true, Length: 100}
		if err := c.WriteFrames(f); err != nil {
			return
		}
		_ = c.Drain() // never answers a ping
	})
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil, hostileOptions(ev,
		wspool.WithPingInterval(200*time.Millisecond), wspool.WithPongTimeout(200*time.Millisecond))...)
	if err != nil {
		t.Fatal(err)
	}
	stop := runClient(t, c)
	checkReported(t, c, ev, "pong timeout", wspool.ErrPongTimeout)
	waitFor(t, 10*time.Second, "a second handshake", func() bool { return srv.Requests() >= 2 })
	stopWithin(t, stop, 3*time.Second)
}

func TestHostileHandshakes(t *testing.T) {
	const hsTimeout = 500 * time.Millisecond
	badAccept := func(ctx context.Context, c *rawws.Conn, req *http.Request) {
		_, _ = c.WriteString(rawws.Response(http.StatusSwitchingProtocols,
			"Upgrade: websocket", "Connection: Upgrade",
			"Sec-WebSocket-Accept: "+rawws.AcceptKey("not the key we were sent")))
	}
	type tc struct {
		name string
		// respond runs after the server read the request (if read).
		respond func(ctx context.Context, c *rawws.Conn, req *http.Request)
		// noRead: the server never reads the request.
		noRead bool
		want   string
		wantIs error
		// timeout: the attempt must end by the handshake timeout.
		timeout bool
	}
	cases := []tc{
		{name: "wrong Sec-WebSocket-Accept", respond: badAccept, wantIs: websocket.ErrBadHandshake},
		{name: "101 without Upgrade", respond: func(ctx context.Context, c *rawws.Conn, req *http.Request) {
			_, _ = c.WriteString(rawws.Response(http.StatusSwitchingProtocols,
				"Connection: Upgrade", "Sec-WebSocket-Accept: "+rawws.AcceptKey(req.Header.Get("Sec-WebSocket-Key"))))
		}, wantIs: websocket.ErrBadHandshake},
		{name: "101 without Connection", respond: func(ctx context.Context, c *rawws.Conn, req *http.Request) {
			_, _ = c.WriteString(rawws.Response(http.StatusSwitchingProtocols,
				"Upgrade: websocket", "Sec-WebSocket-Accept: "+rawws.AcceptKey(req.Header.Get("Sec-WebSocket-Key"))))
		}, wantIs: websocket.ErrBadHandshake},
		{name: "101 upgrading to h2c", respond: func(ctx context.Context, c *rawws.Conn, req *http.Request) {
			_, _ = c.WriteString(rawws.Response(http.StatusSwitchingProtocols,
				"Upgrade: h2c", "Connection: Upgrade", "Sec-WebSocket-Accept: "+rawws.AcceptKey(req.Header.Get("Sec-WebSocket-Key"))))
		}, wantIs: websocket.ErrBadHandshake},
		{name: "200 instead of 101", respond: func(ctx context.Context, c *rawws.Conn, req *http.Request) {
			_, _ = c.WriteString(rawws.Response(http.StatusOK, "Content-Length: 5") + "hello")
		}, want: "HTTP 200", wantIs: websocket.ErrBadHandshake},
		{name: "not HTTP at all", respond: func(ctx context.Context, c *rawws.Conn, req *http.Request) {
			_, _ = c.WriteString("SSH-2.0-OpenSSH_9.6\r\n")
		}, want: "malformed HTTP"},
		{name: "closes after reading the request", respond: func(ctx context.Context, c *rawws.Conn, req *http.Request) {}, want: "EOF"},
		{name: "closes before reading the request", noRead: true, respond: func(ctx context.Context, c *rawws.Conn, req *http.Request) {}, want: "wspool: dial: "},
		// The deadline ends the read inside the status line, and Go's
		// bufio.Reader.ReadLine hands the partial line "HTT" to
		// http.ReadResponse without the error; the cause must still say
		// it was the handshake timeout (TestTrickledHandshakeReportsTimeout).
		{name: "trickles the 101 one byte per 200ms", respond: func(ctx context.Context, c *rawws.Conn, req *http.Request) {
			_ = c.Trickle(ctx, []byte(rawws.UpgradeResponse(req.Header.Get("Sec-WebSocket-Key"))), 200*time.Millisecond)
		}, want: "wspool: dial: ", timeout: true},
		{name: "never answers", respond: func(ctx context.Context, c *rawws.Conn, req *http.Request) {
			_ = c.Drain()
		}, wantIs: os.ErrDeadlineExceeded, timeout: true},
		{name: "accepts TCP and never reads", noRead: true, respond: func(ctx context.Context, c *rawws.Conn, req *http.Request) {
			<-ctx.Done()
		}, wantIs: os.ErrDeadlineExceeded, timeout: true},
		{name: "101 then immediate close", respond: func(ctx context.Context, c *rawws.Conn, req *http.Request) {
			_, _ = c.WriteString(rawws.UpgradeResponse(req.Header.Get("Sec-WebSocket-Key")))
		}, want: "wspool: read: "},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			srv := newRawServer(t, func(ctx context.Context, c *rawws.Conn) {
				var req *http.Request
				if !tt.noRead {
					var err error
					if req, err = c.ReadRequest(); err != nil {
						return
					}
				}
				tt.respond(ctx, c, req)
			})
			ev := newEvents()
			c, err := wspool.NewClient(srv.URL("/"), nil, hostileOptions(ev, wspool.WithHandshakeTimeout(hsTimeout))...)
			if err != nil {
				t.Fatal(err)
			}
			stop := runClient(t, c)
			cause := checkReported(t, c, ev, tt.want, tt.wantIs)
			t.Logf("cause: %v", cause)
			if tt.timeout {
				_, at, prev := ev.firstCause(wspool.StateBackingOff)
				if took := at.Sub(prev); took < hsTimeout-50*time.Millisecond || took > hsTimeout+time.Second {
					t.Errorf("attempt took %v, want about the handshake timeout %v", took, hsTimeout)
				}
			}
			// It redials: a second connection reaches the server.
			waitFor(t, 10*time.Second, "a second attempt", func() bool { return srv.Accepted() >= 2 })
			stopWithin(t, stop, 3*time.Second)
		})
	}
}

// TestHandshakeBadUpgradeIsNotAnHTTPStatusError: a server that answers 101
// but with a wrong Sec-WebSocket-Accept (or without Upgrade/Connection) must
// not be reported as a *HandshakeError with StatusCode 101 ("handshake
// failed: HTTP 101 Switching Protocols"): HandshakeError is documented as
// "the server answered the WebSocket upgrade with something other than 101",
// and that message would hide what is actually wrong.
func TestHandshakeBadUpgradeIsNotAnHTTPStatusError(t *testing.T) {
	srv := newRawServer(t, func(ctx context.Context, c *rawws.Conn) {
		if _, err := c.ReadRequest(); err != nil {
			return
		}
		_, _ = c.WriteString(rawws.Response(http.StatusSwitchingProtocols,
			"Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Accept: "+rawws.AcceptKey("wrong")))
	})
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil, hostileOptions(ev)...)
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	cause := checkReported(t, c, ev, "", websocket.ErrBadHandshake)
	var he *wspool.HandshakeError
	if errors.As(cause, &he) && he.StatusCode == http.StatusSwitchingProtocols {
		t.Errorf("a 101 with a bad upgrade is reported as HandshakeError{StatusCode: 101}: %q", cause)
	}
	if !strings.Contains(strings.ToLower(cause.Error()), "accept") {
		t.Errorf("cause %q does not say what is wrong (Sec-WebSocket-Accept mismatch)", cause)
	}
}

// TestTrickledHandshakeReportsTimeout: a server that trickles its 101 one
// byte per 200ms is cut off by the handshake timeout (500ms). The socket
// deadline ends the read inside the status line and bufio.Reader.ReadLine
// hands the partial line to http.ReadResponse without the error, so the raw
// error is `malformed HTTP response "HTT"`; the cause must say that the
// handshake timed out.
func TestTrickledHandshakeReportsTimeout(t *testing.T) {
	srv := newRawServer(t, func(ctx context.Context, c *rawws.Conn) {
		req, err := c.ReadRequest()
		if err != nil {
			return
		}
		_ = c.Trickle(ctx, []byte(rawws.UpgradeResponse(req.Header.Get("Sec-WebSocket-Key"))), 200*time.Millisecond)
	})
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil, hostileOptions(ev, wspool.WithHandshakeTimeout(500*time.Millisecond))...)
	if err != nil {
		t.Fatal(err)
	}
	stop := runClient(t, c)
	// Whether the socket deadline or the context's timer fires first varies,
	// so look at several attempts.
	attempts := 8
	if testing.Short() {
		attempts = 3
	}
	ev.waitCount(t, wspool.StateBackingOff, attempts, 20*time.Second)
	stop()
	bad := 0
	for _, sc := range ev.snapshot() {
		if sc.To != wspool.StateBackingOff {
			continue
		}
		if !errors.Is(sc.Err, context.DeadlineExceeded) && !errors.Is(sc.Err, os.ErrDeadlineExceeded) {
			bad++
			t.Logf("attempt %d: cause %q does not say the handshake timed out", sc.Attempt, sc.Err)
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d attempts cut off by the handshake timeout were not reported as a timeout (errors.Is DeadlineExceeded false)", bad, attempts)
	}
}

// TestCloseDuringStuckHandshake: a server accepts TCP and never answers the
// upgrade. Closing the feed then must not wait for the handshake timeout
// (10 s by default): the documented bound on shutdown is the close timeout.
func TestCloseDuringStuckHandshake(t *testing.T) {
	srv := newRawServer(t, func(ctx context.Context, c *rawws.Conn) {
		if _, err := c.ReadRequest(); err != nil {
			return
		}
		_ = c.Drain()
	})
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil, ev.option(),
		wspool.WithHandshakeTimeout(5*time.Second), wspool.WithCloseTimeout(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	stop := runClient(t, c)
	waitFor(t, 5*time.Second, "the request to reach the server", func() bool { return srv.Requests() >= 1 })
	took := stopWithin(t, stop, 10*time.Second)
	if took > time.Second {
		t.Errorf("Close during a stuck handshake took %v (handshake timeout 5s, close timeout 300ms): cancellation does not interrupt the upgrade", took)
	}
}

// TestHandshakeTimeoutIsNotTheOnConnectTimeout: a server accepts TCP and
// never answers the upgrade; with a 300ms handshake timeout and a 1 minute
// OnConnect timeout (for a long resubscribe), each attempt fails at the
// handshake timeout. Before WithOnConnectTimeout, giving OnConnect a minute
// meant WithHandshakeTimeout(time.Minute), and a stuck dial hung a minute.
func TestHandshakeTimeoutIsNotTheOnConnectTimeout(t *testing.T) {
	srv := newRawServer(t, func(ctx context.Context, c *rawws.Conn) {
		if _, err := c.ReadRequest(); err != nil {
			return
		}
		_ = c.Drain()
	})
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil, hostileOptions(ev,
		wspool.WithHandshakeTimeout(300*time.Millisecond),
		wspool.WithOnConnectTimeout(time.Minute),
		wspool.WithOnConnect(func(context.Context, *wspool.Conn) error {
			t.Error("OnConnect ran, but no upgrade was answered")
			return nil
		}))...)
	if err != nil {
		t.Fatal(err)
	}
	stop := runClient(t, c)
	start := time.Now()
	ev.waitCount(t, wspool.StateBackingOff, 3, 30*time.Second)
	stop()
	took := time.Since(start)
	for _, sc := range ev.snapshot() {
		if sc.To == wspool.StateBackingOff && !errors.Is(sc.Err, context.DeadlineExceeded) && !errors.Is(sc.Err, os.ErrDeadlineExceeded) {
			t.Errorf("attempt %d failed with %v, want the handshake timeout", sc.Attempt, sc.Err)
		}
	}
	t.Logf("3 stalled handshakes failed in %v (handshake timeout 300ms, OnConnect timeout 1m)", took)
}

// TestHugeHandshakeResponseHeader: a server answers the upgrade with a
// header line that never ends. The client must give up by the handshake
// timeout; the test logs how much it was made to buffer meanwhile (the
// HTTP response reader has no header size limit).
func TestHugeHandshakeResponseHeader(t *testing.T) {
	if testing.Short() {
		t.Skip("pushes data at full speed for the handshake timeout")
	}
	var written sync.Map
	srv := newRawServer(t, func(ctx context.Context, c *rawws.Conn) {
		if _, err := c.ReadRequest(); err != nil {
			return
		}
		chunk := bytes.Repeat([]byte("a"), 64<<10)
		n := len("HTTP/1.1 101 Switching Protocols\r\nX-Junk: ")
		if _, err := c.WriteString("HTTP/1.1 101 Switching Protocols\r\nX-Junk: "); err != nil {
			return
		}
		for ctx.Err() == nil && n < 256<<20 {
			k, err := c.Write(chunk)
			n += k
			if err != nil {
				break
			}
		}
		written.Store(c.RemoteAddr().String(), n)
	})
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil, hostileOptions(ev, wspool.WithHandshakeTimeout(500*time.Millisecond))...)
	if err != nil {
		t.Fatal(err)
	}
	stop := runClient(t, c)
	cause := checkReported(t, c, ev, "", nil)
	stopWithin(t, stop, 3*time.Second)
	srv.Close()
	written.Range(func(k, v any) bool {
		t.Logf("cause %v; server wrote %d MiB of one header line to %v before the client gave up", cause, v.(int)>>20, k)
		return true
	})
}

func TestCloseAgainstHostileServers(t *testing.T) {
	const closeTimeout = 400 * time.Millisecond
	type tc struct {
		name   string
		script func(ctx context.Context, c *rawws.Conn, closes *clientCloses)
		// waits: the server does not answer, so Close must take about the
		// close timeout (and no more).
		waits bool
		// seesClose: the server reads our close frame and reports it.
		seesClose bool
	}
	cases := []tc{
		{name: "never answers our close frame", waits: true, seesClose: true, script: func(ctx context.Context, c *rawws.Conn, closes *clientCloses) {
			cc := c.WaitClose(false)
			select {
			case closes.ch <- cc:
			default:
			}
			<-ctx.Done() // keeps the socket open, says nothing
		}},
		{name: "never reads", waits: true, script: func(ctx context.Context, c *rawws.Conn, closes *clientCloses) {
			<-ctx.Done()
		}},
		{name: "keeps streaming data and pings instead of answering", waits: true, script: func(ctx context.Context, c *rawws.Conn, closes *clientCloses) {
			go func() {
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				select {
				case closes.ch <- c.WaitClose(true):
				default:
				}
			}()
			frames := append(rawws.Text("tick").Bytes(), rawws.Ping([]byte("p")).Bytes()...)
			for ctx.Err() == nil {
				if _, err := c.Write(frames); err != nil {
					return
				}
			}
		}},
		{name: "answers close but keeps TCP open", seesClose: true, script: func(ctx context.Context, c *rawws.Conn, closes *clientCloses) {
			cc := c.WaitClose(false)
			select {
			case closes.ch <- cc:
			default:
			}
			if cc.Code > 0 {
				_ = c.WriteFrames(rawws.Close(cc.Code, ""))
			}
			<-ctx.Done()
		}},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			closes := newClientCloses()
			srv := newRawServer(t, func(ctx context.Context, c *rawws.Conn) {
				if _, err := c.Handshake(); err != nil {
					return
				}
				tt.script(ctx, c, closes)
			})
			ev := newEvents()
			c, err := wspool.NewClient(srv.URL("/"), nil, hostileOptions(ev, wspool.WithCloseTimeout(closeTimeout))...)
			if err != nil {
				t.Fatal(err)
			}
			stop := runClient(t, c)
			ev.waitCount(t, wspool.StateConnected, 1, 5*time.Second)
			took := stopWithin(t, stop, closeTimeout+time.Second)
			if tt.waits && took < closeTimeout-50*time.Millisecond {
				t.Errorf("Close took %v: it did not wait for the close answer (close timeout %v)", took, closeTimeout)
			}
			if !tt.waits && took > closeTimeout/2 {
				t.Errorf("Close took %v although the server answered at once", took)
			}
			if tt.seesClose {
				cc := recv(t, closes.ch, 5*time.Second, "the server's view of our close frame")
				if cc.Code != websocket.CloseNormalClosure {
					t.Errorf("server saw close code %d, want 1000", cc.Code)
				}
			}
			if s := c.Stats(); s.State != wspool.StateClosed || s.Connects != 1 {
				t.Errorf("stats after Close: %+v", s)
			}
		})
	}
}

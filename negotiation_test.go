package wspool_test

// Handshake negotiation against hand-written servers: extensions and
// subprotocols only as offered (RFC 6455 section 4.1), every permessage-deflate
// response RFC 7692 allows for our offer, bounded negotiation headers.

import (
	"context"
	"errors"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/rawws"
)

// answer101 is a raw server that answers every upgrade with a 101 carrying
// extra header lines, then sends msgs (already framed) and waits.
func answer101(t *testing.T, extra []string, frames ...rawws.Frame) *rawws.Server {
	return newRawServer(t, func(ctx context.Context, c *rawws.Conn) {
		if _, err := c.Handshake(extra...); err != nil {
			return
		}
		if len(frames) > 0 {
			if err := c.WriteFrames(frames...); err != nil {
				return
			}
		}
		_ = c.WaitClose(true)
	})
}

// runOnce runs a client until Run returns (a permanent failure) and returns
// Run's error and the number of attempts.
func runOnce(t *testing.T, url string, opts ...wspool.Option) (error, int64) {
	t.Helper()
	ev := newEvents()
	c, err := wspool.NewClient(url, nil, hostileOptions(ev, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	runErr := runUntilDone(t, c, 10*time.Second)
	return runErr, c.Stats().Attempts
}

func wantNegotiationError(t *testing.T, err error, attempts int64, header, reason string) {
	t.Helper()
	var ne *wspool.NegotiationError
	if !errors.As(err, &ne) {
		t.Fatalf("Run returned %v (%T), want a *NegotiationError", err, err)
	}
	if ne.Header != header || !strings.Contains(err.Error(), reason) {
		t.Errorf("error %q: want header %s and reason containing %q", err, header, reason)
	}
	if attempts != 1 {
		t.Errorf("%d attempts, want 1 (permanent by default)", attempts)
	}
	if !wspool.DefaultPermanent(err) {
		t.Errorf("DefaultPermanent(%v) = false", err)
	}
}

// TestUnofferedExtensionFails: a 101 naming an extension the client did not
// offer fails the attempt, permanently. Before, gorilla turned
// permessage-deflate on whenever the server named it (decompressing a bomb
// past the read limit).
func TestUnofferedExtensionFails(t *testing.T) {
	bomb := rawws.Frame{Fin: true, RSV: rawws.RSV1, Opcode: rawws.OpBinary, Payload: rawws.Deflate(make([]byte, 8<<20))}
	for _, tt := range []struct {
		name, ext, reason string
		opts              []wspool.Option
	}{
		{"permessage-deflate not offered", "permessage-deflate; server_no_context_takeover; client_no_context_takeover", "was not offered", nil},
		{"other extension with compression offered", "x-webkit-deflate-frame", "was not offered", []wspool.Option{wspool.WithCompression(true)}},
		{"second extension with compression offered", "permessage-deflate; server_no_context_takeover, x-foo", `"x-foo" was not offered`, []wspool.Option{wspool.WithCompression(true)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := answer101(t, []string{"Sec-WebSocket-Extensions: " + tt.ext}, bomb)
			err, attempts := runOnce(t, srv.URL("/"), append(tt.opts, wspool.WithReadLimit(1<<20))...)
			wantNegotiationError(t, err, attempts, "Sec-WebSocket-Extensions", tt.reason)
		})
	}
}

// TestHugeNegotiationHeadersFailFast: a 1 MiB Sec-WebSocket-Extensions
// ("a,a,a,...") or Sec-WebSocket-Protocol fails after a few KiB, without
// gorilla's per-element allocations (195 MiB and a million objects before).
func TestHugeNegotiationHeadersFailFast(t *testing.T) {
	huge := strings.Repeat("a,", 512<<10)
	for _, tt := range []struct {
		name, line, header string
		opts               []wspool.Option
	}{
		{"extensions", "Sec-WebSocket-Extensions: " + huge, "Sec-WebSocket-Extensions", nil},
		{"extensions, compression offered", "Sec-WebSocket-Extensions: " + huge, "Sec-WebSocket-Extensions", []wspool.Option{wspool.WithCompression(true)}},
		{"subprotocol", "Sec-WebSocket-Protocol: " + strings.Repeat("v", 1<<20), "Sec-WebSocket-Protocol", []wspool.Option{wspool.WithSubprotocols("v1")}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := answer101(t, []string{tt.line})
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			err, attempts := runOnce(t, srv.URL("/"), tt.opts...)
			runtime.ReadMemStats(&after)
			wantNegotiationError(t, err, attempts, tt.header, "over 4096 bytes")
			alloc := after.TotalAlloc - before.TotalAlloc
			objs := after.Mallocs - before.Mallocs
			t.Logf("allocated %.1f MiB in %d objects (server included)", float64(alloc)/(1<<20), objs)
			if alloc > 16<<20 || objs > 100_000 {
				t.Errorf("a 1 MiB header cost %.1f MiB in %d objects, want a few MiB at most", float64(alloc)/(1<<20), objs)
			}
		})
	}
}

// TestSubprotocolsAsOffered: RFC 6455 section 4.1: a subprotocol that was
// not offered fails the connection; one of the offered ones is kept.
func TestSubprotocolsAsOffered(t *testing.T) {
	for _, tt := range []struct {
		name   string
		answer string
		opts   []wspool.Option
		reason string // "" when the connection must succeed
	}{
		{"none offered", "v1", nil, "no subprotocol was offered"},
		{"v1 offered, v2 answered", "v2", []wspool.Option{wspool.WithSubprotocols("v1")}, "not one of the subprotocols offered"},
		{"two answered", "v1, v2", []wspool.Option{wspool.WithSubprotocols("v1", "v2")}, "more than one"},
		{"unsolicited 1 KiB", strings.Repeat("x", 1024), nil, "no subprotocol was offered"},
		{"v2 of v1, v2", "v2", []wspool.Option{wspool.WithSubprotocols("v1", "v2")}, ""},
		{"offered in the header", "chat", []wspool.Option{wspool.WithHeader(http.Header{"Sec-Websocket-Protocol": {"chat, superchat"}})}, ""},
		{"offered with WithDialer", "b", []wspool.Option{wspool.WithDialer(&websocket.Dialer{Subprotocols: []string{"a", "b"}})}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := answer101(t, []string{"Sec-WebSocket-Protocol: " + tt.answer})
			if tt.reason != "" {
				err, attempts := runOnce(t, srv.URL("/"), tt.opts...)
				wantNegotiationError(t, err, attempts, "Sec-WebSocket-Protocol", tt.reason)
				return
			}
			got := make(chan string, 1)
			ev := newEvents()
			c, err := wspool.NewClient(srv.URL("/"), nil, hostileOptions(ev, append(tt.opts, wspool.WithOnConnect(func(_ context.Context, cn *wspool.Conn) error {
				got <- cn.Subprotocol()
				return nil
			}))...)...)
			if err != nil {
				t.Fatal(err)
			}
			stop := runClient(t, c)
			if p := recv(t, got, 5*time.Second, "OnConnect"); p != tt.answer {
				t.Errorf("Subprotocol() = %q, want %q", p, tt.answer)
			}
			ev.waitCount(t, wspool.StateConnected, 1, 5*time.Second)
			stopWithin(t, stop, 3*time.Second)
		})
	}
}

package rawws

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

func TestAcceptKeyRFCExample(t *testing.T) {
	// RFC 6455 section 1.3.
	if got := AcceptKey("dGhlIHNhbXBsZSBub25jZQ=="); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("AcceptKey = %q", got)
	}
}

func TestFrameRoundTrip(t *testing.T) {
	for _, f := range []Frame{
		Text("hello"),
		Binary(bytes.Repeat([]byte{7}, 300)),
		Binary(bytes.Repeat([]byte{9}, 70000)),
		{Fin: true, RSV: RSV1 | RSV3, Opcode: 0xB, Payload: []byte("x"), LenForm: Len64},
		{Opcode: OpPing, Payload: []byte("abc"), Masked: true, MaskKey: [4]byte{1, 2, 3, 4}, LenForm: Len16},
	} {
		got, n, err := ParseFrame(f.Bytes())
		if err != nil || n != len(f.Bytes()) {
			t.Fatalf("ParseFrame(%+v): n %d, err %v", f, n, err)
		}
		if got.Fin != f.Fin || got.RSV != f.RSV || got.Opcode != f.Opcode || got.Masked != f.Masked || !bytes.Equal(got.Payload, f.Payload) {
			t.Fatalf("round trip: got %+v, want %+v", got, f)
		}
	}
	lie := Frame{Fin: true, Opcode: OpText, Payload: []byte("abc"), LieLength: true, Length: 10}
	if _, _, err := ParseFrame(lie.Bytes()); err != ErrIncomplete {
		t.Fatalf("lying length: err %v, want ErrIncomplete", err)
	}
}

// TestGorillaAgainstRawServer runs gorilla's client against a hand-made
// handshake and checks that both ends understand each other, and that
// DataMessages agrees with what gorilla delivers, with wspool's UTF-8 check
// of text messages on top.
func TestGorillaAgainstRawServer(t *testing.T) {
	streams := map[string][]byte{
		"valid": cat(Text("a"), Ping([]byte("p")), Frame{Opcode: OpBinary, Payload: []byte("b1")},
			Pong(nil), Frame{Fin: true, Opcode: OpContinuation, Payload: []byte("b2")}, Text(""), Close(1000, "bye")),
		"reserved opcode": cat(Text("a"), Frame{Fin: true, Opcode: 3}, Text("b")),
		"rsv":             cat(Text("a"), Frame{Fin: true, RSV: RSV2, Opcode: OpText}, Text("b")),
		"bad close":       cat(Text("a"), Close(1005, ""), Text("b")),
		"truncated":       cat(Text("a"), Frame{Fin: true, Opcode: OpText, Payload: []byte("xy"), LieLength: true, Length: 5}),
		"over limit":      cat(Text("a"), Frame{Opcode: OpText, Payload: bytes.Repeat([]byte("x"), 60)}, Frame{Fin: true, Opcode: OpContinuation, Payload: bytes.Repeat([]byte("x"), 60)}),
		"invalid utf8":    cat(Text("\xff"), Text("ok")),
	}
	for name, stream := range streams {
		t.Run(name, func(t *testing.T) {
			gotClose := make(chan ClientClose, 1)
			srv, err := New(func(ctx context.Context, c *Conn) {
				if _, err := c.Handshake(); err != nil {
					return
				}
				if _, err := c.Write(stream); err != nil {
					return
				}
				_ = c.CloseWrite()
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				gotClose <- c.WaitClose(true)
			})
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			ws, _, err := websocket.DefaultDialer.Dial(srv.URL("/"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer ws.Close()
			ws.SetReadLimit(100)
			var got []Message
			for {
				typ, data, err := ws.ReadMessage()
				if err != nil {
					t.Logf("gorilla: %v", err)
					break
				}
				if typ == websocket.TextMessage && !utf8.Valid(data) {
					break // wspool closes with 1007 here; gorilla would deliver it
				}
				got = append(got, Message{Opcode: uint8(typ), Data: data})
			}
			ws.Close()
			want, why := DataMessages(stream, 100)
			t.Logf("model: %s", why)
			if len(got) != len(want) {
				t.Fatalf("gorilla delivered %d messages, model %d: %q vs %q", len(got), len(want), got, want)
			}
			for i := range got {
				if got[i].Opcode != want[i].Opcode || !bytes.Equal(got[i].Data, want[i].Data) {
					t.Fatalf("message %d: gorilla %q, model %q", i, got[i], want[i])
				}
			}
			cc := <-gotClose
			if strings.Contains(name, "reserved") && cc.Code != 1002 {
				t.Fatalf("client close code %d, want 1002", cc.Code)
			}
		})
	}
}

func cat(frames ...Frame) []byte {
	var b []byte
	for _, f := range frames {
		b = f.Append(b)
	}
	return b
}

package handshake_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/handshake"
)

const accept = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n"

// readAll reads src through chk the way a connection does: through the
// check until it is done, then directly.
func readAll(chk *handshake.Check, src io.Reader) ([]byte, error) {
	var out []byte
	p := make([]byte, 7) // small reads: the check must serve a head across calls
	for {
		var n int
		var err error
		if chk.Done() {
			n, err = src.Read(p)
		} else {
			n, err = chk.Read(src, p)
		}
		out = append(out, p[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

func offer(protos []string, deflate bool) *handshake.Check {
	return handshake.New(&websocket.Dialer{Subprotocols: protos, EnableCompression: deflate}, http.Header{})
}

// TestResponsesPassedOnUnchanged: a non-101 answer, and a 101 with nothing
// to negotiate, reach gorilla byte for byte, with what followed the head.
func TestResponsesPassedOnUnchanged(t *testing.T) {
	for _, resp := range []string{
		"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nSec-WebSocket-Extensions: anything\r\n\r\nbody",
		accept + "\r\n\x81\x05hello",
		accept + "Sec-WebSocket-Protocol: \r\n\r\n",
	} {
		for _, src := range []io.Reader{strings.NewReader(resp), iotest.OneByteReader(strings.NewReader(resp))} {
			chk := offer(nil, false)
			got, err := readAll(chk, src)
			if err != nil || string(got) != resp {
				t.Errorf("%q: got %q, %v", resp, got, err)
			}
			if chk.Err() != nil {
				t.Errorf("%q: Err %v", resp, chk.Err())
			}
		}
	}
}

// TestDeflateAcceptedIsShownToGorillaAsItImplementsIt: every answer RFC 7692
// allows to our offer becomes the one extension line gorilla implements, in
// place of the server's lines, before the empty line.
func TestDeflateAcceptedIsShownToGorillaAsItImplementsIt(t *testing.T) {
	const want = "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n"
	for _, ext := range []string{
		"permessage-deflate; server_no_context_takeover",
		"permessage-deflate; server_no_context_takeover; client_no_context_takeover",
		"PerMessage-Deflate;server_no_context_takeover;server_max_window_bits=10",
		`permessage-deflate; server_no_context_takeover; server_max_window_bits="15"`,
	} {
		resp := accept + "Sec-WebSocket-Extensions: " + ext + "\r\n\r\n\x81\x00"
		chk := offer(nil, true)
		got, err := readAll(chk, iotest.HalfReader(strings.NewReader(resp)))
		if err != nil {
			t.Fatalf("%q: %v", ext, err)
		}
		if string(got) != accept+want+"\x81\x00" {
			t.Errorf("%q: gorilla reads %q", ext, got)
		}
		if !chk.DeflateOffered() {
			t.Error("DeflateOffered false")
		}
	}
}

// TestNegotiationRefused: what was not offered, or cannot be honoured,
// fails the check with the header and the reason.
func TestNegotiationRefused(t *testing.T) {
	for _, tt := range []struct {
		name    string
		protos  []string
		deflate bool
		lines   string
		header  string
		reason  string
	}{
		{"extension not offered", nil, false, "Sec-WebSocket-Extensions: permessage-deflate\r\n", "Sec-WebSocket-Extensions", `extension "permessage-deflate" was not offered`},
		{"unknown extension", nil, true, "Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n", "Sec-WebSocket-Extensions", "was not offered"},
		{"deflate twice", nil, true, "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\nsec-websocket-extensions: permessage-deflate; server_no_context_takeover\r\n", "Sec-WebSocket-Extensions", "accepted twice"},
		{"context takeover", nil, true, "Sec-WebSocket-Extensions: permessage-deflate\r\n", "Sec-WebSocket-Extensions", "no server_no_context_takeover"},
		{"client window", nil, true, "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_max_window_bits=9\r\n", "Sec-WebSocket-Extensions", "client_max_window_bits was not offered"},
		{"window 16", nil, true, "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; server_max_window_bits=16\r\n", "Sec-WebSocket-Extensions", "8 to 15"},
		{"window 08", nil, true, "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; server_max_window_bits=08\r\n", "Sec-WebSocket-Extensions", "8 to 15"},
		{"value on flag", nil, true, "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover=1\r\n", "Sec-WebSocket-Extensions", "takes no value"},
		{"parameter twice", nil, true, "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; server_no_context_takeover\r\n", "Sec-WebSocket-Extensions", "given twice"},
		{"unknown parameter", nil, true, "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; x=1\r\n", "Sec-WebSocket-Extensions", "unknown permessage-deflate parameter"},
		{"folded", nil, true, "Sec-WebSocket-Extensions: permessage-deflate;\r\n server_no_context_takeover\r\n", "Sec-WebSocket-Extensions", "folded header line"},
		{"protocol not offered", nil, false, "Sec-WebSocket-Protocol: chat\r\n", "Sec-WebSocket-Protocol", "no subprotocol was offered"},
		{"other protocol", []string{"a", "b"}, false, "Sec-WebSocket-Protocol: c\r\n", "Sec-WebSocket-Protocol", "not one of the subprotocols offered (a, b)"},
		{"two protocols", []string{"a", "b"}, false, "Sec-WebSocket-Protocol: a, b\r\n", "Sec-WebSocket-Protocol", "more than one subprotocol"},
		{"two protocol lines", []string{"a", "b"}, false, "Sec-WebSocket-Protocol: a\r\nSec-WebSocket-Protocol: a\r\n", "Sec-WebSocket-Protocol", "more than one subprotocol"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			chk := offer(tt.protos, tt.deflate)
			_, err := readAll(chk, strings.NewReader(accept+tt.lines+"\r\n"))
			var he *handshake.Error
			if !errors.As(err, &he) || he.Header != tt.header || !strings.Contains(he.Reason, tt.reason) {
				t.Fatalf("got %v, want %s: ...%s", err, tt.header, tt.reason)
			}
			if chk.Err() != err {
				t.Errorf("Err() = %v, the Read returned %v", chk.Err(), err)
			}
			if _, again := chk.Read(strings.NewReader(""), make([]byte, 8)); again != err {
				t.Errorf("a later Read returned %v", again)
			}
		})
	}
}

// TestOfferedProtocolAccepted: a subprotocol from the dialer, or from the
// request's header when the dialer names none, is accepted.
func TestOfferedProtocolAccepted(t *testing.T) {
	resp := accept + "Sec-WebSocket-Protocol: v2\r\n\r\n"
	h := http.Header{}
	h.Add("Sec-WebSocket-Protocol", "v1, v2")
	for _, chk := range []*handshake.Check{offer([]string{"v1", "v2"}, false), handshake.New(&websocket.Dialer{}, h)} {
		if got, err := readAll(chk, strings.NewReader(resp)); err != nil || string(got) != resp {
			t.Errorf("got %q, %v", got, err)
		}
	}
}

// endless is a response head whose last header line never ends.
type endless struct {
	head  string
	fill  byte
	count int
}

func (e *endless) Read(p []byte) (int, error) {
	if e.head != "" {
		n := copy(p, e.head)
		e.head = e.head[n:]
		e.count += n
		return n, nil
	}
	for i := range p {
		p[i] = e.fill
	}
	e.count += len(p)
	return len(p), nil
}

// TestOversizedNegotiationHeaderFailsBeforeItEnds: a negotiation header
// over MaxNegotiationBytes fails while it is still arriving.
func TestOversizedNegotiationHeaderFailsBeforeItEnds(t *testing.T) {
	src := &endless{head: accept + "Sec-WebSocket-Extensions: a", fill: 'a'}
	_, err := readAll(offer(nil, true), src)
	var he *handshake.Error
	if !errors.As(err, &he) || !strings.Contains(he.Reason, "over 4096 bytes") {
		t.Fatalf("got %v", err)
	}
	if src.count > 2*handshake.MaxNegotiationBytes+len(accept) {
		t.Errorf("read %d bytes before failing", src.count)
	}
	if len(he.Value) > 128+len("…") {
		t.Errorf("Value is %d bytes", len(he.Value))
	}
}

// TestOversizedHeadFails: a head over MaxResponseBytes fails with
// ErrResponseTooLarge (no header of ours needed).
func TestOversizedHeadFails(t *testing.T) {
	src := &endless{head: accept + "X-Long: ", fill: 'x'}
	_, err := readAll(offer(nil, false), src)
	if !errors.Is(err, handshake.ErrResponseTooLarge) {
		t.Fatalf("got %v", err)
	}
	if src.count > 2*handshake.MaxResponseBytes {
		t.Errorf("read %d bytes before failing", src.count)
	}
}

// TestConnChecksAboveTLS: NewConn reads through the check, then straight
// from the connection, and unwraps with NetConn.
func TestConnChecksAboveTLS(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	resp := accept + "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n"
	go func() {
		_, _ = b.Write([]byte(resp))
		_, _ = b.Write([]byte("after"))
		_ = b.Close()
	}()
	c := handshake.NewConn(a, offer(nil, true))
	if c.NetConn() != a {
		t.Error("NetConn is not the wrapped connection")
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(got, []byte("client_no_context_takeover\r\n\r\nafter")) {
		t.Errorf("read %q", got)
	}
}

// TestKeepRestHandsOnTheHeadOnly: with KeepRest, what arrived with a 101's
// head (the server's first frames) is not handed to gorilla but kept for
// Rest, whole and once, with and without a rewritten extensions header.
func TestKeepRestHandsOnTheHeadOnly(t *testing.T) {
	frames := "\x81\x05hello\x82\x00"
	for _, tc := range []struct {
		name, head string
		deflate    bool
	}{
		{"plain", accept + "\r\n", false},
		{"deflate rewritten", accept + "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chk := offer(nil, tc.deflate)
			chk.KeepRest()
			src := strings.NewReader(tc.head + frames)
			var got []byte
			p := make([]byte, 7)
			for !chk.Done() {
				n, err := chk.Read(src, p)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, p[:n]...)
			}
			if !bytes.HasSuffix(got, []byte("\r\n\r\n")) || bytes.Contains(got, []byte("hello")) {
				t.Fatalf("gorilla read %q, want the head only", got)
			}
			if rest := chk.Rest(); string(rest) != frames {
				t.Fatalf("Rest %q, want %q", rest, frames)
			}
			if rest := chk.Rest(); rest != nil {
				t.Fatalf("second Rest %q, want nil", rest)
			}
		})
	}
}

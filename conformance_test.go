package wspool_test

// RFC 6455 sections 5-8 and RFC 7692, the cases a client must handle, in the
// manner of the Autobahn TestSuite's client cases: a hand-written server
// sends exact frames, and the test checks what the feed delivers and what
// the client answers on the wire (pongs, its close code). Protocol errors
// found by gorilla are also in TestHostileFramesAfterHandshake.

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/rawws"
)

type confCase struct {
	name   string
	ext    string // the 101's Sec-WebSocket-Extensions, if any
	opts   []wspool.Option
	frames []rawws.Frame
	// want is what the handler gets, "t:..." for text and "b:..." for binary.
	want []string
	// closeCode is the client's close code on the first connection: 1000
	// (it echoed the server's normal close), 1002, 1007, 1009...
	closeCode int
	pongs     []string // payloads of the client's pongs, in order
}

// seen is what the server saw from the client on the first connection.
type seen struct {
	pongs []string
	code  int
}

func runConformance(t *testing.T, tc confCase) {
	t.Helper()
	result := make(chan seen, 1)
	var once sync.Once
	srv := newRawServer(t, func(ctx context.Context, c *rawws.Conn) {
		var extra []string
		if tc.ext != "" {
			extra = append(extra, "Sec-WebSocket-Extensions: "+tc.ext)
		}
		if _, err := c.Handshake(extra...); err != nil {
			return
		}
		if err := c.WriteFrames(tc.frames...); err != nil {
			return
		}
		// Generous: an 8 MiB message under -race on a loaded machine takes
		// the client seconds to check and deliver before it closes.
		_ = c.SetReadDeadline(time.Now().Add(45 * time.Second))
		s := seen{code: -1}
		for {
			f, err := c.ReadFrame()
			if err != nil {
				break
			}
			if f.Opcode == rawws.OpPong {
				s.pongs = append(s.pongs, string(f.Payload))
			}
			if f.Opcode == rawws.OpClose {
				s.code = 1005
				if len(f.Payload) >= 2 {
					s.code = int(f.Payload[0])<<8 | int(f.Payload[1])
				}
				break
			}
		}
		once.Do(func() { result <- s })
		_ = c.Drain()
	})
	var mu sync.Mutex
	var got []string
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
		mu.Lock()
		defer mu.Unlock()
		p := "b:"
		if m.Type == wspool.TextMessage {
			p = "t:"
		}
		got = append(got, p+string(m.Data))
		return nil
	}, hostileOptions(ev, append([]wspool.Option{wspool.WithPingInterval(time.Hour), wspool.WithReadLimit(16 << 20)}, tc.opts...)...)...)
	if err != nil {
		t.Fatal(err)
	}
	stop := runClient(t, c)
	s := recv(t, result, time.Minute, "the client's close")
	stopWithin(t, stop, 3*time.Second)
	mu.Lock()
	defer mu.Unlock()
	// Only the first connection's messages count (a redial gets them again).
	n := min(len(got), len(tc.want))
	if fmt.Sprint(got[:n]) != fmt.Sprint(tc.want) {
		t.Errorf("delivered %.200q, want %.200q", got, tc.want)
	}
	if s.code != tc.closeCode {
		t.Errorf("client closed with %d, want %d (state changes: %v)", s.code, tc.closeCode, ev.snapshot())
	}
	if fmt.Sprint(s.pongs) != fmt.Sprint(tc.pongs) && !(len(s.pongs) == 0 && len(tc.pongs) == 0) {
		t.Errorf("pongs %q, want %q", s.pongs, tc.pongs)
	}
}

func frag(op uint8, fin bool, p string) rawws.Frame {
	return rawws.Frame{Fin: fin, Opcode: op, Payload: []byte(p)}
}

// splitText sends s as a text message in fragments of size n.
func splitText(s string, n int) []rawws.Frame {
	var fs []rawws.Frame
	op := uint8(rawws.OpText)
	for len(s) > n {
		fs = append(fs, frag(op, false, s[:n]))
		s, op = s[n:], rawws.OpContinuation
	}
	return append(fs, frag(op, true, s))
}

func bye() rawws.Frame { return rawws.Close(1000, "") }

func TestConformanceFraming(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 1<<19) // 8 MiB
	var bigFrags []rawws.Frame
	for i := 0; i < len(big); i += 1 << 16 {
		op := uint8(rawws.OpContinuation)
		if i == 0 {
			op = rawws.OpBinary
		}
		bigFrags = append(bigFrags, frag(op, i+1<<16 >= len(big), big[i:i+1<<16]))
		if i%(1<<20) == 0 {
			bigFrags = append(bigFrags, rawws.Ping([]byte(fmt.Sprint(i))))
		}
	}
	var bigPongs []string
	for i := 0; i < len(big); i += 1 << 20 {
		bigPongs = append(bigPongs, fmt.Sprint(i))
	}
	cases := []confCase{
		// 1.x: text and binary of various lengths, including the length
		// encodings' edges.
		{name: "text and binary, empty to 64 KiB", frames: []rawws.Frame{
			rawws.Text(""), rawws.Binary(nil), rawws.Text(strings.Repeat("*", 125)), rawws.Text(strings.Repeat("*", 126)),
			rawws.Binary(bytes.Repeat([]byte{0xfe}, 65535)), rawws.Binary(bytes.Repeat([]byte{0xfe}, 65536)), bye()},
			want: []string{"t:", "b:", "t:" + strings.Repeat("*", 125), "t:" + strings.Repeat("*", 126),
				"b:" + strings.Repeat("\xfe", 65535), "b:" + strings.Repeat("\xfe", 65536)}, closeCode: 1000},
		{name: "non-minimal length encodings", frames: []rawws.Frame{
			{Fin: true, Opcode: rawws.OpText, Payload: []byte("abc"), LenForm: rawws.Len16},
			{Fin: true, Opcode: rawws.OpText, Payload: []byte("def"), LenForm: rawws.Len64}, bye()},
			want: []string{"t:abc", "t:def"}, closeCode: 1000},
		// 2.x: pings and pongs.
		{name: "ping with payload is answered with it", frames: []rawws.Frame{rawws.Ping([]byte("hello")), rawws.Ping(nil), rawws.Ping(bytes.Repeat([]byte("p"), 125)), bye()},
			pongs: []string{"hello", "", strings.Repeat("p", 125)}, closeCode: 1000},
		{name: "binary ping payload", frames: []rawws.Frame{rawws.Ping([]byte{0, 0xff, 0xfe, 0x80}), bye()},
			pongs: []string{"\x00\xff\xfe\x80"}, closeCode: 1000},
		{name: "unsolicited pong ignored", frames: []rawws.Frame{rawws.Pong([]byte("x")), rawws.Text("after"), bye()},
			want: []string{"t:after"}, closeCode: 1000},
		{name: "ten pings in a row", frames: append(func() (fs []rawws.Frame) {
			for i := 0; i < 10; i++ {
				fs = append(fs, rawws.Ping([]byte(fmt.Sprint(i))))
			}
			return fs
		}(), bye()), pongs: []string{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}, closeCode: 1000},
		{name: "ping payload 126 bytes", frames: []rawws.Frame{rawws.Ping(bytes.Repeat([]byte("p"), 126))}, closeCode: 1002},
		{name: "fragmented ping", frames: []rawws.Frame{{Opcode: rawws.OpPing, Payload: []byte("a")}}, closeCode: 1002},
		// 3.x: reserved bits.
		{name: "RSV1 without an extension", frames: []rawws.Frame{rawws.Text("ok"), {Fin: true, RSV: rawws.RSV1, Opcode: rawws.OpText, Payload: []byte("x")}}, want: []string{"t:ok"}, closeCode: 1002},
		{name: "RSV2 on a ping", frames: []rawws.Frame{{Fin: true, RSV: rawws.RSV2, Opcode: rawws.OpPing}}, closeCode: 1002},
		{name: "RSV3 on a continuation", frames: []rawws.Frame{frag(rawws.OpText, false, "a"), {Fin: true, RSV: rawws.RSV3, Opcode: rawws.OpContinuation, Payload: []byte("b")}}, closeCode: 1002},
		// 4.x: reserved opcodes.
		{name: "reserved data opcode 3", frames: []rawws.Frame{rawws.Text("ok"), {Fin: true, Opcode: 3}}, want: []string{"t:ok"}, closeCode: 1002},
		{name: "reserved control opcode 11", frames: []rawws.Frame{{Fin: true, Opcode: 0xB, Payload: []byte("x")}}, closeCode: 1002},
		// 5.x: fragmentation.
		{name: "fragments with pings and a pong between them", frames: []rawws.Frame{
			frag(rawws.OpText, false, "frag"), rawws.Ping([]byte("p1")), frag(rawws.OpContinuation, false, "men"),
			rawws.Pong([]byte("x")), rawws.Ping([]byte("p2")), frag(rawws.OpContinuation, true, "ted"), bye()},
			want: []string{"t:fragmented"}, pongs: []string{"p1", "p2"}, closeCode: 1000},
		{name: "empty fragments", frames: []rawws.Frame{frag(rawws.OpBinary, false, ""), frag(rawws.OpContinuation, false, ""), frag(rawws.OpContinuation, true, ""), bye()},
			want: []string{"b:"}, closeCode: 1000},
		{name: "one byte per fragment", frames: append(splitText("byte by byte", 1), bye()), want: []string{"t:byte by byte"}, closeCode: 1000},
		{name: "continuation without a message", frames: []rawws.Frame{frag(rawws.OpContinuation, true, "x")}, closeCode: 1002},
		{name: "new message inside a fragmented one", frames: []rawws.Frame{frag(rawws.OpText, false, "a"), rawws.Text("b")}, closeCode: 1002},
		{name: "close between fragments", frames: []rawws.Frame{frag(rawws.OpText, false, "a"), rawws.Close(1000, "")}, closeCode: 1000},
		// 9.x: large messages, whole and in 64 KiB fragments with pings.
		{name: "8 MiB whole", frames: []rawws.Frame{rawws.Text(big), bye()}, want: []string{"t:" + big}, closeCode: 1000},
		{name: "8 MiB in 128 fragments with pings", frames: append(bigFrags, bye()), want: []string{"b:" + big}, pongs: bigPongs, closeCode: 1000},
		{name: "over the read limit", opts: []wspool.Option{wspool.WithReadLimit(1 << 20)}, frames: []rawws.Frame{rawws.Binary(make([]byte, 1<<20+1))}, closeCode: 1009},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { runConformance(t, tc) })
	}
}

// TestConformanceClose: section 7.4: valid close codes are echoed, invalid
// ones (and invalid reasons) answered with 1002.
func TestConformanceClose(t *testing.T) {
	var cases []confCase
	for _, code := range []int{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999} {
		cases = append(cases, confCase{name: fmt.Sprintf("code %d", code), frames: []rawws.Frame{rawws.Close(code, "reason")}, closeCode: code})
	}
	for _, code := range []int{0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535} {
		cases = append(cases, confCase{name: fmt.Sprintf("invalid code %d", code), frames: []rawws.Frame{rawws.Close(code, "")}, closeCode: 1002})
	}
	cases = append(cases,
		confCase{name: "empty close", frames: []rawws.Frame{{Fin: true, Opcode: rawws.OpClose}}, closeCode: 1005},
		confCase{name: "123-byte reason", frames: []rawws.Frame{rawws.Close(1000, strings.Repeat("r", 123))}, closeCode: 1000},
		confCase{name: "UTF-8 reason", frames: []rawws.Frame{rawws.Close(1000, "κόσμε")}, closeCode: 1000},
		confCase{name: "invalid UTF-8 reason", frames: []rawws.Frame{rawws.Close(1000, "\xce\xba\xe1\xbd")}, closeCode: 1002},
		confCase{name: "data after close is ignored", frames: []rawws.Frame{rawws.Close(1000, ""), rawws.Text("late")}, closeCode: 1000},
	)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { runConformance(t, tc) })
	}
}

// TestConformanceUTF8: section 8.1 and the Autobahn 6.x cases: valid text
// in every fragmentation delivered; invalid sequences (overlong forms,
// surrogates, code points above U+10FFFF, bytes never valid, sequences cut
// off) closed with 1007, whole or fragmented, before anything of the message
// is delivered.
func TestConformanceUTF8(t *testing.T) {
	valid := []string{
		"Hello-µ@ßöäüàá-UTF-8!!", "κόσμε", "\x00", "\x7f", "\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80", "\xed\x9f\xbf",
		"\xee\x80\x80", "\xef\xbf\xbd", "\xef\xbf\xbf", "\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf", "𝄞 and €",
	}
	invalid := []string{
		"\x80", "\xbf", "\x80\xbf", "\xc0\xaf", "\xc1\xbf", "\xe0\x80\xaf", "\xe0\x9f\xbf", "\xf0\x80\x80\xaf", "\xf0\x8f\xbf\xbf",
		"\xed\xa0\x80", "\xed\xad\xbf", "\xed\xbf\xbf", "\xed\xa0\x80\xed\xb0\x80", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80",
		"\xf7\xbf\xbf\xbf", "\xf8\x88\x80\x80\x80", "\xfc\x84\x80\x80\x80\x80", "\xfe", "\xff", "\xfe\xfe\xff\xff",
		"\xc2", "\xe0\xa0", "\xf0\x90\x80", "κόσμε\xed\xa0\x80edited", "κόσμ\xce", "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
		"valid then \xc3\x28", "\xe2\x28\xa1", "\xe2\x82\x28", "\xf0\x28\x8c\xbc", "\xf0\x90\x28\xbc",
	}
	var cases []confCase
	for _, s := range valid {
		cases = append(cases, confCase{name: fmt.Sprintf("valid %q", s), frames: []rawws.Frame{rawws.Text(s), bye()}, want: []string{"t:" + s}, closeCode: 1000})
		for n := 1; n < len(s) && n <= 3; n++ {
			cases = append(cases, confCase{name: fmt.Sprintf("valid %q in %d-byte fragments", s, n), frames: append(splitText(s, n), bye()), want: []string{"t:" + s}, closeCode: 1000})
		}
	}
	for _, s := range invalid {
		cases = append(cases, confCase{name: fmt.Sprintf("invalid %q", s), frames: []rawws.Frame{rawws.Text("before"), rawws.Text(s), rawws.Text("after")},
			want: []string{"t:before"}, closeCode: 1007})
		cases = append(cases, confCase{name: fmt.Sprintf("invalid %q in 1-byte fragments", s), frames: append(splitText(s, 1), rawws.Text("after")), closeCode: 1007})
	}
	// Fail fast: an invalid first fragment closes before the rest arrives.
	cases = append(cases, confCase{name: "invalid first fragment, rest never sent", frames: []rawws.Frame{frag(rawws.OpText, false, "\xc0\xaf")}, closeCode: 1007})
	// Binary messages are not checked.
	cases = append(cases, confCase{name: "binary is not UTF-8 checked", frames: []rawws.Frame{rawws.Binary([]byte("\xff\xfe")), bye()}, want: []string{"b:\xff\xfe"}, closeCode: 1000})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { runConformance(t, tc) })
	}
}

// TestConformanceCompression: RFC 7692 section 6/7: compressed messages,
// whole and fragmented (RSV1 on the first frame only), interleaved with
// pings, mixed with uncompressed ones; RSV1 on a continuation or a control
// frame is a protocol error; compressed text is UTF-8 checked after
// inflating.
func TestConformanceCompression(t *testing.T) {
	const ext = "permessage-deflate; server_no_context_takeover"
	on := []wspool.Option{wspool.WithCompression(true)}
	text := strings.Repeat(`{"e":"trade","s":"BTCUSDT","p":"64231.50","q":"0.013"}`, 100)
	z := rawws.Deflate([]byte(text))
	h := len(z) / 3
	cases := []confCase{
		{name: "compressed text", ext: ext, opts: on, frames: []rawws.Frame{{Fin: true, RSV: rawws.RSV1, Opcode: rawws.OpText, Payload: z}, bye()},
			want: []string{"t:" + text}, closeCode: 1000},
		{name: "compressed empty message", ext: ext, opts: on, frames: []rawws.Frame{{Fin: true, RSV: rawws.RSV1, Opcode: rawws.OpBinary, Payload: rawws.Deflate(nil)}, bye()},
			want: []string{"b:"}, closeCode: 1000},
		{name: "compressed in fragments with pings", ext: ext, opts: on, frames: []rawws.Frame{
			{RSV: rawws.RSV1, Opcode: rawws.OpText, Payload: z[:h]}, rawws.Ping([]byte("a")),
			{Opcode: rawws.OpContinuation, Payload: z[h : 2*h]}, rawws.Ping([]byte("b")),
			{Fin: true, Opcode: rawws.OpContinuation, Payload: z[2*h:]}, bye()},
			want: []string{"t:" + text}, pongs: []string{"a", "b"}, closeCode: 1000},
		{name: "compressed and plain mixed", ext: ext, opts: on, frames: []rawws.Frame{
			rawws.Text("plain"), {Fin: true, RSV: rawws.RSV1, Opcode: rawws.OpBinary, Payload: rawws.Deflate([]byte("zipped"))}, rawws.Binary([]byte("plain2")), bye()},
			want: []string{"t:plain", "b:zipped", "b:plain2"}, closeCode: 1000},
		// Not here: RSV1 on a continuation or a control frame (RFC 7692
		// section 6.1) should fail with 1002; gorilla accepts both once
		// permessage-deflate is negotiated (a known gap, opt-in only).
		{name: "RSV2 with compression", ext: ext, opts: on, frames: []rawws.Frame{{Fin: true, RSV: rawws.RSV1 | rawws.RSV2, Opcode: rawws.OpText, Payload: z}}, closeCode: 1002},
		{name: "compressed invalid UTF-8", ext: ext, opts: on, frames: []rawws.Frame{{Fin: true, RSV: rawws.RSV1, Opcode: rawws.OpText, Payload: rawws.Deflate([]byte("ok \xed\xa0\x80"))}}, closeCode: 1007},
		{name: "compressed over the read limit", ext: ext, opts: append(on, wspool.WithReadLimit(64<<10)),
			frames: []rawws.Frame{{Fin: true, RSV: rawws.RSV1, Opcode: rawws.OpBinary, Payload: rawws.Deflate(make([]byte, 1<<20))}}, closeCode: 1009},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { runConformance(t, tc) })
	}
}

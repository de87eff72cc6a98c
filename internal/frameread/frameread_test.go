package frameread

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/rawws"
)

// chunkSource serves a byte stream in chunks of random sizes through a
// buffer of size bytes, as the pooled socket does: Fill appends after the
// unread bytes, moving them to the front when they would not leave room.
type chunkSource struct {
	data  []byte
	rng   *rand.Rand
	max   int // largest chunk per read
	buf   []byte
	r, w  int
	reads int
}

func newChunkSource(data []byte, size, maxChunk int, seed uint64) *chunkSource {
	return &chunkSource{data: data, rng: rand.New(rand.NewPCG(seed, 1)), max: maxChunk, buf: make([]byte, size)}
}

func (s *chunkSource) chunk(room int) int {
	return min(room, 1+s.rng.IntN(s.max), len(s.data))
}

func (s *chunkSource) Buffered() []byte { return s.buf[s.r:s.w] }

func (s *chunkSource) Consume(n int) {
	if n > s.w-s.r {
		panic("consume past the buffered bytes")
	}
	s.r += n
	if s.r == s.w {
		s.r, s.w = 0, 0
	}
}

func (s *chunkSource) Fill(n int) error {
	if n > len(s.buf) {
		panic(fmt.Sprintf("fill %d over the buffer size", n))
	}
	for s.w-s.r < n {
		if s.r+n > len(s.buf) {
			s.w = copy(s.buf, s.buf[s.r:s.w])
			s.r = 0
		}
		if len(s.data) == 0 {
			return io.EOF
		}
		k := copy(s.buf[s.w:], s.data[:s.chunk(len(s.buf)-s.w)])
		s.data = s.data[k:]
		s.w += k
		s.reads++
	}
	return nil
}

func (s *chunkSource) Read(p []byte) (int, error) {
	if s.w > s.r {
		panic("Read with bytes buffered")
	}
	if len(s.data) == 0 {
		return 0, io.EOF
	}
	k := copy(p, s.data[:s.chunk(len(p))])
	s.data = s.data[k:]
	s.reads++
	return k, nil
}

func (s *chunkSource) BufferSize() int { return len(s.buf) }

// recPeer records what the Reader asks of the connection.
type recPeer struct {
	pings, pongs []string
	closeCode    int
	closeText    string
	failCode     int
	failErr      error
}

func (p *recPeer) Ping(b []byte) error { p.pings = append(p.pings, string(b)); return nil }
func (p *recPeer) Pong(b []byte) error { p.pongs = append(p.pongs, string(b)); return nil }
func (p *recPeer) Close(code int, text string) error {
	p.closeCode, p.closeText = code, text
	return nil
}
func (p *recPeer) Fail(code int, err error) error {
	p.failCode, p.failErr = code, err
	return err
}

type msg struct {
	typ  int
	data string
}

// readAll reads messages until the error.
func readAll(r *Reader) ([]msg, error) {
	var got []msg
	for {
		typ, p, err := r.Next()
		if err != nil {
			return got, err
		}
		got = append(got, msg{typ, string(p)})
	}
}

// TestMessagesSurviveAnyChunking: a stream of messages of every size class
// (empty, the length encodings' edges, around the buffer size, larger than
// it), whole and fragmented with control frames between the fragments,
// arrives intact and in order however the socket's reads cut it, for
// buffer sizes from tiny to the real one; the pings reach the Peer in
// order and the close ends the reading.
func TestMessagesSurviveAnyChunking(t *testing.T) {
	sizes := []int{0, 1, 2, 125, 126, 127, 128, 255, 256, 1000, 4095, 4096, 4097, 16370, 16383, 16384, 16385, 65535, 65536, 70000}
	rng := rand.New(rand.NewPCG(7, 7))
	var stream []byte
	var want []msg
	var wantPings []string
	for i, n := range sizes {
		typ := websocket.BinaryMessage
		if i%2 == 0 {
			typ = websocket.TextMessage
		}
		data := make([]byte, n)
		for j := range data {
			data[j] = byte('a' + (i+j)%26)
		}
		want = append(want, msg{typ, string(data)})
		if i%3 == 1 && n > 2 {
			// In three fragments, a ping between each.
			a, b := n/3, 2*n/3
			stream = rawws.Frame{Opcode: uint8(typ), Payload: data[:a]}.Append(stream)
			ping := fmt.Sprint("p", i)
			wantPings = append(wantPings, ping)
			stream = rawws.Ping([]byte(ping)).Append(stream)
			stream = rawws.Frame{Opcode: rawws.OpContinuation, Payload: data[a:b]}.Append(stream)
			stream = rawws.Pong([]byte("x")).Append(stream)
			stream = rawws.Frame{Fin: true, Opcode: rawws.OpContinuation, Payload: data[b:]}.Append(stream)
			continue
		}
		stream = rawws.Frame{Fin: true, Opcode: uint8(typ), Payload: data}.Append(stream)
	}
	stream = rawws.Close(1000, "bye").Append(stream)
	for _, size := range []int{139, 512, 4096, 16 << 10} {
		for _, chunk := range []int{1, 7, 1500, 1 << 20} {
			t.Run(fmt.Sprintf("buffer=%d/chunks<=%d", size, chunk), func(t *testing.T) {
				src := newChunkSource(bytes.Clone(stream), size, chunk, rng.Uint64())
				peer := &recPeer{}
				r := New(src, peer)
				r.CheckUTF8 = true
				got, err := readAll(r)
				var ce *websocket.CloseError
				if !errors.As(err, &ce) || ce.Code != 1000 || ce.Text != "bye" {
					t.Fatalf("ended with %v, want the close 1000 bye (peer %+v)", err, peer)
				}
				if peer.closeCode != 1000 || peer.failErr != nil {
					t.Fatalf("peer: %+v", peer)
				}
				if len(got) != len(want) {
					t.Fatalf("%d messages, want %d", len(got), len(want))
				}
				for i := range want {
					if got[i] != want[i] {
						t.Fatalf("message %d: type %d, %d bytes; want type %d, %d bytes", i, got[i].typ, len(got[i].data), want[i].typ, len(want[i].data))
					}
				}
				if fmt.Sprint(peer.pings) != fmt.Sprint(wantPings) || len(peer.pongs) != len(wantPings) {
					t.Fatalf("pings %q, pongs %d; want %q", peer.pings, len(peer.pongs), wantPings)
				}
			})
		}
	}
}

// TestSmallMessageReturnedInPlace: a message of one frame lying whole in
// the buffer is the buffer's own bytes (no copy), and its bytes stay
// buffered until Release.
func TestSmallMessageReturnedInPlace(t *testing.T) {
	stream := rawws.Text("world").Append(rawws.Text("hello").Bytes())
	src := newChunkSource(stream, 4096, 1<<20, 1)
	r := New(src, &recPeer{})
	_, p, err := r.Next()
	if err != nil || string(p) != "hello" {
		t.Fatalf("%q, %v", p, err)
	}
	if &p[0] != &src.buf[2] {
		t.Fatal("the message was copied")
	}
	if len(src.Buffered()) != len(stream) {
		t.Fatalf("%d bytes consumed before Release", len(stream)-len(src.Buffered()))
	}
	r.Release()
	if len(src.Buffered()) != len(stream)-7 {
		t.Fatalf("%d bytes left after Release, want %d", len(src.Buffered()), len(stream)-7)
	}
}

// TestViolationsFailWithTheirCode: each violation of RFC 6455 fails the
// connection through the Peer with the code the RFC asks for (1002, 1007,
// 1009) and gorilla's wording, after the messages before it.
func TestViolationsFailWithTheirCode(t *testing.T) {
	for _, tc := range []struct {
		name   string
		frames []rawws.Frame
		limit  int64
		code   int
		want   string
	}{
		{"RSV1", []rawws.Frame{{Fin: true, RSV: rawws.RSV1, Opcode: rawws.OpText, Payload: []byte("x")}}, 0, 1002, "RSV1 set"},
		{"all RSV", []rawws.Frame{{Fin: true, RSV: 7, Opcode: rawws.OpText}}, 0, 1002, "RSV1 set, RSV2 set, RSV3 set"},
		{"fragmented ping", []rawws.Frame{{Opcode: rawws.OpPing, Payload: []byte("a")}}, 0, 1002, "FIN not set on control"},
		{"long ping", []rawws.Frame{rawws.Ping(bytes.Repeat([]byte("p"), 126))}, 0, 1002, "len > 125 for control"},
		{"bad opcode", []rawws.Frame{{Fin: true, Opcode: 3}}, 0, 1002, "bad opcode 3"},
		{"masked", []rawws.Frame{{Fin: true, Opcode: rawws.OpText, Payload: []byte("hi"), Masked: true, MaskKey: [4]byte{1, 2, 3, 4}}}, 0, 1002, "bad MASK"},
		{"lone continuation", []rawws.Frame{{Fin: true, Opcode: rawws.OpContinuation, Payload: []byte("x")}}, 0, 1002, "continuation after FIN"},
		{"message inside a message", []rawws.Frame{{Opcode: rawws.OpText, Payload: []byte("a")}, rawws.Text("b")}, 0, 1002, "data before FIN"},
		{"bad close code", []rawws.Frame{rawws.Close(1005, "")}, 0, 1002, "bad close code 1005"},
		{"close payload of 1 byte", []rawws.Frame{{Fin: true, Opcode: rawws.OpClose, Payload: []byte{3}}}, 0, 1002, "1-byte payload"},
		{"close reason not UTF-8", []rawws.Frame{rawws.Close(1000, "\xff")}, 0, 1002, "invalid utf8 payload in close frame"},
		{"over the limit", []rawws.Frame{rawws.Binary(make([]byte, 101))}, 100, 1009, "read limit"},
		{"fragments over the limit", []rawws.Frame{{Opcode: rawws.OpBinary, Payload: make([]byte, 60)}, {Fin: true, Opcode: rawws.OpContinuation, Payload: make([]byte, 60)}}, 100, 1009, "read limit"},
		{"invalid UTF-8", []rawws.Frame{rawws.Text("ok \xed\xa0\x80")}, 0, 1007, "invalid UTF-8"},
		{"invalid UTF-8 in a first fragment", []rawws.Frame{{Opcode: rawws.OpText, Payload: []byte("\xc0\xaf")}}, 0, 1007, "invalid UTF-8"},
		{"UTF-8 cut off", []rawws.Frame{{Opcode: rawws.OpText, Payload: []byte("caf")}, {Fin: true, Opcode: rawws.OpContinuation, Payload: []byte("\xc3")}}, 0, 1007, "cut off"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream := rawws.Text("before").Append(nil)
			for _, f := range tc.frames {
				stream = f.Append(stream)
			}
			stream = rawws.Text("never").Append(stream) // nothing after the violation is delivered
			peer := &recPeer{}
			r := New(newChunkSource(stream, 4096, 3, 1), peer)
			r.Limit, r.CheckUTF8 = tc.limit, true
			got, err := readAll(r)
			if len(got) != 1 || got[0].data != "before" {
				t.Errorf("delivered %v, want only \"before\"", got)
			}
			if peer.failCode != tc.code || err == nil || !strings.Contains(err.Error(), tc.want) || err != peer.failErr {
				t.Fatalf("failed with %d %v (returned %v), want %d %q", peer.failCode, peer.failErr, err, tc.code, tc.want)
			}
		})
	}
}

// TestEndWithoutCloseIsAbnormal: the socket's end without a close frame,
// between frames or inside one, is a 1006 close error, as gorilla reports
// it; a 64-bit length with the top bit set is gorilla's ErrReadLimit.
func TestEndWithoutCloseIsAbnormal(t *testing.T) {
	whole := rawws.Text("abc").Append(nil)
	for _, cut := range []int{len(whole), len(whole) - 1, 1} {
		r := New(newChunkSource(whole[:cut], 64, 2, 1), &recPeer{})
		_, err := readAll(r)
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseAbnormalClosure {
			t.Errorf("cut at %d: %v, want a 1006 close error", cut, err)
		}
	}
	huge := rawws.Frame{Fin: true, Opcode: rawws.OpBinary, LieLength: true, Length: 1 << 63}.Bytes()
	if _, err := readAll(New(newChunkSource(huge, 64, 64, 1), &recPeer{})); !errors.Is(err, websocket.ErrReadLimit) {
		t.Errorf("top bit set: %v, want ErrReadLimit", err)
	}
}

// TestCheckBoundsAndValidatesGorillasMessages: Check, around a message
// read by gorilla's reader, fails at one byte past the limit (1009) and on
// invalid or cut-off UTF-8 in text (1007), however the reads cut it, and
// returns the reader itself when it has nothing to check.
func TestCheckBoundsAndValidatesGorillasMessages(t *testing.T) {
	read := func(typ int, data string, limit int64) (string, *recPeer, error) {
		var c Check
		peer := &recPeer{}
		r := c.Reset(iotest.OneByteReader(strings.NewReader(data)), peer, typ, limit, true)
		got, err := io.ReadAll(r)
		return string(got), peer, err
	}
	if got, peer, err := read(websocket.TextMessage, "caf\xc3\xa9 ok", 0); err != nil || got != "caf\xc3\xa9 ok" || peer.failCode != 0 {
		t.Fatalf("valid text: %q, %v", got, err)
	}
	for _, tc := range []struct {
		typ   int
		data  string
		limit int64
		code  int
	}{
		{websocket.BinaryMessage, strings.Repeat("x", 101), 100, 1009},
		{websocket.TextMessage, "ok \xed\xa0\x80", 0, 1007},
		{websocket.TextMessage, "caf\xc3", 0, 1007},
	} {
		if _, peer, err := read(tc.typ, tc.data, tc.limit); err == nil || peer.failCode != tc.code {
			t.Errorf("%q limit %d: %v, fail code %d, want %d", tc.data, tc.limit, err, peer.failCode, tc.code)
		}
	}
	src := strings.NewReader("x")
	var c Check
	if r := c.Reset(src, &recPeer{}, websocket.BinaryMessage, 0, true); r != io.Reader(src) {
		t.Error("binary without a limit: wrapped, want the reader itself")
	}
}

package frameread

import (
	"bytes"
	"testing"

	"github.com/wspool/wspool/internal/rawws"
)

// FuzzNext reads arbitrary server bytes through buffers and socket reads of
// fuzzed sizes and checks what is delivered against rawws.DataMessages, the
// reference model of a client without extensions: the same messages, in
// order, whatever the chunking; never a panic, and it always ends.
func FuzzNext(f *testing.F) {
	f.Add(rawws.Text("hello").Bytes(), uint16(64), uint8(3), int64(0))
	f.Add(append(rawws.Frame{Opcode: rawws.OpText, Payload: []byte("frag")}.Bytes(),
		append(rawws.Ping([]byte("p")).Bytes(), rawws.Frame{Fin: true, Opcode: rawws.OpContinuation, Payload: []byte("ment")}.Bytes()...)...), uint16(20), uint8(1), int64(0))
	f.Add(append(rawws.Binary(bytes.Repeat([]byte("x"), 300)).Bytes(), rawws.Close(1000, "").Bytes()...), uint16(139), uint8(200), int64(200))
	f.Add(rawws.Frame{Fin: true, RSV: rawws.RSV1, Opcode: rawws.OpText, Payload: []byte("x")}.Bytes(), uint16(64), uint8(9), int64(0))
	f.Add(rawws.Text("bad \xff").Bytes(), uint16(64), uint8(2), int64(0))
	f.Fuzz(func(t *testing.T, stream []byte, size uint16, chunk uint8, limit int64) {
		bufSize := 139 + int(size)%(16<<10) // a control frame must fit
		if limit < 0 {
			limit = -limit
		}
		limit %= 1 << 20
		want, why := rawws.DataMessages(stream, limit)
		r := New(newChunkSource(bytes.Clone(stream), bufSize, 1+int(chunk), uint64(size)), &recPeer{})
		r.Limit, r.CheckUTF8 = limit, true
		got, err := readAll(r)
		if err == nil {
			t.Fatal("readAll ended without an error")
		}
		if len(got) != len(want) {
			t.Fatalf("%d messages (ended: %v), reference %d (ended: %s)", len(got), err, len(want), why)
		}
		for i := range want {
			if got[i].typ != int(want[i].Opcode) || got[i].data != string(want[i].Data) {
				t.Fatalf("message %d differs from the reference (ended: %v / %s)", i, err, why)
			}
		}
	})
}

package wspool

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// chunkReader returns at most n bytes per Read, the last chunk together with
// io.EOF when eofWithData is set, and an empty read now and then.
type chunkReader struct {
	data        []byte
	n           int
	eofWithData bool
	calls       int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	r.calls++
	if r.calls%7 == 0 {
		return 0, nil
	}
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	k := copy(p, r.data[:min(r.n, len(r.data))])
	r.data = r.data[k:]
	if len(r.data) == 0 && r.eofWithData {
		return k, io.EOF
	}
	return k, nil
}

// TestReadBufferSizes checks what each message size costs: small messages
// stay in the feed's own buffer, a message that exactly fills a size class
// does not double it, and big buffers go back to the pool on release.
func TestReadBufferSizes(t *testing.T) {
	for _, tc := range []struct {
		size, wantCap int
		big           bool
	}{
		{0, minReadBuffer, false},
		{100, minReadBuffer, false},
		{minReadBuffer, minReadBuffer, false},
		{minReadBuffer + 1, 2 * minReadBuffer, false},
		{maxKeptReadBuffer, maxKeptReadBuffer, false},
		{maxKeptReadBuffer + 1, 2 * maxKeptReadBuffer, true},
		{1 << 20, 1 << 20, true},
		{1<<20 + 1, 2 << 20, true},
	} {
		for _, eofWithData := range []bool{false, true} {
			var rb readBuffer
			data := bytes.Repeat([]byte("0123456789abcdef"), tc.size/16+1)[:tc.size]
			got, err := rb.read(&chunkReader{data: data, n: 48 << 10, eofWithData: eofWithData})
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("size %d: %d bytes, err %v", tc.size, len(got), err)
			}
			if cap(got) != tc.wantCap || (rb.big != nil) != tc.big {
				t.Errorf("size %d: cap %d (want %d), big buffer %v (want %v)", tc.size, cap(got), tc.wantCap, rb.big != nil, tc.big)
			}
			rb.release()
			if rb.big != nil || cap(rb.small) > maxKeptReadBuffer {
				t.Errorf("size %d: after release: big %v, small cap %d", tc.size, rb.big != nil, cap(rb.small))
			}
		}
	}
}

// TestReadBufferError returns the reader's error with what was read.
func TestReadBufferError(t *testing.T) {
	boom := errors.New("boom")
	var rb readBuffer
	r := io.MultiReader(bytes.NewReader(make([]byte, 1000)), errReader{boom})
	got, err := rb.read(r)
	if !errors.Is(err, boom) || len(got) != 1000 {
		t.Fatalf("%d bytes, err %v", len(got), err)
	}
	rb.release()
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

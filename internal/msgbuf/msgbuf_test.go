package msgbuf

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

// TestSizes checks what each message size costs: small messages
// stay in the feed's own buffer, a message that exactly fills a size class
// does not double it, and big buffers go back to the pool on release.
func TestSizes(t *testing.T) {
	for _, tc := range []struct {
		size, wantCap int
		big           bool
	}{
		{0, MinSize, false},
		{100, MinSize, false},
		{MinSize, MinSize, false},
		{MinSize + 1, 2 * MinSize, false},
		{MaxKept, MaxKept, false},
		{MaxKept + 1, 2 * MaxKept, true},
		{1 << 20, 1 << 20, true},
		{1<<20 + 1, 2 << 20, true},
	} {
		for _, eofWithData := range []bool{false, true} {
			var rb Buffer
			data := bytes.Repeat([]byte("0123456789abcdef"), tc.size/16+1)[:tc.size]
			got, err := rb.ReadAll(&chunkReader{data: data, n: 48 << 10, eofWithData: eofWithData})
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("size %d: %d bytes, err %v", tc.size, len(got), err)
			}
			if cap(got) != tc.wantCap || rb.Big() != tc.big {
				t.Errorf("size %d: cap %d (want %d), big buffer %v (want %v)", tc.size, cap(got), tc.wantCap, rb.Big(), tc.big)
			}
			rb.Release()
			if rb.Big() || rb.KeptCap() > MaxKept {
				t.Errorf("size %d: after release: big %v, small cap %d", tc.size, rb.Big(), rb.KeptCap())
			}
		}
	}
}

// TestReadAllError returns the reader's error with what was read.
func TestReadAllError(t *testing.T) {
	boom := errors.New("boom")
	var rb Buffer
	r := io.MultiReader(bytes.NewReader(make([]byte, 1000)), errReader{boom})
	got, err := rb.ReadAll(r)
	if !errors.Is(err, boom) || len(got) != 1000 {
		t.Fatalf("%d bytes, err %v", len(got), err)
	}
	rb.Release()
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

package rawws

import (
	"bytes"
	"compress/flate"
	"io"
)

// Deflate compresses one message's payload as permessage-deflate sends it
// (RFC 7692 section 7.2.1): a raw DEFLATE stream ended by a sync flush, whose
// trailing 0x00 0x00 0xff 0xff is removed. Each call starts a fresh context.
// Send the result in a frame with RSV1 set on the first frame.
func Deflate(p []byte) []byte {
	var b bytes.Buffer
	w, _ := flate.NewWriter(&b, flate.BestSpeed)
	_, _ = w.Write(p)
	_ = w.Flush()
	return bytes.TrimSuffix(b.Bytes(), []byte{0, 0, 0xff, 0xff})
}

// Inflate decompresses one permessage-deflate message payload (without
// context takeover), reading at most limit bytes of output.
func Inflate(p []byte, limit int64) ([]byte, error) {
	r := flate.NewReader(io.MultiReader(bytes.NewReader(p), bytes.NewReader([]byte{0, 0, 0xff, 0xff, 1, 0, 0, 0xff, 0xff})))
	defer r.Close()
	return io.ReadAll(io.LimitReader(r, limit))
}

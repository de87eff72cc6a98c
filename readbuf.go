package wspool

import (
	"net"
	"sync"
)

// Pooled read buffering (plain ws:// connections on unix; see readbuf_unix.go).
//
// gorilla gives every connection its own 4 KiB read buffer, half of an idle
// feed's heap. Instead, a pooled connection gets a tiny gorilla buffer
// (pooledGorillaBuffer) and trackedConn reads the socket into a buffer
// borrowed from readBufs, holding it only while it has unread bytes: an idle
// feed waits for readability holding no buffer but gorilla's tiny one, and a busy one
// reads up to 16 KiB per system call.

// pooledReadSize is the size of the shared read buffers.
const pooledReadSize = 16 << 10

// pooledGorillaBuffer is gorilla's read buffer size for a pooled connection
// (gorilla needs at least a control frame's 125 bytes).
const pooledGorillaBuffer = 128

var readBufs = sync.Pool{New: func() any {
	b := make([]byte, pooledReadSize)
	return &b
}}

// pooledState is trackedConn's read buffering state; used by the reader only.
// It is kept small: it lives in every connection, idle ones included.
type pooledState struct {
	fn   func(fd uintptr) bool // the raw read callback, bound once per connection
	buf  *[]byte               // borrowed buffer holding unread bytes [r:w], or nil
	r, w int32                 // within pooledReadSize
	// rawErr is the error of the last raw read (which leaves what it read
	// in buf).
	rawErr error
}

// readBuffered serves p from the borrowed buffer; it returns false when the
// buffer is empty.
func (p *pooledState) readBuffered(dst []byte) (int, bool) {
	if p.buf == nil {
		return 0, false
	}
	n := copy(dst, (*p.buf)[p.r:p.w])
	p.r += int32(n)
	if p.r == p.w {
		readBufs.Put(p.buf)
		p.buf, p.r, p.w = nil, 0, 0
	}
	return n, true
}

// readOpError renames the "raw-read" op of errors from RawConn.Read to
// "read", so that errors read as they would from net.Conn.Read.
func readOpError(err error) error {
	if oe, ok := err.(*net.OpError); ok && oe.Op == "raw-read" {
		e := *oe
		e.Op = "read"
		return &e
	}
	return err
}

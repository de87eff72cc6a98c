package socket

import (
	"net"
	"sync"
	"time"
)

// Pooled read buffering (plain ws:// connections on unix; see pooled_unix.go).
//
// gorilla gives every connection its own 4 KiB read buffer, half of an idle
// feed's heap. Instead, a pooled connection gets a tiny gorilla buffer
// (GorillaBufferSize) and Conn reads the socket into a buffer
// borrowed from readBufs, holding it only while it has unread bytes: an idle
// feed waits for readability holding no buffer but gorilla's tiny one, and a busy one
// reads up to 16 KiB per system call.

// pooledReadSize is the size of the shared read buffers.
const pooledReadSize = 16 << 10

// GorillaBufferSize is gorilla's read buffer size for a pooled connection
// (gorilla needs at least a control frame's 125 bytes).
const GorillaBufferSize = 128

var readBufs = sync.Pool{New: func() any {
	b := make([]byte, pooledReadSize)
	return &b
}}

// pooledState is Conn's read buffering state; used by the reader only.
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
	p.consume(n)
	return n, true
}

// consume drops n unread bytes; an emptied buffer goes back to its pool.
func (p *pooledState) consume(n int) {
	p.r += int32(n)
	if p.r == p.w {
		if len(*p.buf) == pooledReadSize {
			readBufs.Put(p.buf)
		}
		p.buf, p.r, p.w = nil, 0, 0
	}
}

// takeRest puts what followed the handshake response (kept by the response
// check) in front of the read buffer's unread bytes: the check read it
// from the socket before them.
func (t *Conn) takeRest() {
	rest := t.chk.Rest()
	t.chk = nil
	if len(rest) == 0 {
		return
	}
	p := &t.pool
	if p.buf != nil && int(p.r) >= len(rest) {
		p.r -= int32(copy((*p.buf)[int(p.r)-len(rest):], rest))
		return
	}
	var unread []byte
	if p.buf != nil {
		unread = (*p.buf)[p.r:p.w]
	}
	var b *[]byte
	if n := len(rest) + len(unread); n <= pooledReadSize {
		b = readBufs.Get().(*[]byte)
	} else {
		nb := make([]byte, n) // a server's burst with its 101: not pooled
		b = &nb
	}
	k := copy(*b, rest)
	k += copy((*b)[k:], unread)
	if p.buf != nil {
		p.consume(len(unread)) // gives the old buffer back
	}
	p.buf, p.r, p.w = b, 0, int32(k)
}

// Frames is a pooled connection's socket as internal/frameread reads
// it: frames are parsed in the borrowed buffer, in place.
type Frames Conn

func (s *Frames) Buffered() []byte {
	p := &s.pool
	if p.buf == nil {
		return nil
	}
	return (*p.buf)[p.r:p.w]
}

func (s *Frames) Consume(n int) { s.pool.consume(n) }

func (s *Frames) BufferSize() int { return pooledReadSize }

func (s *Frames) Fill(n int) error { return (*Conn)(s).fill(n) }

// Read reads a large payload in place, with nothing buffered.
func (s *Frames) Read(p []byte) (int, error) {
	t := (*Conn)(s)
	n, err := t.Conn.Read(p)
	if n > 0 {
		t.readAt = time.Now()
		t.bytesIn.Add(int64(n))
	}
	return n, err
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

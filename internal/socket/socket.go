// Package socket wraps the TCP (or TLS) connection under each WebSocket
// connection of a feed.
//
// A Conn counts the bytes read (any inbound byte is proof the peer is alive,
// even in the middle of a large, slow message) and when the latest read
// returned data (a message's receive time); it holds the upgrade request's
// writes until the dial reads (one write per handshake step, no bufio.Writer
// per dial) and passes the response through the handshake check. On unix, a
// plain connection reads through pooled buffers: it waits for readability
// holding none and borrows a 16 KiB buffer only while it has unread bytes, so
// an idle feed holds no read buffer at all; internal/frameread parses frames
// in that buffer in place (Frames).
package socket

import (
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wspool/wspool/internal/handshake"
)

// Conn is one connection's socket. Every connection holds one, idle ones
// included: keep it within 128 bytes (TestConnSize).
type Conn struct {
	net.Conn
	bytesIn   atomic.Int64
	handshook atomic.Bool // the upgrade is done: no more cap on bytes read

	rc   syscall.RawConn // set when reads are pooled (pooled.go)
	pool pooledState

	hsw *[]byte // handshake writes not yet sent (borrowed from handshakeBufs)

	// readAt is when the latest read(2) returned data: the receive time of
	// the messages it completed. Written and read by the reader only.
	readAt time.Time

	chk *handshake.Check // checks the 101 response of a ws:// dial
}

// handshakeBufs hold what a dial writes (the upgrade request, a proxy's
// CONNECT, TLS records) until it next reads. net/http's Request.Write would
// otherwise allocate a 4 KiB bufio.Writer per dial, which at 10,000 feeds
// coming back from an outage is 40 MB of garbage.
var handshakeBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, 4096)
	return &b
}}

// Write sends p; before the upgrade completes it buffers p until the next
// Read (every handshake step that writes then waits for an answer).
func (t *Conn) Write(p []byte) (int, error) {
	if t.handshook.Load() {
		return t.Conn.Write(p)
	}
	b := t.pending()
	*b = append(*b, p...)
	return len(p), nil
}

// pending returns the buffer of handshake writes, borrowing one on first use.
func (t *Conn) pending() *[]byte {
	if t.hsw == nil {
		t.hsw = handshakeBufs.Get().(*[]byte)
	}
	return t.hsw
}

// WriteByte and WriteString make Conn an io.ByteWriter and
// io.StringWriter like the bufio.Writer net/http would otherwise wrap it in,
// so that the upgrade request goes into the handshake buffer piece by piece
// without a copy per piece.
func (t *Conn) WriteByte(b byte) error {
	_, err := t.Write([]byte{b})
	return err
}

func (t *Conn) WriteString(s string) (int, error) {
	if t.handshook.Load() {
		return t.Conn.Write([]byte(s))
	}
	b := t.pending()
	*b = append(*b, s...)
	return len(s), nil
}

// flushHandshake sends buffered handshake writes.
func (t *Conn) flushHandshake() error {
	b := t.hsw
	if b == nil {
		return nil
	}
	t.hsw = nil
	_, err := t.Conn.Write(*b)
	if cap(*b) <= 64<<10 {
		*b = (*b)[:0]
		handshakeBufs.Put(b)
	}
	return err
}

// Read reads from the socket and counts the bytes.
func (t *Conn) Read(p []byte) (int, error) {
	if t.chk != nil {
		if !t.chk.Done() {
			return t.chk.Read((*rawTracked)(t), p)
		}
		t.takeRest()
	}
	return t.readSocket(p)
}

// rawTracked reads a Conn below its response check.
type rawTracked Conn

func (r *rawTracked) Read(p []byte) (int, error) { return (*Conn)(r).readSocket(p) }

func (t *Conn) readSocket(p []byte) (int, error) {
	if t.hsw != nil {
		if err := t.flushHandshake(); err != nil {
			return 0, err
		}
	}
	if t.rc != nil {
		// bytesIn and readAt are updated per system call (pooledRead), not
		// per copy out of the shared buffer: gorilla reads its small
		// buffer's worth at a time.
		n, err := t.pooledRead(p)
		if !t.handshook.Load() && t.bytesIn.Load() > handshake.MaxResponseBytes {
			return n, handshake.ErrResponseTooLarge
		}
		return n, err
	}
	n, err := t.Conn.Read(p)
	if n > 0 {
		t.readAt = time.Now()
		if t.bytesIn.Add(int64(n)) > handshake.MaxResponseBytes && !t.handshook.Load() {
			return n, handshake.ErrResponseTooLarge
		}
	}
	return n, err
}

// New wraps nc; with pooled (a plain connection) its reads go through the
// shared buffers where the platform allows.
func New(nc net.Conn, pooled bool) *Conn {
	t := &Conn{Conn: nc}
	if pooled {
		t.enablePooledReads()
	}
	return t
}

// SetCheck makes the upgrade response pass through chk; a pooled connection
// keeps what followed the head for Frames (handshake.Check.KeepRest).
func (t *Conn) SetCheck(chk *handshake.Check) {
	t.chk = chk
	if t.rc != nil {
		chk.KeepRest()
	}
}

// Handshook says the upgrade is done: bytes read are no longer capped, and
// what came with the response is read first.
func (t *Conn) Handshook() {
	t.handshook.Store(true)
	if t.chk != nil && t.chk.Done() {
		t.takeRest()
	}
}

// BytesIn returns the bytes read from the socket so far.
func (t *Conn) BytesIn() int64 { return t.bytesIn.Load() }

// ReadAt returns when the latest read returned data. For the reader only.
func (t *Conn) ReadAt() time.Time { return t.readAt }

// Pooled reports whether reads go through the shared buffers (and Frames
// may be used).
func (t *Conn) Pooled() bool { return t.rc != nil }

// Frames returns the connection as internal/frameread's Source; only for a
// pooled connection.
func (t *Conn) Frames() *Frames { return (*Frames)(t) }

// HoldsBuffer reports whether the connection holds a read buffer (unread
// bytes). For the reader, or tests once it waits.
func (t *Conn) HoldsBuffer() bool { return t.pool.buf != nil }

// NetConn returns the wrapped connection.
func (t *Conn) NetConn() net.Conn { return t.Conn }

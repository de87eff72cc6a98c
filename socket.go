package wspool

import (
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wspool/wspool/internal/handshake"
)

// trackedConn counts bytes read from the socket: any inbound byte is proof the
// peer is alive, even in the middle of a large, slow message.
//
// Every connection holds one, idle ones included: keep it within 128 bytes
// (TestTrackedConnSize).
type trackedConn struct {
	net.Conn
	bytesIn   atomic.Int64
	handshook atomic.Bool // the upgrade is done: no more cap on bytes read

	rc   syscall.RawConn // set when reads are pooled (readbuf.go)
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
func (t *trackedConn) Write(p []byte) (int, error) {
	if t.handshook.Load() {
		return t.Conn.Write(p)
	}
	b := t.pending()
	*b = append(*b, p...)
	return len(p), nil
}

// pending returns the buffer of handshake writes, borrowing one on first use.
func (t *trackedConn) pending() *[]byte {
	if t.hsw == nil {
		t.hsw = handshakeBufs.Get().(*[]byte)
	}
	return t.hsw
}

// WriteByte and WriteString make trackedConn an io.ByteWriter and
// io.StringWriter like the bufio.Writer net/http would otherwise wrap it in,
// so that the upgrade request goes into the handshake buffer piece by piece
// without a copy per piece.
func (t *trackedConn) WriteByte(b byte) error {
	_, err := t.Write([]byte{b})
	return err
}

func (t *trackedConn) WriteString(s string) (int, error) {
	if t.handshook.Load() {
		return t.Conn.Write([]byte(s))
	}
	b := t.pending()
	*b = append(*b, s...)
	return len(s), nil
}

// flushHandshake sends buffered handshake writes.
func (t *trackedConn) flushHandshake() error {
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
func (t *trackedConn) Read(p []byte) (int, error) {
	if t.chk != nil {
		if !t.chk.Done() {
			return t.chk.Read((*rawTracked)(t), p)
		}
		t.takeRest()
	}
	return t.readSocket(p)
}

// rawTracked reads a trackedConn below its response check.
type rawTracked trackedConn

func (r *rawTracked) Read(p []byte) (int, error) { return (*trackedConn)(r).readSocket(p) }

func (t *trackedConn) readSocket(p []byte) (int, error) {
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

// NetConn returns the wrapped connection.
func (t *trackedConn) NetConn() net.Conn { return t.Conn }

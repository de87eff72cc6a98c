//go:build unix

package socket

import (
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

const PooledReadsSupported = true

// enablePooledReads switches t to pooled read buffering if its socket allows
// raw reads.
func (t *Conn) enablePooledReads() {
	sc, ok := t.Conn.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	t.rc = rc
	t.pool.fn = t.rawRead
}

// pooledRead reads through a borrowed buffer: it waits for readability
// holding none, then reads as much as one buffer holds. It adds what each
// system call read to bytesIn.
func (t *Conn) pooledRead(p []byte) (int, error) {
	if n, ok := t.pool.readBuffered(p); ok {
		return n, nil
	}
	if len(p) >= pooledReadSize {
		n, err := t.Conn.Read(p) // large enough to read into directly
		if n > 0 {
			t.readAt = time.Now()
		}
		t.bytesIn.Add(int64(n))
		return n, err
	}
	if err := t.rc.Read(t.pool.fn); err != nil {
		return 0, readOpError(err)
	}
	if err := t.pool.rawErr; err != nil {
		t.pool.rawErr = nil
		return 0, err
	}
	t.readAt = time.Now()
	n, _ := t.pool.readBuffered(p)
	return n, nil
}

// fill reads until at least n bytes (at most the buffer's size) are
// buffered, borrowing a buffer once the socket is readable; unread bytes
// that would not leave room for n are moved to the buffer's front.
func (t *Conn) fill(n int) error {
	p := &t.pool
	for p.buf == nil || int(p.w-p.r) < n {
		if p.buf != nil && int(p.r)+n > len(*p.buf) {
			p.w = int32(copy(*p.buf, (*p.buf)[p.r:p.w]))
			p.r = 0
		}
		if err := t.rc.Read(p.fn); err != nil {
			return readOpError(err)
		}
		if err := p.rawErr; err != nil {
			p.rawErr = nil
			return err
		}
		t.readAt = time.Now()
	}
	return nil
}

// rawRead is the RawConn.Read callback: one read(2) into the buffer after
// its unread bytes, or into a pooled buffer it borrows if t.pool holds
// none, which it keeps holding what was read (or gives back, with the error
// in t.pool.rawErr); on EAGAIN it gives a borrowed buffer back and asks to
// wait for readability.
func (t *Conn) rawRead(fd uintptr) bool {
	p := &t.pool
	b := p.buf
	borrowed := b == nil
	if borrowed {
		b = readBufs.Get().(*[]byte)
	}
	for {
		n, err := syscall.Read(int(fd), (*b)[p.w:])
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			if borrowed {
				readBufs.Put(b)
			}
			return false
		case err != nil:
			if borrowed {
				readBufs.Put(b)
			}
			p.rawErr = &net.OpError{Op: "read", Net: t.RemoteAddr().Network(), Source: t.LocalAddr(), Addr: t.RemoteAddr(), Err: os.NewSyscallError("read", err)}
		case n == 0:
			if borrowed {
				readBufs.Put(b)
			}
			p.rawErr = io.EOF
		default:
			p.buf = b
			p.w += int32(n)
			t.bytesIn.Add(int64(n))
		}
		return true
	}
}

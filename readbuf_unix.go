//go:build unix

package wspool

import (
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

const pooledReadsSupported = true

// enablePooledReads switches t to pooled read buffering if its socket allows
// raw reads.
func (t *trackedConn) enablePooledReads() {
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
func (t *trackedConn) pooledRead(p []byte) (int, error) {
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

// rawRead is the RawConn.Read callback: one read(2) into a pooled buffer,
// which it leaves in t.pool holding what was read (or gives back, with the
// error in t.pool.rawErr); on EAGAIN it gives the buffer back and asks to
// wait for readability. It runs only when t.pool holds no buffer.
func (t *trackedConn) rawRead(fd uintptr) bool {
	b := readBufs.Get().(*[]byte)
	for {
		n, err := syscall.Read(int(fd), *b)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			readBufs.Put(b)
			return false
		case err != nil:
			readBufs.Put(b)
			t.pool.rawErr = &net.OpError{Op: "read", Net: t.RemoteAddr().Network(), Source: t.LocalAddr(), Addr: t.RemoteAddr(), Err: os.NewSyscallError("read", err)}
		case n == 0:
			readBufs.Put(b)
			t.pool.rawErr = io.EOF
		default:
			t.pool.buf, t.pool.r, t.pool.w = b, 0, int32(n)
			t.bytesIn.Add(int64(n))
		}
		return true
	}
}

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
	b, n, err := t.pool.got, t.pool.n, t.pool.rawErr
	t.pool.got, t.pool.rawErr = nil, nil
	if err != nil {
		return 0, err
	}
	t.readAt = time.Now()
	m := copy(p, (*b)[:n])
	t.pool.keep(b, m, n)
	return m, nil
}

// rawRead is the RawConn.Read callback: one read(2) into a pooled buffer;
// on EAGAIN it gives the buffer back and asks to wait for readability.
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
			t.pool.got, t.pool.n = b, n
			t.bytesIn.Add(int64(n))
		}
		return true
	}
}

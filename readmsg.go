package wspool

import (
	"io"
	"math/bits"
	"sync"
)

// Message buffers.
//
// A feed reads each message into its own buffer, reused from message to
// message, so that a stream of small messages allocates nothing in wspool.
// That buffer grows by doubling up to maxKeptReadBuffer and is kept.
// A message larger than that is read into a buffer from bigBufs, a pool per
// power-of-two size shared by every feed, which goes back to its pool once
// the message has been handled: a feed that saw one huge message does not
// pin its buffer, and a stream of huge messages reuses the same few buffers
// (the runtime empties the pools when they go unused through two garbage
// collections). The read limit bounds the largest buffer: gorilla rejects a
// frame whose length would take the message over it (close 1009) before
// reading its payload.

// maxKeptReadBuffer is the largest read buffer a feed keeps between messages.
const maxKeptReadBuffer = 256 << 10

// minReadBuffer is the size of a feed's first read buffer.
const minReadBuffer = 512

// bigBufs[k] holds buffers of exactly 1<<k bytes, for k > log2(maxKeptReadBuffer).
var bigBufs [64]sync.Pool

// readBuffer is the reader goroutine's message buffer.
type readBuffer struct {
	small []byte  // kept between messages, at most maxKeptReadBuffer
	big   *[]byte // the message's buffer from bigBufs, nil if it fit in small
	hint  int     // size class of the last big message (bigBufs index), 0 if none
	probe [8]byte // a look past a full buffer (small: this struct lives as long as the connection)
}

// read reads the message from r into rb's buffer and returns it; the
// result is valid until release.
func (rb *readBuffer) read(r io.Reader) ([]byte, error) {
	if rb.small == nil {
		rb.small = make([]byte, 0, minReadBuffer)
	}
	buf := rb.small[:0]
	for {
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return buf, err
		}
		if len(buf) < cap(buf) {
			continue
		}
		// Full: the message may end exactly here. Look before growing,
		// which at a power of two would double the memory for nothing.
		n, err = r.Read(rb.probe[:])
		if n > 0 {
			buf = append(rb.grow(buf), rb.probe[:n]...)
		}
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return buf, err
		}
	}
}

// grow returns a buffer with buf's bytes and at least twice its capacity.
func (rb *readBuffer) grow(buf []byte) []byte {
	want := 2 * cap(buf)
	if want <= maxKeptReadBuffer {
		nb := make([]byte, len(buf), want)
		copy(nb, buf)
		rb.small = nb[:0]
		return nb
	}
	k := bits.Len(uint(want - 1)) // the class holding want bytes
	var b *[]byte
	if rb.hint > k {
		// The last big message needed more: take such a buffer if one is
		// free, and skip the copies of doubling step by step.
		if p, ok := bigBufs[rb.hint].Get().(*[]byte); ok {
			b, k = p, rb.hint
		}
	}
	if b == nil {
		if p, ok := bigBufs[k].Get().(*[]byte); ok {
			b = p
		} else {
			nb := make([]byte, 1<<k)
			b = &nb
		}
	}
	nb := append((*b)[:0], buf...)
	if rb.big != nil {
		bigBufs[bits.Len(uint(cap(*rb.big)))-1].Put(rb.big)
	}
	rb.big, rb.hint = b, k
	return nb
}

// release ends the message returned by read: a big buffer goes back to its
// pool.
func (rb *readBuffer) release() {
	if b := rb.big; b != nil {
		rb.big = nil
		bigBufs[bits.Len(uint(cap(*b)))-1].Put(b)
	}
}

// Package msgbuf holds a connection's incoming message while it is read.
//
// A Buffer is reused from message to message, so that a stream of small
// messages allocates nothing. It grows by doubling up to MaxKept and keeps
// that memory. A message larger than MaxKept goes into a buffer from a pool
// per power-of-two size shared by every connection, which goes back to its
// pool on Release: a connection that saw one huge message does not pin its
// buffer, and a stream of huge messages reuses the same few buffers (the
// runtime empties the pools when they go unused through two garbage
// collections). The caller's read limit bounds the largest buffer.
package msgbuf

import (
	"io"
	"math/bits"
	"sync"
)

// MaxKept is the largest buffer a Buffer keeps between messages.
const MaxKept = 256 << 10

// MinSize is the size of a Buffer's first allocation.
const MinSize = 512

// bigBufs[k] holds buffers of exactly 1<<k bytes, for k > log2(MaxKept).
var bigBufs [64]sync.Pool

// Buffer is one reader's message buffer; the zero value is ready. It is
// used by one goroutine.
type Buffer struct {
	buf   []byte  // the message so far; its array is small's or big's
	small []byte  // kept between messages, at most MaxKept
	big   *[]byte // the message's buffer from bigBufs, nil if it fit in small
	hint  int     // size class of the last big message (bigBufs index), 0 if none
	probe []byte  // a look past a full buffer (ReadAll): heap memory, as the reader it is passed to may keep it
}

// Bytes returns the message so far, valid until Release or the next Room.
func (b *Buffer) Bytes() []byte { return b.buf }

// Len returns the length of the message so far.
func (b *Buffer) Len() int { return len(b.buf) }

// Room returns free space after the message for at most want more bytes,
// growing the buffer if it has none: at least one byte and, on growth,
// room for min(want, the message so far) at least (doubling). Bytes
// written into it count once passed to Commit.
func (b *Buffer) Room(want int) []byte {
	if b.buf == nil {
		if b.small == nil {
			b.small = make([]byte, 0, MinSize)
		}
		b.buf = b.small[:0]
	}
	if len(b.buf) == cap(b.buf) {
		b.grow(len(b.buf) + min(want, max(len(b.buf), 1)))
	}
	free := b.buf[len(b.buf):cap(b.buf)]
	if len(free) > want {
		free = free[:want]
	}
	return free
}

// Commit adds the first n bytes of the last Room to the message.
func (b *Buffer) Commit(n int) { b.buf = b.buf[:len(b.buf)+n] }

// Append adds p to the message.
func (b *Buffer) Append(p []byte) {
	for len(p) > 0 {
		n := copy(b.Room(len(p)), p)
		b.Commit(n)
		p = p[n:]
	}
}

// ReadAll reads r to its end (io.EOF, not an error) as the message and
// returns it; the result is valid until Release. On an error it returns
// what was read with the error.
func (b *Buffer) ReadAll(r io.Reader) ([]byte, error) {
	b.Reset()
	for {
		room := b.Room(MaxKept)
		n, err := r.Read(room)
		b.Commit(n)
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return b.buf, err
		}
		if len(b.buf) < cap(b.buf) {
			continue
		}
		// Full: the message may end exactly here. Look before growing,
		// which at a power of two would double the memory for nothing.
		if b.probe == nil {
			b.probe = make([]byte, 8)
		}
		n, err = r.Read(b.probe)
		if n > 0 {
			b.Append(b.probe[:n])
		}
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return b.buf, err
		}
	}
}

// Reset starts a new message in the same memory (a big buffer is kept
// until Release).
func (b *Buffer) Reset() {
	if b.buf != nil {
		b.buf = b.buf[:0]
	}
}

// grow replaces the buffer by one of at least want bytes and twice its
// capacity, holding the message so far.
func (b *Buffer) grow(want int) {
	want = max(want, 2*cap(b.buf))
	if want <= MaxKept {
		nb := make([]byte, len(b.buf), want)
		copy(nb, b.buf)
		b.small, b.buf = nb[:0], nb
		return
	}
	k := bits.Len(uint(want - 1)) // the class holding want bytes
	var big *[]byte
	if b.hint > k {
		// The last big message needed more: take such a buffer if one is
		// free, and skip the copies of doubling step by step.
		if p, ok := bigBufs[b.hint].Get().(*[]byte); ok {
			big, k = p, b.hint
		}
	}
	if big == nil {
		if p, ok := bigBufs[k].Get().(*[]byte); ok {
			big = p
		} else {
			nb := make([]byte, 1<<k)
			big = &nb
		}
	}
	nb := append((*big)[:0], b.buf...)
	if b.big != nil {
		bigBufs[bits.Len(uint(cap(*b.big)))-1].Put(b.big)
	}
	b.big, b.hint, b.buf = big, k, nb
}

// Release ends the message: a big buffer goes back to its pool.
func (b *Buffer) Release() {
	if big := b.big; big != nil {
		b.big = nil
		bigBufs[bits.Len(uint(cap(*big)))-1].Put(big)
		b.buf = nil
	}
	b.Reset()
}

// Big reports whether the message is in a pooled big buffer.
func (b *Buffer) Big() bool { return b.big != nil }

// KeptCap is the capacity of the memory kept between messages.
func (b *Buffer) KeptCap() int { return cap(b.small) }

// Package inqueue is the bounded queue between a feed's reader and its
// handler: a FIFO of owned messages bounded by count and by payload bytes,
// with an overflow policy (Block, DropOldest, DropNewest), counters for what
// it dropped, its depth and high-water mark, and a wait for the handler to
// finish what is queued.
//
// One goroutine pushes (the feed's reader) and one pops (the handler's), and
// any goroutine may read the counters. The message type is a parameter; the
// queue reaches a message's payload through the accessor given to New, to
// measure it and to copy it when the message is queued.
//
// The copies go into buffers from pools per power-of-two size shared by every
// queue, and back once the handler is done with the message (Delivered) or
// the message is dropped: a stream through a queue allocates nothing per
// message, and the runtime empties the pools when they go unused.
package inqueue

import (
	"context"
	"math/bits"
	"sync"
	"sync/atomic"
)

// Payload buffers: bufPools[k] holds buffers of 1<<k bytes, for minClass <=
// k <= maxClass; a larger payload gets a buffer of its own.
const (
	minClass = 6  // 64 B
	maxClass = 20 // 1 MiB
)

var bufPools [maxClass + 1]sync.Pool

// getBuf returns a buffer of length n and its pool box (nil if not pooled).
func getBuf(n int) ([]byte, *[]byte) {
	if n == 0 {
		return nil, nil
	}
	k := max(bits.Len(uint(n-1)), minClass)
	if k > maxClass {
		return make([]byte, n), nil
	}
	box, _ := bufPools[k].Get().(*[]byte)
	if box == nil {
		b := make([]byte, 1<<k)
		box = &b
	}
	return (*box)[:n], box
}

// putBuf gives a buffer back to its pool.
func putBuf(box *[]byte) {
	if box != nil {
		bufPools[bits.Len(uint(cap(*box)))-1].Put(box)
	}
}

// Policy says what a full queue does with an arriving message.
type Policy int

const (
	// Block makes Push wait for room.
	Block Policy = iota
	// DropOldest discards queued messages, oldest first, to make room.
	DropOldest
	// DropNewest discards the arriving message.
	DropNewest
)

// Config bounds a queue.
type Config struct {
	// Messages is the most messages queued at once (> 0).
	Messages int
	// Bytes is the most payload bytes queued at once (> 0). A message larger
	// than Bytes is still accepted when the queue is empty.
	Bytes int
	// Policy applies when either bound is reached.
	Policy Policy
}

// Queue is a bounded FIFO of owned messages of type M with an overflow
// policy.
type Queue[M any] struct {
	cfg  Config
	data func(*M) *[]byte // the message's payload

	mu    sync.Mutex
	buf   []M       // ring
	boxes []*[]byte // the pool box of each queued message's payload (getBuf)
	cur   *[]byte   // the box of the message the handler has (Delivered gives it back)
	// in is the message being pushed, the pusher's own (one goroutine
	// pushes): the payload accessor is called only on messages in the
	// queue's memory, so that none escapes to the heap per push.
	in       M
	head, n  int
	bytes    int
	closed   bool
	dropping bool // reported ErrSlowConsumer; re-armed when the queue empties

	notEmpty chan struct{} // capacity 1
	notFull  chan struct{} // capacity 1
	drained  chan struct{} // capacity 1: the handler finished and the queue is empty
	busy     bool          // the handler is running on a popped message

	depth, highWater atomic.Int64
	dropped          atomic.Int64
}

// New returns an empty queue bounded by cfg; data returns a pointer to a
// message's payload.
func New[M any](cfg Config, data func(*M) *[]byte) *Queue[M] {
	return &Queue[M]{
		cfg:      cfg,
		data:     data,
		buf:      make([]M, cfg.Messages),
		boxes:    make([]*[]byte, cfg.Messages),
		notEmpty: make(chan struct{}, 1),
		notFull:  make(chan struct{}, 1),
		drained:  make(chan struct{}, 1),
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (q *Queue[M]) fullLocked(size int) bool {
	return q.n == len(q.buf) || (q.n > 0 && q.bytes+size > q.cfg.Bytes)
}

func (q *Queue[M]) pushLocked(m M, box *[]byte) {
	i := (q.head + q.n) % len(q.buf)
	q.buf[i], q.boxes[i] = m, box
	q.n++
	q.bytes += len(*q.data(&q.buf[i]))
	d := int64(q.n)
	q.depth.Store(d)
	if d > q.highWater.Load() {
		q.highWater.Store(d)
	}
	signal(q.notEmpty)
}

// popLocked removes the oldest message; its payload's box is returned
// with it, for the caller to give back once the payload is no longer used.
func (q *Queue[M]) popLocked() (M, *[]byte) {
	m, box := q.buf[q.head], q.boxes[q.head]
	q.bytes -= len(*q.data(&q.buf[q.head]))
	var zero M
	q.buf[q.head], q.boxes[q.head] = zero, nil
	q.head = (q.head + 1) % len(q.buf)
	q.n--
	q.depth.Store(int64(q.n))
	if q.n == 0 {
		q.dropping = false
	}
	return m, box
}

// Push adds a copy of m (its payload is the pusher's buffer, borrowed). The
// copy is made only once the message has room, so a pusher waiting under
// Block holds nothing beyond its own buffer, and a message DropNewest drops is
// never copied. Under Block it waits for room until stop is closed (shutdown)
// or the queue is closed, and then returns false; nothing else ends the wait
// (a feed's reader keeps waiting when its connection dies meanwhile: the
// message was received and must not be lost). startedDropping reports that
// this push is the first to drop since the queue was last empty (the moment
// to report a slow consumer once).
//
// Only one goroutine pushes, so room found stays room while the copy is made
// outside the lock (the popper can only make more).
func (q *Queue[M]) Push(m M, stop <-chan struct{}) (ok, startedDropping bool) {
	q.in = m
	defer q.clearIn()
	size := len(*q.data(&q.in))
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return false, false
		}
		if !q.fullLocked(size) {
			q.mu.Unlock()
			return q.commit(), false
		}
		switch q.cfg.Policy {
		case DropNewest:
			q.dropped.Add(1)
			started := !q.dropping
			q.dropping = true
			q.mu.Unlock()
			return true, started
		case DropOldest:
			for q.n > 0 && q.fullLocked(size) {
				_, box := q.popLocked()
				putBuf(box)
				q.dropped.Add(1)
			}
			started := !q.dropping
			q.dropping = true
			q.mu.Unlock()
			return q.commit(), started
		}
		q.mu.Unlock()
		select {
		case <-q.notFull:
		case <-stop:
			return false, false
		}
	}
}

func (q *Queue[M]) clearIn() {
	var zero M
	q.in = zero
}

// commit copies the message being pushed into the queue, which has room for
// it; false if the queue was closed meanwhile.
func (q *Queue[M]) commit() bool {
	p := q.data(&q.in)
	b, box := getBuf(len(*p))
	copy(b, *p)
	*p = b
	m := q.in
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		putBuf(box)
		return false
	}
	q.pushLocked(m, box)
	return true
}

// Pop waits for a message until ctx ends or the queue is closed and empty.
// The caller may use the message's payload until it calls Delivered, which
// it calls when it has finished with it.
func (q *Queue[M]) Pop(ctx context.Context) (M, bool) {
	var zero M
	for {
		q.mu.Lock()
		if q.n > 0 {
			m, box := q.popLocked()
			q.busy, q.cur = true, box
			q.mu.Unlock()
			signal(q.notFull)
			return m, true
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return zero, false
		}
		select {
		case <-q.notEmpty:
		case <-ctx.Done():
			return zero, false
		}
	}
}

// Close stops pushes (a Push waiting for room returns false); Pop drains
// what is left and then reports false.
func (q *Queue[M]) Close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	signal(q.notEmpty)
	signal(q.notFull)
}

// DiscardAll empties the queue at shutdown, counting what is left as dropped.
func (q *Queue[M]) DiscardAll() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.n > 0 {
		_, box := q.popLocked()
		putBuf(box)
		q.dropped.Add(1)
	}
}

// Delivered marks the end of the handler's work on a popped message: its
// payload's buffer goes back to its pool.
func (q *Queue[M]) Delivered() {
	q.mu.Lock()
	putBuf(q.cur)
	q.busy, q.cur = false, nil
	empty := q.n == 0
	q.mu.Unlock()
	if empty {
		signal(q.drained)
	}
}

// WaitDrained waits until the queue is empty and the handler idle (no
// popped message awaits Delivered); false if ctx ended first.
func (q *Queue[M]) WaitDrained(ctx context.Context) bool {
	for {
		q.mu.Lock()
		idle := q.n == 0 && !q.busy
		q.mu.Unlock()
		if idle {
			return true
		}
		select {
		case <-q.drained:
		case <-ctx.Done():
			return false
		}
	}
}

// Dropped counts the messages dropped so far: by the policy, by DiscardAll,
// and by CountDropped.
func (q *Queue[M]) Dropped() int64 { return q.dropped.Load() }

// CountDropped counts a message the caller gave up on (one it could not push
// at shutdown, say) as dropped.
func (q *Queue[M]) CountDropped() { q.dropped.Add(1) }

// Depth is the number of messages queued now.
func (q *Queue[M]) Depth() int { return int(q.depth.Load()) }

// HighWater is the largest Depth so far.
func (q *Queue[M]) HighWater() int { return int(q.highWater.Load()) }

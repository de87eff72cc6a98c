package wspool

import (
	"context"
	"sync"
	"sync/atomic"
)

// OverflowPolicy says what a feed's inbound queue does when it is full.
type OverflowPolicy int

const (
	// Block stops the feed's reader until the handler makes room: nothing is
	// lost, and TCP flow control pushes back on the server. Time the reader
	// spends blocked is never blamed on the peer by the liveness checks.
	Block OverflowPolicy = iota
	// DropOldest discards the oldest queued message to make room.
	DropOldest
	// DropNewest discards the arriving message.
	DropNewest
)

// String returns "block", "drop-oldest" or "drop-newest".
func (p OverflowPolicy) String() string {
	switch p {
	case Block:
		return "block"
	case DropOldest:
		return "drop-oldest"
	case DropNewest:
		return "drop-newest"
	}
	return "OverflowPolicy(?)"
}

// Queue configures a bounded queue between a feed's reader and its handler,
// which lets the reader keep reading (and answering pings) while the handler
// works through a burst.
type Queue struct {
	// Messages is the most messages queued at once. Required (> 0).
	Messages int
	// Bytes is the most payload bytes queued at once; 0 means Messages ×
	// 64 KiB. A single message larger than Bytes is still accepted when the
	// queue is empty, so the bound is Bytes plus one message (itself bounded by
	// the read limit). Beyond the queue, a feed holds the message its handler
	// is working on and the reader's buffer: under Block the reader waits for
	// room holding only its buffer, and copies the message into the queue once
	// it fits.
	Bytes int
	// Policy applies when either bound is reached. Default Block.
	Policy OverflowPolicy
	// DrainBeforeReconnect makes the feed wait, after a connection ends, until
	// the handler has finished every queued message before it dials again. By
	// default the queue survives reconnects: the next dial, request func and
	// OnConnect may run while messages of the old connection are still being
	// handled, so a resume cursor computed by the handler can lag behind what
	// was received. Set it when OnConnect or the request func resumes from
	// state the handler keeps.
	DrainBeforeReconnect bool
}

// WithQueue puts a bounded queue between the feed's reader and its handler.
// Without it (the default) the handler runs on the reader's goroutine: no
// copy, no extra goroutine, and the same lossless backpressure as Block with
// a queue of zero. With a queue, every queued message is a copy the handler
// owns, and the handler runs on a second goroutine of the feed.
//
// When a feed starts dropping, an error wrapping ErrSlowConsumer is reported
// through WithOnError and the logger, once until the queue next drains; Stats
// count every dropped message.
func WithQueue(q Queue) Option {
	return func(c *config) {
		if q.Messages <= 0 {
			c.errorf("queue needs Messages > 0, got %d", q.Messages)
			return
		}
		if q.Bytes < 0 {
			c.errorf("queue Bytes must not be negative, got %d", q.Bytes)
			return
		}
		if q.Policy < Block || q.Policy > DropNewest {
			c.errorf("unknown overflow policy %d", q.Policy)
			return
		}
		if q.Bytes == 0 {
			q.Bytes = q.Messages * (64 << 10)
		}
		c.queue = &q
	}
}

// inQueue is a bounded FIFO of owned messages with an overflow policy.
type inQueue struct {
	cfg Queue

	mu       sync.Mutex
	buf      []Message // ring
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

func newInQueue(q Queue) *inQueue {
	return &inQueue{
		cfg:      q,
		buf:      make([]Message, q.Messages),
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

func (q *inQueue) fullLocked(size int) bool {
	return q.n == len(q.buf) || (q.n > 0 && q.bytes+size > q.cfg.Bytes)
}

func (q *inQueue) pushLocked(m Message) {
	q.buf[(q.head+q.n)%len(q.buf)] = m
	q.n++
	q.bytes += len(m.Data)
	d := int64(q.n)
	q.depth.Store(d)
	if d > q.highWater.Load() {
		q.highWater.Store(d)
	}
	signal(q.notEmpty)
}

func (q *inQueue) popLocked() Message {
	m := q.buf[q.head]
	q.buf[q.head] = Message{}
	q.head = (q.head + 1) % len(q.buf)
	q.n--
	q.bytes -= len(m.Data)
	q.depth.Store(int64(q.n))
	if q.n == 0 {
		q.dropping = false
	}
	return m
}

// push adds a copy of m (m.Data is the reader's buffer, borrowed). The copy
// is made only once the message has room, so a reader waiting under Block
// holds nothing beyond its own read buffer, and a message DropNewest drops is
// never copied. Under Block it waits for room until stop is closed (shutdown),
// and then returns false. It keeps waiting when the connection dies
// meanwhile: the message was received and must not be lost between messages
// the reader still finds buffered. It reports whether the feed just started
// dropping.
//
// Only the feed's reader pushes, so room found stays room while the copy is
// made outside the lock (the handler can only pop).
func (q *inQueue) push(m Message, stop <-chan struct{}) (ok, startedDropping bool) {
	size := len(m.Data)
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return false, false
		}
		if !q.fullLocked(size) {
			q.mu.Unlock()
			return q.commit(m), false
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
				q.popLocked()
				q.dropped.Add(1)
			}
			started := !q.dropping
			q.dropping = true
			q.mu.Unlock()
			return q.commit(m), started
		}
		q.mu.Unlock()
		select {
		case <-q.notFull:
		case <-stop:
			return false, false
		}
	}
}

// commit copies m into the queue, which has room for it; false if the queue
// was closed meanwhile.
func (q *inQueue) commit(m Message) bool {
	m.Data = append([]byte(nil), m.Data...)
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return false
	}
	q.pushLocked(m)
	return true
}

// pop waits for a message until ctx ends or the queue is closed and empty.
func (q *inQueue) pop(ctx context.Context) (Message, bool) {
	for {
		q.mu.Lock()
		if q.n > 0 {
			m := q.popLocked()
			q.busy = true
			q.mu.Unlock()
			signal(q.notFull)
			return m, true
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return Message{}, false
		}
		select {
		case <-q.notEmpty:
		case <-ctx.Done():
			return Message{}, false
		}
	}
}

// close stops pushes; pop drains what is left and then reports false.
func (q *inQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	signal(q.notEmpty)
	signal(q.notFull)
}

// discardAll empties the queue at shutdown, counting what is left as dropped.
func (q *inQueue) discardAll() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.n > 0 {
		q.popLocked()
		q.dropped.Add(1)
	}
}

// delivered marks the end of the handler's work on a popped message.
func (q *inQueue) delivered() {
	q.mu.Lock()
	q.busy = false
	empty := q.n == 0
	q.mu.Unlock()
	if empty {
		signal(q.drained)
	}
}

// waitDrained waits until the queue is empty and the handler idle; false if
// ctx ended first.
func (q *inQueue) waitDrained(ctx context.Context) bool {
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

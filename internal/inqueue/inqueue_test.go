package inqueue_test

import (
	"context"
	"testing"
	"time"

	"github.com/wspool/wspool/internal/inqueue"
)

type msg struct {
	id   int
	data []byte
}

func newQueue(messages, bytes int, p inqueue.Policy) *inqueue.Queue[msg] {
	return inqueue.New(inqueue.Config{Messages: messages, Bytes: bytes, Policy: p}, func(m *msg) *[]byte { return &m.data })
}

// wait bounds waits for events that must happen; generous for a loaded machine.
const wait = 30 * time.Second

func push(t *testing.T, q *inqueue.Queue[msg], id, size int) (ok, started bool) {
	t.Helper()
	return q.Push(msg{id: id, data: make([]byte, size)}, nil)
}

func popIDs(t *testing.T, q *inqueue.Queue[msg], n int) []int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	var ids []int
	for range n {
		m, ok := q.Pop(ctx)
		if !ok {
			t.Fatalf("Pop failed after %v", ids)
		}
		q.Delivered()
		ids = append(ids, m.id)
	}
	return ids
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestQueuedMessagesAreOwnedCopiesInOrder: Push copies the payload (the
// pusher reuses its buffer), Pop returns messages in order, and the depth
// and high-water mark follow.
func TestQueuedMessagesAreOwnedCopiesInOrder(t *testing.T) {
	q := newQueue(4, 1<<10, inqueue.Block)
	buf := []byte("a")
	for i := range 3 {
		buf[0] = byte('a' + i)
		if ok, _ := q.Push(msg{id: i, data: buf}, nil); !ok {
			t.Fatal("Push failed")
		}
	}
	buf[0] = 'z'
	if q.Depth() != 3 || q.HighWater() != 3 {
		t.Errorf("depth %d, high water %d", q.Depth(), q.HighWater())
	}
	ctx := context.Background()
	for i := range 3 {
		m, ok := q.Pop(ctx)
		if !ok || m.id != i || string(m.data) != string(rune('a'+i)) {
			t.Fatalf("pop %d: %+v %v", i, m, ok)
		}
		q.Delivered()
	}
	if q.Depth() != 0 || q.HighWater() != 3 || q.Dropped() != 0 {
		t.Errorf("depth %d, high water %d, dropped %d", q.Depth(), q.HighWater(), q.Dropped())
	}
}

// TestDropNewestDropsTheArrivingMessage: on either bound the arriving
// message goes; startedDropping is reported once until the queue empties.
func TestDropNewestDropsTheArrivingMessage(t *testing.T) {
	q := newQueue(2, 100, inqueue.DropNewest)
	push(t, q, 1, 10)
	push(t, q, 2, 10)
	if ok, started := push(t, q, 3, 10); !ok || !started {
		t.Errorf("count bound: ok %v, started %v", ok, started)
	}
	if ok, started := push(t, q, 4, 10); !ok || started {
		t.Errorf("second drop: ok %v, started %v (reported again)", ok, started)
	}
	if got := popIDs(t, q, 2); !equal(got, []int{1, 2}) {
		t.Errorf("popped %v", got)
	}
	// Empty again: the next drop is reported again. The byte bound: 60 + 50 > 100.
	push(t, q, 5, 60)
	if ok, started := push(t, q, 6, 50); !ok || !started {
		t.Errorf("byte bound after draining: ok %v, started %v", ok, started)
	}
	if q.Dropped() != 3 {
		t.Errorf("dropped %d, want 3", q.Dropped())
	}
	if got := popIDs(t, q, 1); !equal(got, []int{5}) {
		t.Errorf("popped %v", got)
	}
}

// TestDropOldestMakesRoomFromTheFront: as many of the oldest go as the
// arriving message needs.
func TestDropOldestMakesRoomFromTheFront(t *testing.T) {
	q := newQueue(8, 100, inqueue.DropOldest)
	for i := 1; i <= 4; i++ {
		push(t, q, i, 25)
	}
	if ok, started := push(t, q, 5, 60); !ok || !started {
		t.Fatalf("ok %v, started %v", ok, started)
	}
	if q.Dropped() != 3 || q.Depth() != 2 {
		t.Errorf("dropped %d, depth %d; want 3 and 2", q.Dropped(), q.Depth())
	}
	if got := popIDs(t, q, 2); !equal(got, []int{4, 5}) {
		t.Errorf("popped %v, want [4 5]", got)
	}
}

// TestOversizedMessageFitsAnEmptyQueue: a message over Bytes is taken when
// nothing is queued (the bound is Bytes plus one message), and blocks the
// next one until it is popped.
func TestOversizedMessageFitsAnEmptyQueue(t *testing.T) {
	q := newQueue(4, 10, inqueue.DropNewest)
	if ok, started := push(t, q, 1, 1000); !ok || started {
		t.Fatalf("ok %v, started %v", ok, started)
	}
	if _, started := push(t, q, 2, 1); !started {
		t.Error("a message after the oversized one was not dropped")
	}
	if got := popIDs(t, q, 1); !equal(got, []int{1}) {
		t.Errorf("popped %v", got)
	}
}

// TestBlockWaitsForRoom: under Block a push into a full queue returns once
// the popper makes room, and nothing is lost or reordered.
func TestBlockWaitsForRoom(t *testing.T) {
	q := newQueue(1, 100, inqueue.Block)
	push(t, q, 1, 1)
	done := make(chan bool, 1)
	go func() {
		ok, _ := q.Push(msg{id: 2, data: []byte("x")}, nil)
		done <- ok
	}()
	select {
	case <-done:
		t.Fatal("Push into a full Block queue returned before any Pop")
	default:
	}
	if got := popIDs(t, q, 1); !equal(got, []int{1}) {
		t.Fatalf("popped %v", got)
	}
	select {
	case ok := <-done:
		if !ok {
			t.Fatal("Push failed")
		}
	case <-time.After(wait):
		t.Fatal("Push still waiting after a Pop made room")
	}
	if got := popIDs(t, q, 1); !equal(got, []int{2}) || q.Dropped() != 0 {
		t.Errorf("popped %v, dropped %d", got, q.Dropped())
	}
}

// TestBlockedPushEndsWithStopOrClose: a push waiting for room gives up,
// reporting false, when stop is closed or the queue is closed.
func TestBlockedPushEndsWithStopOrClose(t *testing.T) {
	for _, viaClose := range []bool{false, true} {
		q := newQueue(1, 100, inqueue.Block)
		push(t, q, 1, 1)
		stop := make(chan struct{})
		done := make(chan bool, 1)
		go func() {
			ok, _ := q.Push(msg{id: 2}, stop)
			done <- ok
		}()
		if viaClose {
			q.Close()
		} else {
			close(stop)
		}
		select {
		case ok := <-done:
			if ok {
				t.Errorf("close %v: Push reported success", viaClose)
			}
		case <-time.After(wait):
			t.Fatalf("close %v: Push still waiting", viaClose)
		}
	}
}

// TestCloseLetsPopDrainThenEnd: after Close, Pop returns what is queued,
// then false; Push fails.
func TestCloseLetsPopDrainThenEnd(t *testing.T) {
	q := newQueue(4, 100, inqueue.Block)
	push(t, q, 1, 1)
	push(t, q, 2, 1)
	q.Close()
	if ok, _ := push(t, q, 3, 1); ok {
		t.Error("Push after Close succeeded")
	}
	if got := popIDs(t, q, 2); !equal(got, []int{1, 2}) {
		t.Errorf("popped %v", got)
	}
	if _, ok := q.Pop(context.Background()); ok {
		t.Error("Pop on a closed, empty queue succeeded")
	}
}

// TestPopWaitsForAPushOrTheContext: Pop returns a message pushed while it
// waits, and false when its context ends.
func TestPopWaitsForAPushOrTheContext(t *testing.T) {
	q := newQueue(4, 100, inqueue.Block)
	got := make(chan int, 1)
	go func() {
		m, _ := q.Pop(context.Background())
		got <- m.id
	}()
	push(t, q, 7, 1)
	select {
	case id := <-got:
		if id != 7 {
			t.Errorf("popped %d", id)
		}
	case <-time.After(wait):
		t.Fatal("Pop did not see the push")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, ok := q.Pop(ctx); ok {
		t.Error("Pop with an ended context succeeded")
	}
}

// TestWaitDrainedWaitsForTheHandler: the queue is drained only when it is
// empty and the popped message is delivered.
func TestWaitDrainedWaitsForTheHandler(t *testing.T) {
	q := newQueue(4, 100, inqueue.Block)
	if !q.WaitDrained(context.Background()) {
		t.Fatal("an unused queue is not drained")
	}
	push(t, q, 1, 1)
	if _, ok := q.Pop(context.Background()); !ok {
		t.Fatal("Pop failed")
	}
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if q.WaitDrained(ended) {
		t.Error("drained while the handler still works on a message")
	}
	done := make(chan bool, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		done <- q.WaitDrained(ctx)
	}()
	q.Delivered()
	if !<-done {
		t.Error("not drained after Delivered")
	}
}

// TestDiscardAllCountsLeftovers: what is left at shutdown, and what the
// caller gave up on, count as dropped.
func TestDiscardAllCountsLeftovers(t *testing.T) {
	q := newQueue(4, 100, inqueue.Block)
	push(t, q, 1, 1)
	push(t, q, 2, 1)
	q.DiscardAll()
	q.CountDropped()
	if q.Dropped() != 3 || q.Depth() != 0 {
		t.Errorf("dropped %d, depth %d", q.Dropped(), q.Depth())
	}
}

// TestPayloadBuffersAreRecycled: a stream through the queue allocates
// nothing per message once warm (the copies' buffers come back at Delivered
// and when messages are dropped), and a message's payload stays intact until
// Delivered even while others are pushed.
func TestPayloadBuffersAreRecycled(t *testing.T) {
	q := newQueue(8, 1<<20, inqueue.DropOldest)
	ctx := context.Background()
	src := make([]byte, 4096)
	for i := range src {
		src[i] = byte(i)
	}
	m := msg{data: src}
	allocs := testing.AllocsPerRun(1000, func() {
		q.Push(m, nil)
		got, _ := q.Pop(ctx)
		q.Delivered()
		_ = got
	})
	if allocs > 0 {
		t.Errorf("%.1f allocations per message through the queue, want 0", allocs)
	}
	// A popped payload is not reused before Delivered.
	q.Push(msg{id: 1, data: []byte("first message")}, nil)
	first, _ := q.Pop(ctx)
	for i := 0; i < 20; i++ { // more than the queue holds: DropOldest recycles
		q.Push(msg{id: 2, data: []byte("other message")}, nil)
	}
	if string(first.data) != "first message" {
		t.Fatalf("payload changed before Delivered: %q", first.data)
	}
	q.Delivered()
}

package wspool_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/wstest"
)

// TestBlockQueueHoldsNoUncountedCopy: with 4 MiB messages and a Block queue
// of one message, a stalled handler holds one message, the queue one, and
// the reader, waiting for room, only its read buffer: three messages' worth
// of live heap (the documented bound), not a fourth copy made before the
// wait.
func TestBlockQueueHoldsNoUncountedCopy(t *testing.T) {
	const size, n = 4 << 20, 6
	payload := seqMessage(0, size) // one buffer, allocated before the baseline
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		for i := 0; i < n; i++ {
			if err := c.WriteMessage(websocket.BinaryMessage, payload); err != nil {
				return
			}
		}
		wstest.Drain(c, nil)
	})
	runtime.GC()
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)

	entered := make(chan struct{}, n)
	release := make(chan struct{})
	c, err := wspool.NewClient(srv.URL("/"), func(ctx context.Context, m wspool.Message) error {
		entered <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		runtime.KeepAlive(m.Data) // the handler's message is live while it works
		return nil
	}, wspool.WithQueue(wspool.Queue{Messages: 1, Bytes: 64 << 10, Policy: wspool.Block}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	recv(t, entered, 10*time.Second, "the handler to get the first message")
	waitFor(t, 10*time.Second, "one message queued", func() bool { return c.Stats().QueueDepth == 1 })
	// The reader now reads the third message and waits for room. Sample the
	// live heap until it settles (the reader's buffer grows while it reads).
	var live, prev int64
	var ms runtime.MemStats
	settled := false
	for i := 0; i < 100 && !settled; i++ {
		// Two collections: free buffers waiting in sync.Pools (the read
		// buffer's size classes) survive one, and are not held by anyone.
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		live = int64(ms.HeapAlloc) - int64(base.HeapAlloc)
		settled = i > 0 && live-prev < 256<<10 && prev-live < 256<<10
		prev = live
		time.Sleep(50 * time.Millisecond) // sampling interval, not a wait for an event
	}
	close(release)
	runtime.KeepAlive(payload)
	waitFor(t, 20*time.Second, "every message delivered", func() bool { return c.Stats().Delivered == n })
	t.Logf("live heap while blocked: +%.1f MiB (messages of %d MiB, settled %v)", float64(live)/(1<<20), size>>20, settled)
	if !settled {
		t.Fatal("the live heap did not settle")
	}
	if limit := int64(3*size + 1<<20); live > limit {
		t.Fatalf("live heap grew by %.1f MiB while the reader waited for room, want at most %.1f MiB (handler's, queued and reader's message)",
			float64(live)/(1<<20), float64(limit)/(1<<20))
	}
}

// TestDrainDeliversMessageWaitingForQueueRoom: a message the reader
// accepted (the sequence advanced past it) and holds while it waits for room
// in a full Block queue is delivered by Drain, not given up: LastSequence
// never runs ahead of what the handler got.
//
// Found by the all-features soak
// (WSPOOL_SOAK_SEED=9 -short, now and then: "f002 (queue=block-2 ... sequence
// resume server-skips): after Drain the reader accepted number 246, the
// handler got 245"). With WithSequence and a full Block queue, the reader
// has accepted the next message (checkSequence advanced the stream) and
// waits for room; Drain (or Close) cancels the feed's context and push gives
// the message up: it is neither delivered nor counted in Stats.Dropped, and
// LastSequence is past it, so a resume from LastSequence (e.g. by the next
// process) skips it. Drain's doc: "what arrives after [our close frame] is
// read but not delivered" — this message arrived before it.
func TestDrainDeliversMessageWaitingForQueueRoom(t *testing.T) {
	closed := make(chan struct{}, 4)
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		for i := 1; i <= 3; i++ {
			if err := c.WriteMessage(websocket.TextMessage, []byte(strconv.Itoa(i))); err != nil {
				return
			}
		}
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				closed <- struct{}{}
				return
			}
		}
	})
	release := make(chan struct{})
	var last atomic.Int64
	c, err := wspool.NewClient(srv.URL("/"), func(ctx context.Context, m wspool.Message) error {
		n, _ := strconv.ParseInt(string(m.Data), 10, 64)
		if n == 1 {
			<-release
		}
		last.Store(n)
		return nil
	},
		wspool.WithQueue(wspool.Queue{Messages: 1, Policy: wspool.Block}),
		wspool.WithSequence(wspool.Sequence{Extract: func(m wspool.Message) (string, uint64, bool) {
			v, err := strconv.ParseUint(string(m.Data), 10, 64)
			return "", v, err == nil
		}}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	// 1 in the handler, 2 queued, 3 accepted and waiting for room.
	waitFor(t, 10*time.Second, "message 3 accepted", func() bool { n, _ := c.LastSequence(""); return n == 3 })
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := c.Drain(ctx)
		<-c.Done()
		done <- err
	}()
	select { // the server read our close frame: the drain is under way
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("no close frame 10s after Drain")
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Drain: %v", err)
	}
	s := c.Stats()
	if n, _ := c.LastSequence(""); int64(n) != last.Load() {
		t.Fatalf("after Drain: LastSequence %d, the handler got up to %d, Dropped %d (delivered %d of %d read)", n, last.Load(), s.Dropped, s.Delivered, s.MessagesIn)
	}
}

// TestCloseLeavesNoMessageInTheQueue: a message the reader pushes as the
// queue's handler goroutine exits at shutdown is delivered or counted as
// dropped, never left queued (QueueDepth 0 after Close).
//
// Found by the all-features soak in CI
// (WSPOOL_SOAK_SEED=706433758 WSPOOL_SOAK=60s: "f045 (queue=block-2 ...
// standby ...): the connections won 272, 271 data messages handled, 0
// dropped; Stats: delivered 271, queue depth 1, state closed"). At shutdown
// the queue's handler goroutine saw its context end, discarded what was
// queued and exited, but the queue stayed open: a reader that had accepted a
// message just before (the sequence check, the duplicate filter or the merge
// of standby connections run between the reader's shutdown check and the
// push) then pushed it into a queue nobody pops. The message was neither
// delivered nor counted in Stats.Dropped, and QueueDepth stayed 1 after Run
// returned. Here the sequence's Extract holds the reader between the two
// until the queue's handler is gone.
func TestCloseLeavesNoMessageInTheQueue(t *testing.T) {
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		for i := 1; i <= 2; i++ {
			if err := c.WriteMessage(websocket.TextMessage, []byte(strconv.Itoa(i))); err != nil {
				return
			}
		}
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	})
	inExtract, release := make(chan struct{}), make(chan struct{})
	handled := make(chan int, 2)
	c, err := wspool.NewClient(srv.URL("/"), func(ctx context.Context, m wspool.Message) error {
		n, _ := strconv.Atoi(string(m.Data))
		handled <- n
		return nil
	},
		wspool.WithQueue(wspool.Queue{Messages: 2, Policy: wspool.Block}),
		wspool.WithSequence(wspool.Sequence{Extract: func(m wspool.Message) (string, uint64, bool) {
			v, err := strconv.ParseUint(string(m.Data), 10, 64)
			if v == 2 {
				close(inExtract)
				<-release
			}
			return "", v, err == nil
		}}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	if n := recv(t, handled, 10*time.Second, "message 1"); n != 1 {
		t.Fatalf("handler got %d first", n)
	}
	recv(t, inExtract, 10*time.Second, "the reader in Extract for message 2")
	closed := make(chan error, 1)
	go func() {
		err := c.Close()
		<-c.Done()
		closed <- err
	}()
	// Close has cancelled the feed: the queue's handler goroutine exits.
	waitFor(t, 10*time.Second, "the queue's handler goroutine to exit", func() bool {
		return !strings.Contains(allStacks(), "wspool.(*Client).deliverQueued")
	})
	close(release)
	recv(t, closed, 10*time.Second, "Close to return")
	s := c.Stats()
	if s.QueueDepth != 0 || s.Delivered+s.Dropped != 2 {
		t.Fatalf("after Close: queue depth %d, delivered %d, dropped %d; want every one of the 2 messages delivered or dropped, none left queued", s.QueueDepth, s.Delivered, s.Dropped)
	}
}

// heapPeak samples HeapAlloc until stopped and returns the peak.
func heapPeak() (stop func() uint64) {
	done := make(chan struct{})
	result := make(chan uint64)
	go func() {
		var peak uint64
		var ms runtime.MemStats
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
			select {
			case <-done:
				result <- peak
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 { close(done); return <-result }
}

func seqMessage(i int, size int) []byte {
	b := make([]byte, size)
	binary.BigEndian.PutUint64(b, uint64(i))
	return b
}

func TestQueuePolicies(t *testing.T) {
	const n, size = 4000, 8 << 10 // 32 MiB in total
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		for i := 0; i < n; i++ {
			if err := c.WriteMessage(websocket.BinaryMessage, seqMessage(i, size)); err != nil {
				return
			}
		}
		wstest.Drain(c, nil)
	})
	for _, policy := range []wspool.OverflowPolicy{wspool.Block, wspool.DropOldest, wspool.DropNewest} {
		t.Run(policy.String(), func(t *testing.T) {
			runtime.GC()
			var base runtime.MemStats
			runtime.ReadMemStats(&base)
			peak := heapPeak()

			var mu sync.Mutex
			var got []int
			slow := make(chan error, 4)
			c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
				time.Sleep(100 * time.Microsecond) // the handler is far slower than the producer
				mu.Lock()
				got = append(got, int(binary.BigEndian.Uint64(m.Data)))
				mu.Unlock()
				return nil
			},
				wspool.WithQueue(wspool.Queue{Messages: 64, Bytes: 256 << 10, Policy: policy}),
				wspool.WithOnError(func(_ string, err error) {
					select { // reported again each time the queue drained and overflowed anew
					case slow <- err:
					default:
					}
				}))
			if err != nil {
				t.Fatal(err)
			}
			runClient(t, c)
			delivered := func() int { mu.Lock(); defer mu.Unlock(); return len(got) }
			waitFor(t, 30*time.Second, "delivered + dropped = sent", func() bool {
				s := c.Stats()
				return int64(delivered())+s.Dropped == n && s.QueueDepth == 0
			})
			heap := peak()
			s := c.Stats()
			t.Logf("%v: delivered %d, dropped %d, high water %d, heap peak +%.1f MiB over %d MiB sent",
				policy, delivered(), s.Dropped, s.QueueHighWater, float64(int64(heap)-int64(base.HeapAlloc))/(1<<20), n*size>>20)
			if s.QueueHighWater > 64 {
				t.Fatalf("queue high water %d over its bound 64", s.QueueHighWater)
			}
			if grow := int64(heap) - int64(base.HeapAlloc); grow > 16<<20 {
				t.Fatalf("heap grew by %d MiB with a 256 KiB queue", grow>>20)
			}
			mu.Lock()
			defer mu.Unlock()
			for i := 1; i < len(got); i++ {
				if got[i] <= got[i-1] {
					t.Fatalf("out of order at %d: %d after %d", i, got[i], got[i-1])
				}
			}
			switch policy {
			case wspool.Block:
				if s.Dropped != 0 || len(got) != n {
					t.Fatalf("block lost messages: delivered %d dropped %d", len(got), s.Dropped)
				}
			case wspool.DropOldest:
				if s.Dropped == 0 || got[len(got)-1] != n-1 {
					t.Fatalf("drop-oldest: dropped %d, last delivered %d (want the newest, %d)", s.Dropped, got[len(got)-1], n-1)
				}
			case wspool.DropNewest:
				if s.Dropped == 0 || got[0] != 0 {
					t.Fatalf("drop-newest: dropped %d, first delivered %d", s.Dropped, got[0])
				}
			}
			if policy != wspool.Block {
				if err := recv(t, slow, time.Second, "slow consumer report"); !errors.Is(err, wspool.ErrSlowConsumer) {
					t.Fatalf("reported %v, want ErrSlowConsumer", err)
				}
			}
		})
	}
}

func TestBlockBackpressureStallsServer(t *testing.T) {
	const n, size = 1000, 64 << 10 // 64 MiB: far more than the socket buffers
	for _, queued := range []bool{false, true} {
		t.Run(map[bool]string{false: "direct", true: "queue"}[queued], func(t *testing.T) {
			var written atomic.Int64
			srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
				for i := 0; i < n; i++ {
					if err := c.WriteMessage(websocket.BinaryMessage, seqMessage(i, size)); err != nil {
						return
					}
					written.Add(1)
				}
				wstest.Drain(c, nil)
			})
			gate := make(chan struct{})
			var got atomic.Int64
			var order atomic.Bool
			opts := []wspool.Option{wspool.WithPingInterval(200 * time.Millisecond), wspool.WithPongTimeout(200 * time.Millisecond)}
			if queued {
				opts = append(opts, wspool.WithQueue(wspool.Queue{Messages: 16, Policy: wspool.Block}))
			}
			c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
				<-gate
				if int64(binary.BigEndian.Uint64(m.Data)) != got.Load() {
					order.Store(true)
				}
				got.Add(1)
				return nil
			}, opts...)
			if err != nil {
				t.Fatal(err)
			}
			runClient(t, c)
			// The server's writes stall: its count stops moving well short of n.
			last, since := int64(-1), time.Now()
			waitFor(t, 20*time.Second, "the server's writes to stall", func() bool {
				w := written.Load()
				if w != last {
					last, since = w, time.Now()
					return false
				}
				return w > 0 && time.Since(since) > 500*time.Millisecond
			})
			stalledAt := written.Load()
			if stalledAt >= n {
				t.Fatalf("server wrote all %d messages: no backpressure", n)
			}
			t.Logf("server stalled after %d of %d messages (%d MiB)", stalledAt, n, stalledAt*size>>20)
			close(gate)
			waitFor(t, 30*time.Second, "all messages delivered", func() bool { return got.Load() == n })
			if order.Load() {
				t.Fatal("messages out of order")
			}
			if s := c.Stats(); s.Dropped != 0 || s.Disconnects != 0 {
				t.Fatalf("dropped %d, disconnects %d while held back", s.Dropped, s.Disconnects)
			}
		})
	}
}

package wspool_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/wstest"
)

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

func TestSendsAcrossServerRestart(t *testing.T) {
	var mu sync.Mutex
	var received []int
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		for {
			_, data, err := c.ReadMessage()
			if err != nil {
				return
			}
			i, _ := strconv.Atoi(string(data))
			mu.Lock()
			received = append(received, i)
			mu.Unlock()
		}
	})
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil,
		wspool.WithSendBuffer(wspool.SendBuffer{Messages: 5000}),
		wspool.WithBackoff(10*time.Millisecond, 50*time.Millisecond), ev.option())
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	ev.waitCount(t, wspool.StateConnected, 1, 5*time.Second)

	const n = 3000
	outcome := make([]error, n)
	reported := make([]atomic.Int32, n)
	var outMu sync.Mutex
	var pending sync.WaitGroup
	pending.Add(n)
	senderDone := make(chan struct{})
	go func() {
		defer close(senderDone)
		for i := 0; i < n; i++ {
			c.SendAsync(wspool.TextMessage, []byte(strconv.Itoa(i)), func(err error) {
				if reported[i].Add(1) == 1 {
					outMu.Lock()
					outcome[i] = err
					outMu.Unlock()
					pending.Done()
				}
			})
			if i%10 == 0 {
				time.Sleep(time.Millisecond) // pace the sender across the restarts
			}
		}
	}()

	for restart := 1; restart <= 2; restart++ {
		mu.Lock()
		at := len(received)
		mu.Unlock()
		waitFor(t, 10*time.Second, "the server to receive more", func() bool { mu.Lock(); defer mu.Unlock(); return len(received) > at+200 })
		srv.StopListening()
		srv.GoingAway()
		waitFor(t, 10*time.Second, "connections to finish closing", func() bool { return srv.Open() == 0 })
		waitFor(t, 10*time.Second, "sends to pile up in the buffer", func() bool { return c.Stats().SendBuffered > 50 })
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		ev.waitCount(t, wspool.StateConnected, restart+1, 10*time.Second)
	}
	<-senderDone
	waitDone := make(chan struct{})
	go func() { pending.Wait(); close(waitDone) }()
	recv(t, waitDone, 20*time.Second, "every send to be reported")
	// Everything reported written must reach the server: wait for the tail.
	outMu.Lock()
	ok, failed := 0, 0
	for _, err := range outcome {
		if err == nil {
			ok++
		} else {
			failed++
		}
	}
	outMu.Unlock()
	waitFor(t, 10*time.Second, "the server to read every written message", func() bool { mu.Lock(); defer mu.Unlock(); return len(received) >= ok })

	mu.Lock()
	defer mu.Unlock()
	seen := map[int]bool{}
	for k, i := range received {
		if seen[i] {
			t.Fatalf("message %d received twice", i)
		}
		seen[i] = true
		if k > 0 && i <= received[k-1] {
			t.Fatalf("order broken: %d after %d", i, received[k-1])
		}
		if outcome[i] != nil {
			t.Fatalf("message %d received but reported failed: %v", i, outcome[i])
		}
	}
	for i, err := range outcome {
		if err == nil && !seen[i] {
			t.Fatalf("message %d reported written but never received", i)
		}
		if reported[i].Load() != 1 {
			t.Fatalf("message %d reported %d times", i, reported[i].Load())
		}
	}
	if got := c.Stats().SendFailed; got != int64(failed) {
		t.Fatalf("Stats.SendFailed %d, %d failures reported", got, failed)
	}
	t.Logf("%d sends across 2 graceful restarts: %d written and received, %d reported failed, 0 lost, 0 duplicated", n, ok, failed)
}

func TestSendBufferLimits(t *testing.T) {
	c, err := wspool.NewClient("ws://127.0.0.1:1/", nil,
		wspool.WithSendBuffer(wspool.SendBuffer{Messages: 2, MaxAge: 100 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	results := make(chan error, 3)
	for i := 0; i < 3; i++ {
		c.SendAsync(wspool.TextMessage, []byte("x"), func(err error) { results <- err })
	}
	if err := recv(t, results, time.Second, "overflow"); !errors.Is(err, wspool.ErrSendBufferFull) {
		t.Fatalf("third send: %v, want ErrSendBufferFull", err)
	}
	for i := 0; i < 2; i++ {
		if err := recv(t, results, 2*time.Second, "expiry"); !errors.Is(err, wspool.ErrSendExpired) {
			t.Fatalf("buffered send: %v, want ErrSendExpired", err)
		}
	}
	if err := c.Send(context.Background(), wspool.TextMessage, []byte("y"), wspool.NoReplay()); !errors.Is(err, wspool.ErrNotConnected) {
		t.Fatalf("NoReplay while disconnected: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := c.Send(ctx, wspool.TextMessage, []byte("z")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send with a short ctx: %v", err)
	}
	if s := c.Stats(); s.SendBuffered != 0 {
		t.Fatalf("withdrawn send still buffered: %d", s.SendBuffered)
	}
	// Close fails what is buffered.
	c.SendAsync(wspool.TextMessage, []byte("w"), func(err error) { results <- err })
	stop := runClient(t, c)
	stop()
	if err := recv(t, results, 2*time.Second, "close"); !errors.Is(err, wspool.ErrClosed) {
		t.Fatalf("buffered send at Close: %v", err)
	}
}

func TestKickAfterSubscribeBacksOff(t *testing.T) {
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		c.ReadMessage() // the subscription, then kick
	})
	subscribe := wspool.WithOnConnect(func(ctx context.Context, cn *wspool.Conn) error {
		return cn.Send(ctx, wspool.TextMessage, []byte("sub"))
	})
	const initial = 20 * time.Millisecond
	waits := func(ev *events) []time.Duration {
		var w []time.Duration
		for _, sc := range ev.snapshot() {
			if sc.To == wspool.StateBackingOff {
				w = append(w, sc.Wait)
			}
		}
		return w
	}
	t.Run("default", func(t *testing.T) {
		ev := newEvents()
		c, _ := wspool.NewClient(srv.URL("/"), nil, subscribe, ev.option(),
			wspool.WithBackoff(initial, 10*time.Second), wspool.WithMinUptime(time.Second))
		runClient(t, c)
		ev.waitCount(t, wspool.StateBackingOff, 8, 20*time.Second)
		w := waits(ev)
		// 20ms·1.5^7 ≈ 342ms ±50%: the 8th wait is at least 171ms, the first at most 30ms.
		if w[7] < 150*time.Millisecond || w[7] < 4*w[0] {
			t.Fatalf("waits did not grow against a kicking server: %v", w)
		}
	})
	t.Run("HealthOnConnect", func(t *testing.T) {
		ev := newEvents()
		c, _ := wspool.NewClient(srv.URL("/"), nil, subscribe, ev.option(),
			wspool.WithBackoff(initial, 10*time.Second), wspool.WithHealthyWhen(wspool.HealthOnConnect))
		runClient(t, c)
		ev.waitCount(t, wspool.StateBackingOff, 8, 20*time.Second)
		for _, w := range waits(ev) {
			if w > initial*3/2 {
				t.Fatalf("with HealthOnConnect every subscribe resets the backoff, got waits %v", waits(ev))
			}
		}
	})
}

func TestReconnectStormIsCapped(t *testing.T) {
	feeds := 2000
	if testing.Short() {
		feeds = 300
	}
	raiseFDLimit(t, uint64(2*feeds+200))
	srv := newServer(t, wstest.Drain)
	srv.SetHandshakeDelay(2 * time.Millisecond)
	const capDials = 8
	p, err := wspool.NewPool(wspool.WithMaxConcurrentDials(capDials),
		wspool.WithBackoff(100*time.Millisecond, time.Second), wspool.WithPingInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < feeds; i++ {
		if _, err := p.Add(srv.URL(fmt.Sprintf("/f%d", i)), nil); err != nil {
			t.Fatal(err)
		}
	}
	runPool(t, p)
	waitFor(t, 60*time.Second, "all feeds connected", func() bool { return p.Stats().Connected == feeds })

	srv.Stop()
	waitFor(t, 30*time.Second, "all feeds to notice", func() bool { return p.Stats().Connected == 0 })
	srv.ResetPeak()
	start := time.Now()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "all feeds back", func() bool { return p.Stats().Connected == feeds })
	peak := srv.PeakConcurrentHandshakes()
	t.Logf("%d feeds back %v after the server returned; peak concurrent handshakes %d (cap %d)", feeds, time.Since(start).Round(time.Millisecond), peak, capDials)
	if peak > capDials {
		t.Fatalf("server saw %d concurrent handshakes, cap %d", peak, capDials)
	}
}

// publisher is an upstream that publishes one global sequence to every
// subscribed connection, like a real market-data feed.
type publisher struct {
	mu   sync.Mutex
	subs map[chan uint64]struct{}
	seq  uint64
}

func newPublisher(t *testing.T) *publisher {
	p := &publisher{subs: map[chan uint64]struct{}{}}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
			}
			p.mu.Lock()
			p.seq++
			for ch := range p.subs {
				select {
				case ch <- p.seq:
				default:
					t.Error("subscriber too slow; the test would see a gap")
				}
			}
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return p
}

func (p *publisher) handler(c *websocket.Conn, _ *http.Request) {
	if _, _, err := c.ReadMessage(); err != nil { // "sub"
		return
	}
	ch := make(chan uint64, 100000)
	p.mu.Lock()
	p.subs[ch] = struct{}{}
	p.mu.Unlock()
	// Acknowledge only once subscribed: what is published from now on reaches this connection.
	if err := c.WriteMessage(websocket.TextMessage, []byte("subscribed")); err != nil {
		return
	}
	defer func() { p.mu.Lock(); delete(p.subs, ch); p.mu.Unlock() }()
	readerDone := make(chan struct{})
	go func() { wstest.Drain(c, nil); close(readerDone) }()
	for {
		select {
		case <-readerDone:
			return
		case s := <-ch:
			if err := c.WriteMessage(websocket.TextMessage, strconv.AppendUint(nil, s, 10)); err != nil {
				return
			}
		}
	}
}

func TestRotationWithoutGap(t *testing.T) {
	pub := newPublisher(t)
	srv := newServer(t, pub.handler)
	var mu sync.Mutex
	var seqs []uint64
	last := func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		if len(seqs) == 0 {
			return 0
		}
		return seqs[len(seqs)-1]
	}
	c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
		s, _ := strconv.ParseUint(string(m.Data), 10, 64)
		mu.Lock()
		seqs = append(seqs, s)
		mu.Unlock()
		return nil
	},
		// Gap-free rotation needs OnConnect to return only once the upstream
		// confirmed the subscription.
		wspool.WithOnConnect(func(ctx context.Context, cn *wspool.Conn) error {
			if err := cn.Send(ctx, wspool.TextMessage, []byte("sub")); err != nil {
				return err
			}
			m, err := cn.ReadMessage(ctx)
			if err != nil {
				return err
			}
			if string(m.Data) != "subscribed" {
				return fmt.Errorf("unexpected %q", m.Data)
			}
			return nil
		}),
		wspool.WithMaxConnectionAge(300*time.Millisecond),
		wspool.WithDuplicateFilter(func(m wspool.Message) bool {
			s, _ := strconv.ParseUint(string(m.Data), 10, 64)
			return s <= last()
		}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	waitFor(t, 20*time.Second, "3 rotations", func() bool { return c.Stats().Rotations >= 3 })
	target := last() + 50
	waitFor(t, 5*time.Second, "more messages after the last rotation", func() bool { return last() > target })
	s := c.Stats()
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			t.Fatalf("sequence broken at %d: %d after %d (rotations %d)", i, seqs[i], seqs[i-1], s.Rotations)
		}
	}
	if s.Disconnects != s.Rotations || s.State != wspool.StateConnected {
		t.Fatalf("stats %+v: every disconnect should be a rotation", s)
	}
	t.Logf("%d rotations, %d messages in sequence, %d duplicates dropped", s.Rotations, len(seqs), s.Duplicates)
}

// TestSendFromDoneFuncKeepsCallOrder: a Send made while the send buffer's
// flusher runs a SendAsync done func (from that func, as its doc allows) is
// written after the messages buffered before it, in call order.
//
// Found by the all-features soak
// (WSPOOL_SOAK_SEED=22 and 33 at WSPOOL_SOAK=60s: "server: conn 876 of feed
// 56: send s37 arrived after s40", a SendAsync sender with a send buffer).
// While the flusher runs a SendAsync done func it gives the writer role up,
// with messages still queued behind it; a Send made meanwhile (here from that
// done func, as its doc allows; in the soak from another goroutine) finds a
// live connection and nobody writing, and writes at once, ahead of the
// queued messages that were sent before it. Send's doc promises the messages
// of a feed are written in the order Send and SendAsync were called.
func TestSendFromDoneFuncKeepsCallOrder(t *testing.T) {
	got := make(chan string, 16)
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		for {
			_, m, err := c.ReadMessage()
			if err != nil {
				return
			}
			got <- string(m)
		}
	})
	c, err := wspool.NewClient(srv.URL("/"), nil, wspool.WithSendBuffer(wspool.SendBuffer{Messages: 8}))
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	// Not connected yet: both wait in the send buffer, in this order.
	c.SendAsync(wspool.TextMessage, []byte("1"), func(error) {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			// Called after "2": must be written after it.
			_ = c.Send(ctx, wspool.TextMessage, []byte("3"))
		})
	})
	c.SendAsync(wspool.TextMessage, []byte("2"), nil)
	runClient(t, c)
	var order []string
	for len(order) < 3 {
		select {
		case m := <-got:
			order = append(order, m)
		case <-time.After(10 * time.Second):
			t.Fatalf("server got %v, want 3 messages", order)
		}
	}
	if order[0] != "1" || order[1] != "2" || order[2] != "3" {
		t.Fatalf("server got %v, want [1 2 3]: a Send made after SendAsync(\"2\") overtook it", order)
	}
}

package wspool_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/wstest"
)

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

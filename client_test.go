package wspool_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
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

// subscribeThenCount waits for a "sub" message, then sends "conn-seq" messages
// until the connection ends.
func subscribeThenCount(connID *atomic.Int64) wstest.ConnHandler {
	return func(c *websocket.Conn, _ *http.Request) {
		id := connID.Add(1)
		_, msg, err := c.ReadMessage()
		if err != nil || string(msg) != "sub" {
			return
		}
		go wstest.Drain(c, nil) // answer pings and close frames
		for i := 1; ; i++ {
			if err := c.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, "%d-%d", id, i)); err != nil {
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
}

func TestReconnectRunsOnConnectBeforeMessages(t *testing.T) {
	var connID atomic.Int64
	srv := newServer(t, subscribeThenCount(&connID))

	var mu sync.Mutex
	var log []string // "onconnect" and the connection id of each message
	got := make(chan string, 1000)
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/feed"), func(_ context.Context, m wspool.Message) error {
		conn, _, _ := strings.Cut(string(m.Data), "-")
		mu.Lock()
		log = append(log, conn)
		mu.Unlock()
		select {
		case got <- string(m.Data):
		default:
		}
		return nil
	},
		wspool.WithOnConnect(func(ctx context.Context, cn *wspool.Conn) error {
			mu.Lock()
			log = append(log, "onconnect")
			mu.Unlock()
			return cn.Send(ctx, wspool.TextMessage, []byte("sub"))
		}),
		wspool.WithBackoff(10*time.Millisecond, 50*time.Millisecond),
		ev.option(),
	)
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	recv(t, got, 5*time.Second, "first message")

	srv.Stop()
	ev.waitCount(t, wspool.StateBackingOff, 1, 5*time.Second)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	ev.waitCount(t, wspool.StateConnected, 2, 10*time.Second)
	waitFor(t, 5*time.Second, "a message from the second connection", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(log) > 0 && log[len(log)-1] == "2"
	})

	mu.Lock()
	defer mu.Unlock()
	// Every connection's messages come after its OnConnect, and in order.
	onConnects, current := 0, "0"
	for _, e := range log {
		if e == "onconnect" {
			onConnects++
			continue
		}
		if e != strconv.Itoa(onConnects) {
			t.Fatalf("message of connection %s delivered after %d OnConnect runs (current %s): %v", e, onConnects, current, log)
		}
		current = e
	}
	if onConnects != 2 {
		t.Fatalf("OnConnect ran %d times, want 2", onConnects)
	}
}

func TestMessagesInOrder(t *testing.T) {
	const n = 5000
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		for i := 0; i < n; i++ {
			if err := c.WriteMessage(websocket.BinaryMessage, []byte(strconv.Itoa(i))); err != nil {
				return
			}
		}
		wstest.Drain(c, nil)
	})
	var next int
	var inHandler atomic.Int32
	done := make(chan struct{})
	c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
		if inHandler.Add(1) != 1 {
			t.Error("handler called concurrently with itself")
		}
		defer inHandler.Add(-1)
		if got := string(m.Data); got != strconv.Itoa(next) {
			t.Errorf("message %d: got %q", next, got)
		}
		next++
		if next == n {
			close(done)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	recv(t, done, 10*time.Second, "all messages")
	// MessagesIn counts a message once its delivery has completed.
	waitFor(t, 5*time.Second, "MessagesIn to reach n", func() bool { return c.Stats().MessagesIn == n })
}

func TestConcurrentSend(t *testing.T) {
	srv := newServer(t, wstest.Echo)
	const senders, each = 50, 40
	var mu sync.Mutex
	seen := map[string]int{}
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/echo"), func(_ context.Context, m wspool.Message) error {
		mu.Lock()
		seen[string(m.Data)]++
		mu.Unlock()
		return nil
	}, ev.option())
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	ev.waitCount(t, wspool.StateConnected, 1, 5*time.Second)

	var wg sync.WaitGroup
	for g := 0; g < senders; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if err := c.Send(context.Background(), wspool.TextMessage, fmt.Appendf(nil, "%d/%d", g, i)); err != nil {
					t.Errorf("Send: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	waitFor(t, 10*time.Second, "all echoes", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == senders*each
	})
	mu.Lock()
	defer mu.Unlock()
	for k, v := range seen {
		if v != 1 {
			t.Fatalf("%s echoed %d times", k, v)
		}
	}
	if s := c.Stats(); s.MessagesOut != senders*each {
		t.Fatalf("MessagesOut = %d, want %d", s.MessagesOut, senders*each)
	}
}

func TestSendWhileDisconnected(t *testing.T) {
	c, err := wspool.NewClient("ws://127.0.0.1:1/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Send(context.Background(), wspool.TextMessage, []byte("x")); !errors.Is(err, wspool.ErrNotConnected) {
		t.Fatalf("Send before Run: %v, want ErrNotConnected", err)
	}
	c.Close()
	if err := c.Send(context.Background(), wspool.TextMessage, []byte("x")); !errors.Is(err, wspool.ErrClosed) {
		t.Fatalf("Send after Close: %v, want ErrClosed", err)
	}
	if err := c.Run(context.Background()); !errors.Is(err, wspool.ErrClosed) {
		t.Fatalf("Run after Close: %v, want ErrClosed", err)
	}
}

func TestPermanentHandshakeError(t *testing.T) {
	srv := newServer(t, wstest.Drain)
	srv.SetReject(func(*http.Request) (int, http.Header) { return http.StatusUnauthorized, nil })
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil, wspool.WithBackoff(time.Millisecond, time.Millisecond), ev.option())
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- c.Run(context.Background()) }()
	err = recv(t, errc, 5*time.Second, "Run to return")
	var he *wspool.HandshakeError
	if !errors.As(err, &he) || he.StatusCode != 401 {
		t.Fatalf("Run = %v, want *HandshakeError with 401", err)
	}
	if n := srv.Handshakes(); n != 1 {
		t.Fatalf("server saw %d handshakes, want 1 (no retry)", n)
	}
	last := ev.snapshot()[len(ev.snapshot())-1]
	if last.To != wspool.StateClosed || !errors.As(last.Err, &he) {
		t.Fatalf("last transition %+v, want closed with the handshake error", last)
	}
	if c.State() != wspool.StateClosed {
		t.Fatalf("state %v", c.State())
	}
}

func TestRetryAfterHonoured(t *testing.T) {
	srv := newServer(t, wstest.Drain)
	var mu sync.Mutex
	var times []time.Time
	srv.SetReject(func(*http.Request) (int, http.Header) {
		mu.Lock()
		defer mu.Unlock()
		times = append(times, time.Now())
		if len(times) == 1 {
			return http.StatusServiceUnavailable, http.Header{"Retry-After": {"1"}}
		}
		return 0, nil
	})
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil, wspool.WithBackoff(10*time.Millisecond, 20*time.Millisecond), ev.option())
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	ev.waitCount(t, wspool.StateConnected, 1, 10*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if gap := times[1].Sub(times[0]); gap < time.Second {
		t.Fatalf("second attempt %v after a 503 with Retry-After: 1, want >= 1s", gap)
	}
	var he *wspool.HandshakeError
	for _, sc := range ev.snapshot() {
		if sc.To == wspool.StateBackingOff && errors.As(sc.Err, &he) {
			if he.StatusCode != 503 || he.RetryAfter != time.Second || sc.Wait < time.Second {
				t.Fatalf("backoff transition %+v (%+v)", sc, he)
			}
			return
		}
	}
	t.Fatal("no backoff transition with the 503")
}

func TestBackoffGrowsAndResetsAfterMinUptime(t *testing.T) {
	var hold atomic.Int64 // how long the server keeps each connection
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		if d := time.Duration(hold.Load()); d > 0 {
			time.Sleep(d)
		}
	})
	var mu sync.Mutex
	var attempts []time.Time
	srv.SetReject(func(*http.Request) (int, http.Header) {
		mu.Lock()
		attempts = append(attempts, time.Now())
		mu.Unlock()
		return 0, nil
	})
	ev := newEvents()
	const initial = 20 * time.Millisecond
	c, err := wspool.NewClient(srv.URL("/"), nil,
		wspool.WithBackoff(initial, 5*time.Second),
		wspool.WithMinUptime(150*time.Millisecond),
		ev.option())
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	// Phase 1: the server accepts and drops at once, 10 times.
	ev.waitCount(t, wspool.StateConnected, 10, 20*time.Second)
	mu.Lock()
	gaps := make([]time.Duration, 0, 9)
	for i := 1; i < 10; i++ {
		gaps = append(gaps, attempts[i].Sub(attempts[i-1]))
	}
	mu.Unlock()
	// Mean waits are 20ms·1.5^k, ±50%: the 9th (k=8, mean 512ms) is at least
	// 256ms, the first at most 30ms plus scheduling slack.
	if gaps[8] < 4*gaps[0] || gaps[8] < 200*time.Millisecond {
		t.Fatalf("backoff did not grow: gaps %v", gaps)
	}
	// Phase 2: connections now stay up past the minimum uptime; the backoff resets.
	hold.Store(int64(300 * time.Millisecond))
	n := ev.count(wspool.StateBackingOff)
	ev.waitCount(t, wspool.StateBackingOff, n+3, 20*time.Second)
	all := ev.snapshot()
	var waits []time.Duration
	for _, sc := range all {
		if sc.To == wspool.StateBackingOff {
			waits = append(waits, sc.Wait)
		}
	}
	lastWait := waits[len(waits)-1]
	if lastWait > initial*3/2 {
		t.Fatalf("after a stable connection the wait is %v, want it reset to about %v (waits %v)", lastWait, initial, waits)
	}
}

func TestOnConnectFailureRetries(t *testing.T) {
	srv := newServer(t, wstest.Drain)
	var calls atomic.Int32
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil,
		wspool.WithBackoff(5*time.Millisecond, 10*time.Millisecond),
		wspool.WithOnConnect(func(context.Context, *wspool.Conn) error {
			if calls.Add(1) < 3 {
				return errors.New("subscribe rejected")
			}
			return nil
		}), ev.option())
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	ev.waitCount(t, wspool.StateConnected, 1, 5*time.Second)
	if calls.Load() != 3 {
		t.Fatalf("OnConnect called %d times, want 3", calls.Load())
	}
	waitFor(t, 5*time.Second, "3 accepted connections", func() bool { return srv.Accepted() == 3 })
	s := c.Stats()
	if s.LastError == nil || !strings.Contains(s.LastError.Error(), "subscribe rejected") {
		t.Fatalf("LastError = %v", s.LastError)
	}
}

func TestRequestFuncPerDial(t *testing.T) {
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		c.WriteMessage(websocket.TextMessage, []byte(r.URL.Query().Get("cursor")+" "+r.Header.Get("Authorization")))
	})
	var dials atomic.Int32
	got := make(chan string, 10)
	c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
		got <- string(m.Data)
		return nil
	},
		wspool.WithBackoff(5*time.Millisecond, 10*time.Millisecond),
		wspool.WithRequestFunc(func(_ context.Context, u *url.URL, h http.Header) error {
			n := dials.Add(1)
			q := u.Query()
			q.Set("cursor", strconv.Itoa(int(n)))
			u.RawQuery = q.Encode()
			h.Set("Authorization", fmt.Sprintf("Bearer t%d", n))
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	if m := recv(t, got, 5*time.Second, "first"); m != "1 Bearer t1" {
		t.Fatalf("first dial saw %q", m)
	}
	if m := recv(t, got, 5*time.Second, "second"); m != "2 Bearer t2" {
		t.Fatalf("second dial saw %q", m)
	}
}

func TestHandlerPanicIsReported(t *testing.T) {
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		for i := 0; i < 10; i++ {
			c.WriteMessage(websocket.TextMessage, []byte(strconv.Itoa(i)))
		}
		wstest.Drain(c, nil)
	})
	var handled atomic.Int32
	errs := make(chan error, 20)
	c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
		handled.Add(1)
		switch string(m.Data) {
		case "3":
			panic("boom")
		case "5":
			return errors.New("bad message")
		}
		return nil
	}, wspool.WithOnError(func(feed string, err error) { errs <- err }))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	waitFor(t, 5*time.Second, "all 10 messages handled", func() bool { return handled.Load() == 10 })
	var he *wspool.HandlerError
	e1 := recv(t, errs, time.Second, "panic report")
	if !errors.As(e1, &he) || he.Panic != "boom" || len(he.Stack) == 0 {
		t.Fatalf("first error %v, want HandlerError with the panic", e1)
	}
	e2 := recv(t, errs, time.Second, "error report")
	if !errors.As(e2, &he) || he.Err == nil || he.Err.Error() != "bad message" {
		t.Fatalf("second error %v", e2)
	}
	if s := c.Stats(); s.HandlerErrors != 2 || s.Connects != 1 || s.State != wspool.StateConnected {
		t.Fatalf("stats %+v", s)
	}
}

func TestShutdownSendsCloseFrame(t *testing.T) {
	codes := make(chan int, 1)
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			codes <- ce.Code
		}
	})
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil, ev.option())
	if err != nil {
		t.Fatal(err)
	}
	stop := runClient(t, c)
	ev.waitCount(t, wspool.StateConnected, 1, 5*time.Second)
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if code := recv(t, codes, time.Second, "close code"); code != websocket.CloseNormalClosure {
		t.Fatalf("server saw close code %d, want 1000", code)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("shutdown took %v", d)
	}
	if c.State() != wspool.StateClosed {
		t.Fatalf("state %v", c.State())
	}
	c.Close() // idempotent after Run returned
}

func TestCloseTimeoutBoundsShutdown(t *testing.T) {
	// A server that never answers our close frame (it stops reading).
	release := make(chan struct{})
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) { <-release })
	t.Cleanup(func() { close(release) })
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil, wspool.WithCloseTimeout(200*time.Millisecond), ev.option())
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	ev.waitCount(t, wspool.StateConnected, 1, 5*time.Second)
	start := time.Now()
	c.Close() // starts the stop; Done says when it is over
	<-c.Done()
	if d := time.Since(start); d < 150*time.Millisecond || d > 3*time.Second {
		t.Fatalf("shutdown took %v with a 200ms close timeout and a silent server", d)
	}
}

func TestReadLimit(t *testing.T) {
	codes := make(chan int, 4)
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		c.WriteMessage(websocket.BinaryMessage, make([]byte, 2048))
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			codes <- ce.Code
		}
	})
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil, wspool.WithReadLimit(1024), wspool.WithBackoff(50*time.Millisecond, time.Second), ev.option())
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	ev.waitCount(t, wspool.StateBackingOff, 1, 5*time.Second)
	if code := recv(t, codes, 2*time.Second, "close code"); code != websocket.CloseMessageTooBig {
		t.Fatalf("server saw close %d, want 1009", code)
	}
	sc := ev.snapshot()
	var cause error
	for _, s := range sc {
		if s.To == wspool.StateBackingOff {
			cause = s.Err
		}
	}
	if !errors.Is(cause, websocket.ErrReadLimit) {
		t.Fatalf("cause %v, want ErrReadLimit", cause)
	}
	ev.waitCount(t, wspool.StateConnected, 2, 5*time.Second) // and it redials
}

func TestMaxAttempts(t *testing.T) {
	c, err := wspool.NewClient("ws://127.0.0.1:1/", nil, wspool.WithMaxAttempts(3), wspool.WithBackoff(time.Millisecond, time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Run(context.Background())
	if !errors.Is(err, wspool.ErrMaxAttempts) {
		t.Fatalf("Run = %v, want ErrMaxAttempts", err)
	}
	if s := c.Stats(); s.Attempts != 3 {
		t.Fatalf("attempts %d, want 3", s.Attempts)
	}
}

func TestValidation(t *testing.T) {
	for _, u := range []string{"http://x/", "x", "ws:///path", "://", "wss//host"} {
		if _, err := wspool.NewClient(u, nil); !errors.Is(err, wspool.ErrInvalidURL) {
			t.Errorf("NewClient(%q) = %v, want ErrInvalidURL", u, err)
		}
	}
	bad := map[string]wspool.Option{
		"negative ping":      wspool.WithPingInterval(-1),
		"zero pong":          wspool.WithPongTimeout(0),
		"zero backoff":       wspool.WithBackoff(0, time.Second),
		"max below initial":  wspool.WithBackoff(time.Second, time.Millisecond),
		"empty name":         wspool.WithName(""),
		"nil dialer":         wspool.WithDialer(nil),
		"zero read limit":    wspool.WithReadLimit(0),
		"heartbeat no func":  wspool.WithHeartbeat(wspool.Heartbeat{Interval: time.Second}),
		"negative stale":     wspool.WithStaleTimeout(-time.Second),
		"zero write timeout": wspool.WithWriteTimeout(0),
		"zero handshake":     wspool.WithHandshakeTimeout(0),
		"negative OnConnect": wspool.WithOnConnectTimeout(-time.Second),
	}
	for name, o := range bad {
		if _, err := wspool.NewClient("ws://127.0.0.1:1/", nil, o); !errors.Is(err, wspool.ErrInvalidOption) {
			t.Errorf("%s: err = %v, want ErrInvalidOption", name, err)
		}
	}
	if _, err := wspool.NewPool(wspool.WithMaxConcurrentDials(0)); !errors.Is(err, wspool.ErrInvalidOption) {
		t.Errorf("NewPool with 0 dials: %v", err)
	}
	// A URL error never echoes the URL (it may hold credentials).
	_, err := wspool.NewClient("ws://user:s3cret@host:bad port/", nil)
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %v leaks the URL", err)
	}
}

func TestDefaultNameRedactsSecrets(t *testing.T) {
	c, err := wspool.NewClient("wss://alice:hunter2@example.com/stream?symbol=BTC&token=abc123&apiKey=zzz#frag", nil)
	if err != nil {
		t.Fatal(err)
	}
	name := c.Name()
	for _, secret := range []string{"alice", "hunter2", "abc123", "zzz", "frag"} {
		if strings.Contains(name, secret) {
			t.Errorf("name %q contains %q", name, secret)
		}
	}
	if !strings.Contains(name, "symbol=BTC") || !strings.Contains(name, "example.com/stream") {
		t.Errorf("name %q lost the non-secret parts", name)
	}
}

// TestOnConnectTimeoutIsNotTheHandshakeTimeout: an OnConnect that takes five
// times the handshake timeout (200ms) succeeds, because its own timeout
// (WithOnConnectTimeout, 1 minute) bounds it: its ctx's deadline is about a
// minute away. Before WithOnConnectTimeout, the handshake timeout bounded
// OnConnect too, so a long paced resubscribe needed a long handshake timeout.
func TestOnConnectTimeoutIsNotTheHandshakeTimeout(t *testing.T) {
	srv := newServer(t, wstest.Drain)
	const handshakeTO = 200 * time.Millisecond
	var calls atomic.Int32
	left := make(chan time.Duration, 1)
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil, ev.option(),
		wspool.WithBackoff(10*time.Millisecond, 50*time.Millisecond),
		wspool.WithHandshakeTimeout(handshakeTO),
		wspool.WithOnConnectTimeout(time.Minute),
		wspool.WithOnConnect(func(ctx context.Context, _ *wspool.Conn) error {
			if calls.Add(1) > 1 {
				return nil
			}
			deadline, ok := ctx.Deadline()
			if !ok {
				return errors.New("OnConnect's ctx has no deadline")
			}
			left <- time.Until(deadline)
			wait := time.NewTimer(5 * handshakeTO)
			defer wait.Stop()
			select {
			case <-wait.C:
				return nil
			case <-ctx.Done():
				return fmt.Errorf("OnConnect's ctx ended after less than 5 handshake timeouts: %w", context.Cause(ctx))
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	if d := recv(t, left, 10*time.Second, "OnConnect"); d < 30*time.Second {
		t.Errorf("OnConnect's ctx ends in %v, want about the OnConnect timeout (1m), not the handshake timeout (%v)", d, handshakeTO)
	}
	ev.waitCount(t, wspool.StateConnected, 1, 20*time.Second)
	if n := calls.Load(); n != 1 {
		t.Errorf("OnConnect ran %d times before the feed connected, want 1 (the slow first run must succeed): %v", n, ev.snapshot())
	}
}

// TestOnConnectTimeoutFailsTheAttempt: an OnConnect that waits for an answer
// that never comes is cut off by WithOnConnectTimeout (300ms; the handshake
// timeout stays at its 10s default); the attempt fails with a deadline
// error and the next one connects.
func TestOnConnectTimeoutFailsTheAttempt(t *testing.T) {
	srv := newServer(t, wstest.Drain)
	const onConnectTO = 300 * time.Millisecond
	var calls atomic.Int32
	took := make(chan time.Duration, 1)
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil, ev.option(),
		wspool.WithBackoff(10*time.Millisecond, 50*time.Millisecond),
		wspool.WithOnConnectTimeout(onConnectTO),
		wspool.WithOnConnect(func(ctx context.Context, _ *wspool.Conn) error {
			if calls.Add(1) > 1 {
				return nil
			}
			// The bound is the context's deadline, fixed before OnConnect
			// starts: measure from when it was set, not from here.
			dl, _ := ctx.Deadline()
			<-ctx.Done() // an acknowledgement that never comes
			took <- time.Since(dl.Add(-onConnectTO))
			return ctx.Err()
		}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	ev.waitCount(t, wspool.StateConnected, 1, 20*time.Second)
	if d := recv(t, took, time.Second, "the first OnConnect's end"); d < onConnectTO || d >= wspool.DefaultHandshakeTimeout {
		t.Errorf("the stuck OnConnect ended after %v, want the OnConnect timeout %v (not the handshake timeout %v)", d, onConnectTO, wspool.DefaultHandshakeTimeout)
	}
	cause, _, _ := ev.firstCause(wspool.StateBackingOff)
	if !errors.Is(cause, context.DeadlineExceeded) {
		t.Errorf("the failed attempt's cause is %v, want OnConnect's deadline", cause)
	}
}

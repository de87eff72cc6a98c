package wspool_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/leakcheck"
	"github.com/wspool/wspool/internal/wstest"
)

// ticker sends a message every few milliseconds until the connection ends.
func ticker(c *websocket.Conn, _ *http.Request) {
	go wstest.Drain(c, nil)
	for {
		if err := c.WriteMessage(websocket.TextMessage, []byte("tick")); err != nil {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func runPool(t *testing.T, p *wspool.Pool) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Run(ctx) }()
	done := false
	var err error
	stop = func() error {
		if !done {
			done = true
			cancel()
			select {
			case err = <-errc:
			case <-time.After(20 * time.Second):
				t.Errorf("Pool.Run did not return after cancel")
			}
		}
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

func counter(n *atomic.Int64) wspool.Handler {
	return func(context.Context, wspool.Message) error { n.Add(1); return nil }
}

func TestPoolAddRemoveWhileRunning(t *testing.T) {
	srv := newServer(t, ticker)
	closeCodes := make(chan int, 4)
	other := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			closeCodes <- ce.Code
		}
	})
	p, err := wspool.NewPool(wspool.WithPingInterval(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var a, b atomic.Int64
	if _, err := p.Add(srv.URL("/a"), counter(&a)); err != nil {
		t.Fatal(err)
	}
	stop := runPool(t, p)
	waitFor(t, 5*time.Second, "feed a to receive", func() bool { return a.Load() > 0 })

	// Add while running.
	cb, err := p.Add(srv.URL("/b"), counter(&b), wspool.WithName("b"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "feed b to receive", func() bool { return b.Load() > 0 })
	if _, err := p.Add(srv.URL("/b"), nil, wspool.WithName("b")); !errors.Is(err, wspool.ErrDuplicateName) {
		t.Fatalf("duplicate Add: %v", err)
	}
	if _, err := p.Add(other.URL("/c"), nil, wspool.WithName("c")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "3 feeds connected", func() bool { return p.Stats().Connected == 3 })

	// Remove one: it sends 1000, the others go on.
	if err := p.Remove("c"); err != nil {
		t.Fatal(err)
	}
	if code := recv(t, closeCodes, 5*time.Second, "close frame of the removed feed"); code != 1000 {
		t.Fatalf("removed feed closed with %d", code)
	}
	if err := p.Remove("c"); !errors.Is(err, wspool.ErrNotFound) {
		t.Fatalf("second Remove: %v", err)
	}
	before := a.Load()
	waitFor(t, 5*time.Second, "feed a to keep receiving", func() bool { return a.Load() > before+10 })
	ps := p.Stats()
	if ps.Total != 2 || ps.Connected != 2 || ps.MessagesIn < a.Load() {
		t.Fatalf("pool stats %+v", ps)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if cb.State() != wspool.StateClosed {
		t.Fatalf("feed state after Run %v", cb.State())
	}
	if _, err := p.Add(srv.URL("/d"), nil); !errors.Is(err, wspool.ErrClosed) {
		t.Fatalf("Add after Run: %v", err)
	}
}

func TestPoolPermanentFailureDoesNotStopOthers(t *testing.T) {
	srv := newServer(t, ticker)
	denied := newServer(t, wstest.Drain)
	denied.SetReject(func(*http.Request) (int, http.Header) { return http.StatusForbidden, nil })
	ev := newEvents()
	p, err := wspool.NewPool()
	if err != nil {
		t.Fatal(err)
	}
	var a atomic.Int64
	p.Add(srv.URL("/"), counter(&a))
	p.Add(denied.URL("/"), nil, ev.option())
	stop := runPool(t, p)
	ev.waitCount(t, wspool.StateClosed, 1, 5*time.Second)
	before := a.Load()
	waitFor(t, 5*time.Second, "the healthy feed to keep going", func() bool { return a.Load() > before+5 })
	ps := p.Stats()
	if ps.Closed != 1 || ps.Connected != 1 {
		t.Fatalf("stats %+v", ps)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run = %v, want nil (a failed feed is not fatal by default)", err)
	}
}

func TestPoolFailFast(t *testing.T) {
	srv := newServer(t, ticker)
	denied := newServer(t, wstest.Drain)
	denied.SetReject(func(*http.Request) (int, http.Header) { return http.StatusNotFound, nil })
	p, err := wspool.NewPool(wspool.WithFailFast(true))
	if err != nil {
		t.Fatal(err)
	}
	healthy, _ := p.Add(srv.URL("/"), nil)
	p.Add(denied.URL("/"), nil)
	errc := make(chan error, 1)
	go func() { errc <- p.Run(context.Background()) }()
	err = recv(t, errc, 10*time.Second, "Run to fail")
	var he *wspool.HandshakeError
	if !errors.As(err, &he) || he.StatusCode != 404 {
		t.Fatalf("Run = %v, want the 404", err)
	}
	if healthy.State() != wspool.StateClosed {
		t.Fatalf("healthy feed left in %v", healthy.State())
	}
}

// TestNewPoolRefusesDefaultName: WithName cannot be a default for every
// feed (names are unique within a pool): NewPool refuses it with
// ErrInvalidOption instead of accepting a name that at most one feed could
// take and that any feed named in Add silently replaced.
func TestNewPoolRefusesDefaultName(t *testing.T) {
	if _, err := wspool.NewPool(wspool.WithPingInterval(time.Second), wspool.WithName("all")); !errors.Is(err, wspool.ErrInvalidOption) || !strings.Contains(err.Error(), "WithName") {
		t.Fatalf("NewPool(WithName) = %v, want ErrInvalidOption naming WithName", err)
	}
	p, err := wspool.NewPool(wspool.WithPingInterval(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Add("ws://127.0.0.1:1/", nil, wspool.WithName("mine")); err != nil {
		t.Fatalf("Add with WithName: %v", err)
	}
}

func TestPoolCloseBeforeRun(t *testing.T) {
	p, _ := wspool.NewPool()
	c, _ := p.Add("ws://127.0.0.1:1/", nil)
	p.Close()
	p.Close()
	if err := p.Run(context.Background()); !errors.Is(err, wspool.ErrClosed) {
		t.Fatalf("Run after Close: %v", err)
	}
	if c.State() != wspool.StateClosed {
		t.Fatalf("feed state %v", c.State())
	}
}

func TestPoolDialLimit(t *testing.T) {
	srv := newServer(t, wstest.Drain)
	srv.SetHandshakeDelay(30 * time.Millisecond)
	const cap = 3
	p, err := wspool.NewPool(wspool.WithMaxConcurrentDials(cap))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 30; i++ {
		if _, err := p.Add(srv.URL("/"), nil, wspool.WithName(string(rune('A'+i)))); err != nil {
			t.Fatal(err)
		}
	}
	runPool(t, p)
	waitFor(t, 10*time.Second, "30 feeds connected", func() bool { return p.Stats().Connected == 30 })
	if peak := srv.PeakConcurrentHandshakes(); peak > cap {
		t.Fatalf("server saw %d concurrent handshakes, cap %d", peak, cap)
	}
}

// feedGoroutines counts the goroutines running the library's feed code
// (reading, dialling, backing off), from a dump of every goroutine.
func feedGoroutines() (feeds, pool int) {
	for _, g := range leakcheck.Stacks() {
		switch {
		case strings.Contains(g, "wspool.(*Client)."):
			feeds++
		case strings.Contains(g, "wspool.(*Pool)."):
			pool++
		}
	}
	return feeds, pool
}

// TestPoolOneGoroutinePerIdleFeed checks the resource shape an idle pool
// promises: one goroutine per connected feed, across reconnects too, and
// none parked per feed besides it.
func TestPoolOneGoroutinePerIdleFeed(t *testing.T) {
	const n = 40
	srv := newServer(t, wstest.Drain)
	ev := newEvents()
	p, err := wspool.NewPool(ev.option(), wspool.WithBackoff(10*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := p.Add(srv.URL("/"), nil, wspool.WithName(fmt.Sprint("feed-", i))); err != nil {
			t.Fatal(err)
		}
	}
	stop := runPool(t, p)
	for round := 1; round <= 2; round++ {
		ev.waitCount(t, wspool.StateConnected, round*n, 20*time.Second)
		var feeds, pool int
		waitFor(t, 10*time.Second, "the feeds' goroutines to settle", func() bool {
			feeds, pool = feedGoroutines()
			return feeds == n
		})
		if pool > 2 { // Run itself and the errgroup's anchor
			t.Errorf("round %d: %d goroutines in Pool code, want at most 2", round, pool)
		}
		srv.DropAll() // every feed reconnects on a fresh goroutine
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if feeds, pool := feedGoroutines(); feeds != 0 || pool != 0 {
		t.Fatalf("after Run: %d feed and %d pool goroutines left", feeds, pool)
	}
}

// TestRequestFuncReachesItsFeedOnRunningPool: a feed added to a running pool
// may dial before Add has returned, so its request func cannot read the
// *Client that Add returns (a data race); ClientFromContext gives the
// request func, OnConnect and the handler their own feed, race-free (run it
// with -race).
func TestRequestFuncReachesItsFeedOnRunningPool(t *testing.T) {
	srv := newServer(t, ticker)
	p, err := wspool.NewPool()
	if err != nil {
		t.Fatal(err)
	}
	runPool(t, p)
	type seen struct {
		where string
		c     *wspool.Client
	}
	got := make(chan seen, 300)
	record := func(where string, ctx context.Context) {
		select {
		case got <- seen{where, wspool.ClientFromContext(ctx)}:
		default:
		}
	}
	const feeds = 20
	added := map[string]*wspool.Client{}
	for i := range feeds {
		name := fmt.Sprint("f", i)
		c, err := p.Add(srv.URL("/"+name), func(ctx context.Context, _ wspool.Message) error {
			record("handler", ctx)
			return nil
		}, wspool.WithName(name),
			wspool.WithRequestFunc(func(ctx context.Context, u *url.URL, _ http.Header) error {
				record("request func", ctx)
				if c := wspool.ClientFromContext(ctx); c != nil {
					_, _ = c.LastSequence("") // what a resume point reads
				}
				return nil
			}),
			wspool.WithOnConnect(func(ctx context.Context, _ *wspool.Conn) error {
				record("OnConnect", ctx)
				return nil
			}))
		if err != nil {
			t.Fatal(err)
		}
		added[name] = c
	}
	count := map[string]int{}
	for len(count) < 3 || count["handler"] < feeds || count["request func"] < feeds || count["OnConnect"] < feeds {
		s := recv(t, got, 10*time.Second, "callbacks of every feed")
		if s.c == nil || added[s.c.Name()] != s.c {
			t.Fatalf("%s: ClientFromContext = %v, not its feed", s.where, s.c)
		}
		count[s.where]++
	}
	if c := wspool.ClientFromContext(context.Background()); c != nil {
		t.Fatalf("ClientFromContext(Background) = %v", c)
	}
}

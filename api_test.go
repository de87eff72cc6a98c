package wspool_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/wstest"
)

func TestPoolClientAndTotals(t *testing.T) {
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		_ = c.WriteMessage(websocket.TextMessage, []byte("hi"))
		wstest.Drain(c, r)
	})
	p, err := wspool.NewPool()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := p.Add(srv.URL("/"), nil, wspool.WithName(fmt.Sprint("f", i))); err != nil {
			t.Fatal(err)
		}
	}
	if c := p.Client("f1"); c == nil || c.Name() != "f1" {
		t.Fatalf("Client(f1) = %v", c)
	}
	if c := p.Client("nope"); c != nil {
		t.Fatalf("Client(nope) = %v, want nil", c)
	}
	stop := runPool(t, p)
	waitFor(t, 10*time.Second, "three connected feeds with a message each", func() bool {
		tot := p.Totals()
		return tot.Connected == 3 && tot.MessagesIn == 3
	})
	tot, full := p.Totals(), p.Stats()
	if tot.Feeds != nil || tot.Total != 3 || tot.Connects != full.Connects || tot.MessagesIn != full.MessagesIn {
		t.Fatalf("Totals %+v disagree with Stats %+v", tot, full)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if tot := p.Totals(); tot.Closed != 3 {
		t.Fatalf("after Run: %+v", tot)
	}
}

func TestCloseStatusTyped(t *testing.T) {
	err := fmt.Errorf("wrapped: %w", &websocket.CloseError{Code: 1013, Text: "later"})
	if got := wspool.CloseStatus(err); got != wspool.CloseCodeTryAgainLater || got.String() != "1013 (try again later)" {
		t.Fatalf("CloseStatus = %v", got)
	}
	if got := wspool.CloseStatus(fmt.Errorf("no close")); got != wspool.CloseCodeNone || got.String() != "none" {
		t.Fatalf("CloseStatus of a plain error = %v", got)
	}
	if s := wspool.CloseCode(4000).String(); s != "4000" {
		t.Fatalf("private code renders %q", s)
	}
}

func TestTimings(t *testing.T) {
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		for range 5 {
			_ = c.WriteMessage(websocket.TextMessage, []byte("m"))
		}
		wstest.Drain(c, r)
	})
	var mu sync.Mutex
	got := map[wspool.TimingKind][]time.Duration{}
	c, err := wspool.NewClient(srv.URL("/"), func(context.Context, wspool.Message) error {
		time.Sleep(10 * time.Millisecond) // a handler that takes a while
		return nil
	},
		wspool.WithQueue(wspool.Queue{Messages: 8}),
		wspool.WithOnConnect(func(context.Context, *wspool.Conn) error { return nil }),
		wspool.WithTimings(func(tm wspool.Timing) {
			mu.Lock()
			got[tm.Kind] = append(got[tm.Kind], tm.D)
			mu.Unlock()
		}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	waitFor(t, 10*time.Second, "five handler timings", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got[wspool.TimingHandler]) == 5
	})
	mu.Lock()
	defer mu.Unlock()
	for _, k := range []wspool.TimingKind{wspool.TimingHandshake, wspool.TimingOnConnect, wspool.TimingFirstMessage, wspool.TimingHandler, wspool.TimingQueueWait} {
		if len(got[k]) == 0 {
			t.Errorf("no %v timing", k)
		}
	}
	for _, d := range got[wspool.TimingHandler] {
		if d < 10*time.Millisecond {
			t.Errorf("handler timing %v, below the handler's own 10 ms", d)
		}
	}
	// The queue wait of the fifth message covers the four handler calls before it.
	if w := got[wspool.TimingQueueWait]; len(w) != 5 || w[4] < 30*time.Millisecond {
		t.Errorf("queue waits %v: the last one should cover the handler calls before it", w)
	}
}

// Drain on a feed that never ran (or a pool that never ran) is Close: it
// returns at once and fails buffered sends.
func TestDrainBeforeRun(t *testing.T) {
	c, err := wspool.NewClient("ws://127.0.0.1:1/", nil, wspool.WithSendBuffer(wspool.SendBuffer{Messages: 2}))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	c.SendAsync(wspool.TextMessage, []byte("x"), func(err error) { done <- err })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := callWithin(t, 5*time.Second, "Drain before Run", func() error { return c.Drain(ctx) }); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, done, 5*time.Second, "the buffered send's outcome"); !errors.Is(err, wspool.ErrClosed) {
		t.Fatalf("buffered send: %v", err)
	}
	p, _ := wspool.NewPool()
	if _, err := p.Add("ws://127.0.0.1:1/", nil); err != nil {
		t.Fatal(err)
	}
	if err := callWithin(t, 5*time.Second, "Pool.Drain before Run", func() error { return p.Drain(ctx) }); err != nil {
		t.Fatal(err)
	}
}

// TestConnDoneAndReconnect: Conn.Done is closed when the connection has
// ended, and Conn.Reconnect ends that connection (the cause is reported
// wrapping ErrReconnect) and the feed dials a new one.
func TestConnDoneAndReconnect(t *testing.T) {
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) { wstest.Drain(c, r) })
	conns := make(chan *wspool.Conn, 4)
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil, ev.option(), wspool.WithBackoff(time.Millisecond, 10*time.Millisecond),
		wspool.WithOnConnect(func(_ context.Context, cn *wspool.Conn) error {
			conns <- cn
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	first := recv(t, conns, 5*time.Second, "the first connection")
	ev.waitCount(t, wspool.StateConnected, 1, 5*time.Second)
	select {
	case <-first.Done():
		t.Fatal("Done closed on a live connection")
	default:
	}
	cause := errors.New("asked for")
	first.Reconnect(cause)
	recv(t, first.Done(), 5*time.Second, "Done of the ended connection")
	second := recv(t, conns, 5*time.Second, "a new connection")
	if second.ID() != first.ID()+1 {
		t.Fatalf("connection ids %d then %d", first.ID(), second.ID())
	}
	ev.waitCount(t, wspool.StateConnected, 2, 5*time.Second)
	var reported bool
	for _, sc := range ev.snapshot() {
		if sc.To == wspool.StateBackingOff && errors.Is(sc.Err, wspool.ErrReconnect) && errors.Is(sc.Err, cause) {
			reported = true
		}
	}
	if !reported {
		t.Fatalf("the reconnect's cause was not reported: %v", ev.snapshot())
	}
}

// TestOptionsOverlap: options that set the same thing overlap; others do not.
func TestOptionsOverlap(t *testing.T) {
	onConnect := func(context.Context, *wspool.Conn) error { return nil }
	for _, tc := range []struct {
		o    wspool.Option
		opts []wspool.Option
		want bool
	}{
		{wspool.WithOnConnect(onConnect), []wspool.Option{wspool.WithPingInterval(time.Second), wspool.WithName("x")}, false},
		{wspool.WithOnConnect(onConnect), []wspool.Option{wspool.WithPingInterval(time.Second), wspool.WithOnConnect(onConnect)}, true},
		{wspool.WithName("a"), []wspool.Option{wspool.WithName("b")}, true},
		{wspool.WithOnStateChange(func(wspool.StateChange) {}), []wspool.Option{wspool.WithOnError(func(string, error) {})}, false},
		{wspool.WithName("a"), nil, false},
	} {
		if got := wspool.OptionsOverlap(tc.o, tc.opts...); got != tc.want {
			t.Errorf("case %+v: OptionsOverlap = %v", tc, got)
		}
	}
}

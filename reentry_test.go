package wspool_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"golang.org/x/sync/errgroup"
)

// The re-entrancy contract: every callback may call every exported method of
// its Client and Pool without deadlock, and a panic in any callback is
// recovered and reported. These tables drive each (callback, method) pair
// against a real server.

// reentryServer sends a message every 10 ms on every connection and drops
// the first connection of each path after 150 ms (so that failures, and with
// them the permanent func, happen too).
func reentryServer(t *testing.T) string {
	var first sync.Map
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		_, dup := first.LoadOrStore(r.URL.Path, true)
		gone := make(chan struct{})
		go func() {
			defer close(gone)
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					return
				}
			}
		}()
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		end := time.After(150 * time.Millisecond)
		for {
			select {
			case <-gone:
				return
			case <-end:
				if !dup {
					return
				}
			case <-tk.C:
				if c.WriteMessage(websocket.TextMessage, []byte("m")) != nil {
					return
				}
			}
		}
	})
	return srv.URL("")
}

// callbackCase installs one callback, which calls fire on each invocation.
type callbackCase struct {
	name string
	// setup returns the feed's handler (nil for none) and options.
	setup func(fire func()) (wspool.Handler, []wspool.Option)
	// trigger, if set, makes the callback run once the feed is connected.
	trigger func(c *wspool.Client, fire func())
}

func opts(o ...wspool.Option) []wspool.Option { return o }

func firingHandler(fire func(), err error) wspool.Handler {
	return func(context.Context, wspool.Message) error { fire(); return err }
}

var callbackCases = []callbackCase{
	{name: "handler", setup: func(fire func()) (wspool.Handler, []wspool.Option) {
		return firingHandler(fire, nil), nil
	}},
	{name: "queued handler", setup: func(fire func()) (wspool.Handler, []wspool.Option) {
		return firingHandler(fire, nil), opts(wspool.WithQueue(wspool.Queue{Messages: 8}))
	}},
	{name: "OnConnect", setup: func(fire func()) (wspool.Handler, []wspool.Option) {
		return nil, opts(wspool.WithOnConnect(func(context.Context, *wspool.Conn) error { fire(); return nil }))
	}},
	{name: "OnStateChange", setup: func(fire func()) (wspool.Handler, []wspool.Option) {
		return nil, opts(wspool.WithOnStateChange(func(wspool.StateChange) { fire() }))
	}},
	{name: "OnError", setup: func(fire func()) (wspool.Handler, []wspool.Option) {
		return firingHandler(func() {}, errors.New("handler error")), opts(wspool.WithOnError(func(string, error) { fire() }))
	}},
	{name: "SendAsync done", setup: func(func()) (wspool.Handler, []wspool.Option) { return nil, nil },
		trigger: func(c *wspool.Client, fire func()) {
			c.SendAsync(wspool.TextMessage, []byte("x"), func(error) { fire() })
		}},
	{name: "duplicate filter", setup: func(fire func()) (wspool.Handler, []wspool.Option) {
		return nil, opts(wspool.WithMaxConnectionAge(60*time.Millisecond), wspool.WithDuplicateFilter(func(wspool.Message) bool { fire(); return false }))
	}},
	{name: "Heartbeat.IsReply", setup: func(fire func()) (wspool.Handler, []wspool.Option) {
		return nil, opts(wspool.WithHeartbeat(wspool.Heartbeat{Interval: time.Hour, Message: hbMessage, IsReply: func(wspool.Message) bool { fire(); return false }}))
	}},
	{name: "Heartbeat.Message", setup: func(fire func()) (wspool.Handler, []wspool.Option) {
		return nil, opts(wspool.WithHeartbeat(wspool.Heartbeat{Interval: 20 * time.Millisecond, Message: func() (wspool.MessageType, []byte) { fire(); return hbMessage() }}))
	}},
	{name: "request func", setup: func(fire func()) (wspool.Handler, []wspool.Option) {
		return nil, opts(wspool.WithRequestFunc(func(context.Context, *url.URL, http.Header) error { fire(); return nil }))
	}},
	{name: "permanent func", setup: func(fire func()) (wspool.Handler, []wspool.Option) {
		return nil, opts(wspool.WithPermanentFunc(func(error) bool { fire(); return false }))
	}},
	{name: "retry policy", setup: func(fire func()) (wspool.Handler, []wspool.Option) {
		return nil, opts(wspool.WithRetryPolicy(func(int, error) (time.Duration, bool) { fire(); return 10 * time.Millisecond, true }))
	}},
	{name: "Sequence.Extract", setup: func(fire func()) (wspool.Handler, []wspool.Option) {
		return nil, opts(wspool.WithSequence(wspool.Sequence{Extract: func(wspool.Message) (string, uint64, bool) { fire(); return "", 0, false }}))
	}},
	{name: "Sequence.OnGap", setup: func(fire func()) (wspool.Handler, []wspool.Option) {
		var n atomic.Uint64
		return nil, opts(wspool.WithSequence(wspool.Sequence{
			Extract: func(wspool.Message) (string, uint64, bool) { return "", n.Add(2), true }, // every message skips one
			OnGap:   func(wspool.Gap) error { fire(); return nil },
		}))
	}},
	{name: "ServerPing.Reply", setup: func(fire func()) (wspool.Handler, []wspool.Option) {
		return nil, opts(wspool.WithServerPing(wspool.ServerPing{Reply: func(wspool.Message) (wspool.MessageType, []byte, bool) {
			fire()
			return wspool.TextMessage, []byte("pong"), true
		}}))
	}},
	{name: "standby handler", setup: func(fire func()) (wspool.Handler, []wspool.Option) {
		return firingHandler(fire, nil), opts(
			wspool.WithSequence(wspool.Sequence{Extract: func(wspool.Message) (string, uint64, bool) { return "", 0, false }}),
			wspool.WithStandby(wspool.Standby{Connections: 1}))
	}},
	{name: "timings func", setup: func(fire func()) (wspool.Handler, []wspool.Option) {
		return nil, opts(wspool.WithTimings(func(wspool.Timing) { fire() }))
	}},
}

func hbMessage() (wspool.MessageType, []byte) { return wspool.TextMessage, []byte("hb") }

type methodCase struct {
	name string
	call func(ctx context.Context, p *wspool.Pool, c *wspool.Client, url string) error
	// stopsPool: the method ends Pool.Run by itself.
	stopsPool bool
}

var addSeq atomic.Int64

var methodCases = []methodCase{
	{name: "Send", call: func(ctx context.Context, _ *wspool.Pool, c *wspool.Client, _ string) error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_ = c.Send(ctx, wspool.TextMessage, []byte("from callback"))
		return nil
	}},
	{name: "SendAsync", call: func(_ context.Context, _ *wspool.Pool, c *wspool.Client, _ string) error {
		c.SendAsync(wspool.TextMessage, []byte("from callback"), nil)
		return nil
	}},
	{name: "Close", call: func(_ context.Context, _ *wspool.Pool, c *wspool.Client, _ string) error { return c.Close() }},
	{name: "State+Stats+Name+Done", call: func(_ context.Context, p *wspool.Pool, c *wspool.Client, _ string) error {
		_, _, _ = c.State(), c.Stats(), c.Name()
		select { // Done and Pool.Done never block; waiting on them here would wait for this very callback
		case <-c.Done():
		case <-p.Done():
		default:
		}
		return nil
	}},
	{name: "Run", call: func(ctx context.Context, _ *wspool.Pool, c *wspool.Client, _ string) error {
		if err := c.Run(ctx); !errors.Is(err, wspool.ErrAlreadyRunning) && !errors.Is(err, wspool.ErrClosed) {
			return fmt.Errorf("Run from a callback: %v, want ErrAlreadyRunning", err)
		}
		return nil
	}},
	{name: "Pool.Add", call: func(_ context.Context, p *wspool.Pool, _ *wspool.Client, url string) error {
		_, err := p.Add(url+"/added", nil, wspool.WithName(fmt.Sprintf("added-%d", addSeq.Add(1))))
		if err != nil && !errors.Is(err, wspool.ErrClosed) {
			return err
		}
		return nil
	}},
	{name: "Pool.Remove", call: func(_ context.Context, p *wspool.Pool, c *wspool.Client, _ string) error {
		if err := p.Remove(c.Name()); err != nil && !errors.Is(err, wspool.ErrNotFound) {
			return err
		}
		return nil
	}},
	{name: "Pool.Close", stopsPool: true, call: func(_ context.Context, p *wspool.Pool, _ *wspool.Client, _ string) error { return p.Close() }},
	{name: "Pool.Stats+Clients", call: func(_ context.Context, p *wspool.Pool, _ *wspool.Client, _ string) error {
		_, _ = p.Stats(), p.Clients()
		return nil
	}},
	{name: "Reconnect", call: func(_ context.Context, _ *wspool.Pool, c *wspool.Client, _ string) error {
		_ = c.Reconnect(errors.New("from a callback"))
		return nil
	}},
	{name: "Rotate", call: func(ctx context.Context, _ *wspool.Pool, c *wspool.Client, _ string) error {
		_ = c.Rotate(ctx)
		return nil
	}},
	{name: "Drain", call: func(ctx context.Context, _ *wspool.Pool, c *wspool.Client, _ string) error {
		_ = c.Drain(ctx)
		return nil
	}},
	{name: "Pool.Drain", stopsPool: true, call: func(ctx context.Context, p *wspool.Pool, _ *wspool.Client, _ string) error {
		_ = p.Drain(ctx)
		return nil
	}},
	{name: "LastSequence", call: func(_ context.Context, _ *wspool.Pool, c *wspool.Client, _ string) error {
		c.LastSequence("")
		return nil
	}},
	{name: "Pool.Run", call: func(ctx context.Context, p *wspool.Pool, _ *wspool.Client, _ string) error {
		if err := p.Run(ctx); !errors.Is(err, wspool.ErrAlreadyRunning) && !errors.Is(err, wspool.ErrClosed) {
			return fmt.Errorf("Pool.Run from a callback: %v, want ErrAlreadyRunning", err)
		}
		return nil
	}},
}

// TestCallbackCallsEveryMethod drives every (callback, method) pair: the
// method, called from inside the callback, returns (no deadlock), and the
// pool then shuts down with nothing left running.
func TestCallbackCallsEveryMethod(t *testing.T) {
	for _, cb := range callbackCases {
		for _, m := range methodCases {
			t.Run(cb.name+"/"+m.name, func(t *testing.T) {
				t.Parallel()
				runReentryPair(t, cb, m, false)
			})
		}
	}
}

// TestCallbackGoroutineCallsEveryMethod drives every (callback, method) pair
// with the method called from a goroutine the callback starts and waits for
// (an errgroup branch in a handler, a go func in OnConnect): the library
// cannot recognise such a goroutine, so nothing may depend on recognising
// it. On the goroutine-identity design (own.go) Close, Pool.Remove and
// Pool.Close deadlocked here.
func TestCallbackGoroutineCallsEveryMethod(t *testing.T) {
	for _, cb := range callbackCases {
		for _, m := range methodCases {
			t.Run(cb.name+"/"+m.name, func(t *testing.T) {
				t.Parallel()
				runReentryPair(t, cb, m, true)
			})
		}
	}
}

func runReentryPair(t *testing.T, cb callbackCase, m methodCase, inGoroutine bool) {
	base := reentryServer(t)
	pool, err := wspool.NewPool(wspool.WithPingInterval(50*time.Millisecond), wspool.WithBackoff(10*time.Millisecond, 50*time.Millisecond),
		wspool.WithCloseTimeout(500*time.Millisecond), wspool.WithSendBuffer(wspool.SendBuffer{Messages: 16}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var client atomic.Pointer[wspool.Client]
	var once sync.Once
	returned := make(chan error, 1)
	fire := func() {
		c := client.Load()
		if c == nil {
			return // Add has not returned yet: the next invocation calls
		}
		once.Do(func() {
			errc := make(chan error, 1)
			go func() {
				// Watchdog: report a call that does not return while the
				// callback stays blocked in it.
				select {
				case <-errc:
				case <-time.After(10 * time.Second):
					returned <- fmt.Errorf("%s from %s did not return within 10s", m.name, cb.name)
				}
			}()
			var err error
			if inGoroutine {
				var g errgroup.Group
				g.Go(func() error { return m.call(ctx, pool, c, base) })
				err = g.Wait()
			} else {
				err = m.call(ctx, pool, c, base)
			}
			errc <- err
			select {
			case returned <- err:
			default:
			}
		})
	}
	handler, feedOpts := cb.setup(fire)
	c, err := pool.Add(base+"/feed", handler, feedOpts...)
	if err != nil {
		t.Fatal(err)
	}
	client.Store(c)
	runErr := make(chan error, 1)
	go func() { runErr <- pool.Run(ctx) }()
	if cb.trigger != nil {
		waitFor(t, 10*time.Second, "the feed to connect", func() bool { return c.State() == wspool.StateConnected })
		cb.trigger(c, fire)
	}
	select {
	case err := <-returned:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the %s callback never ran the call (or it never returned)", cb.name)
	}
	if !m.stopsPool {
		cancel()
	}
	select {
	case err := <-runErr:
		if err != nil {
			t.Errorf("Pool.Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("Pool.Run did not return after %s from %s", m.name, cb.name)
	}
}

// TestCallbackPanicsAreReported: a panic in any callback is recovered,
// reported as a *HandlerError naming the callback, and the feed goes on.
func TestCallbackPanicsAreReported(t *testing.T) {
	want := map[string]string{"handler": "", "queued handler": "", "standby handler": ""}
	for _, cb := range callbackCases {
		t.Run(cb.name, func(t *testing.T) {
			t.Parallel()
			name, ok := want[cb.name]
			if !ok {
				name = cb.name
			}
			base := reentryServer(t)
			var once sync.Once
			fired := make(chan struct{})
			fire := func() {
				once.Do(func() {
					close(fired)
					panic("boom from " + cb.name)
				})
			}
			handler, feedOpts := cb.setup(fire)
			reported := make(chan *wspool.HandlerError, 16)
			if cb.name != "OnError" {
				feedOpts = append(feedOpts, wspool.WithOnError(func(_ string, err error) {
					var he *wspool.HandlerError
					if errors.As(err, &he) && he.Panic != nil {
						select {
						case reported <- he:
						default:
						}
					}
				}))
			}
			feedOpts = append(feedOpts, wspool.WithPingInterval(50*time.Millisecond), wspool.WithBackoff(10*time.Millisecond, 50*time.Millisecond))
			c, err := wspool.NewClient(base+"/feed", handler, feedOpts...)
			if err != nil {
				t.Fatal(err)
			}
			runClient(t, c)
			if cb.trigger != nil {
				waitFor(t, 10*time.Second, "the feed to connect", func() bool { return c.State() == wspool.StateConnected })
				cb.trigger(c, fire)
			}
			recv(t, fired, 10*time.Second, "the callback")
			var he *wspool.HandlerError
			if cb.name == "OnError" {
				waitFor(t, 10*time.Second, "the panic in the stats", func() bool {
					return errors.As(c.Stats().LastError, &he) && he.Panic != nil
				})
			} else {
				he = recv(t, reported, 10*time.Second, "the panic's report")
			}
			if he.Callback != name || he.Panic != "boom from "+cb.name || len(he.Stack) == 0 {
				t.Fatalf("reported %+v, want Callback %q and the panic value", he, name)
			}
			// The feed goes on: connected and reading.
			n := c.Stats().MessagesIn
			waitFor(t, 10*time.Second, "more messages after the panic", func() bool {
				return c.State() == wspool.StateConnected && c.Stats().MessagesIn > n+2
			})
		})
	}
}

package wspool_test

// Regression tests for issue 11: features combined must never wedge, strand
// or lose a send. Each test names the finding it covers.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
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

// callWithin runs f and fails the test if it has not returned within d (a
// deadlock); it returns f's error.
func callWithin(t *testing.T, d time.Duration, what string, f func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- f() }()
	select {
	case err := <-errc:
		return err
	case <-time.After(d):
		t.Fatalf("%s did not return within %v (deadlock?)", what, d)
		return nil
	}
}

// Finding 1: a handler (on the reader's goroutine) that Sends with a send
// buffer after its connection died must not wait for a flush that only its
// own goroutine could do. The feed must reconnect.
func TestSendFromHandlerAfterConnectionDied(t *testing.T) {
	var conns atomic.Int64
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		if conns.Add(1) == 1 {
			_ = c.WriteMessage(websocket.TextMessage, []byte("first"))
		}
		wstest.Drain(c, r)
	})
	proxy := newProxy(t, srv.Addr())
	inHandler := make(chan struct{})
	proceed := make(chan struct{})
	handlerSend := make(chan error, 1)
	ev := newEvents()
	var c *wspool.Client
	c, err := wspool.NewClient("ws://"+proxy.Addr()+"/", func(ctx context.Context, m wspool.Message) error {
		if string(m.Data) != "first" {
			return nil
		}
		close(inHandler)
		<-proceed
		handlerSend <- c.Send(context.Background(), wspool.TextMessage, []byte("from handler"))
		return nil
	}, wspool.WithSendBuffer(wspool.SendBuffer{Messages: 8}), wspool.WithPingInterval(0), ev.option())
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	recv(t, inHandler, 10*time.Second, "the handler")
	// Kill the connection under the handler: reset it, then write until
	// the write fails (which tears the connection down).
	proxy.ResetAll()
	deadline := time.Now().Add(10 * time.Second)
	for c.Send(context.Background(), wspool.TextMessage, []byte("probe")) == nil {
		if time.Now().After(deadline) {
			t.Fatal("writes to a reset connection kept succeeding")
		}
		time.Sleep(5 * time.Millisecond) // pacing the probe writes, not waiting for an event
	}
	close(proceed)
	err = recv(t, handlerSend, 10*time.Second, "the handler's Send to return")
	if !errors.Is(err, wspool.ErrNotConnected) {
		t.Fatalf("handler's Send after the connection died: %v, want ErrNotConnected", err)
	}
	ev.waitCount(t, wspool.StateConnected, 2, 10*time.Second)
}

// Finding 1 with WithQueue: a queued handler waiting in Send must not keep
// Run from returning after a permanent failure.
func TestQueuedHandlerSendDoesNotBlockPermanentFailure(t *testing.T) {
	var conns atomic.Int64
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		conns.Add(1)
		_ = c.WriteMessage(websocket.TextMessage, []byte("x"))
		_ = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, ""))
		wstest.Drain(c, r)
	})
	backingOff := make(chan struct{})
	var once sync.Once
	var c *wspool.Client
	sendErr := make(chan error, 1)
	c, err := wspool.NewClient(srv.URL("/"), func(ctx context.Context, m wspool.Message) error {
		<-backingOff
		sendErr <- c.Send(context.Background(), wspool.TextMessage, []byte("reply"))
		return nil
	},
		wspool.WithQueue(wspool.Queue{Messages: 4}),
		wspool.WithSendBuffer(wspool.SendBuffer{Messages: 4}),
		wspool.WithBackoff(50*time.Millisecond, 100*time.Millisecond),
		wspool.WithOnStateChange(func(sc wspool.StateChange) {
			if sc.To == wspool.StateBackingOff {
				srv.SetReject(func(*http.Request) (int, http.Header) { return http.StatusForbidden, nil })
				once.Do(func() { close(backingOff) })
			}
		}),
	)
	if err != nil {
		t.Fatal(err)
	}
	err = callWithin(t, 15*time.Second, "Run after a permanent failure", func() error { return c.Run(context.Background()) })
	var he *wspool.HandshakeError
	if !errors.As(err, &he) || he.StatusCode != http.StatusForbidden {
		t.Fatalf("Run: %v, want the 403", err)
	}
	if err := recv(t, sendErr, 5*time.Second, "the handler's Send"); !errors.Is(err, wspool.ErrNotConnected) && !errors.Is(err, wspool.ErrClosed) {
		t.Fatalf("handler's Send: %v", err)
	}
}

// Finding 1 with DrainBeforeReconnect: the feed waits for the queue to
// drain before it redials; a handler Sending meanwhile must not wait for
// that redial.
func TestDrainBeforeReconnectHandlerSend(t *testing.T) {
	var conns atomic.Int64
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		if conns.Add(1) == 1 {
			_ = c.WriteMessage(websocket.TextMessage, []byte("x"))
			_ = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, ""))
		}
		wstest.Drain(c, r)
	})
	ev := newEvents()
	var c *wspool.Client
	backingOff := make(chan struct{})
	var once sync.Once
	c, err := wspool.NewClient(srv.URL("/"), func(ctx context.Context, m wspool.Message) error {
		<-backingOff
		_ = c.Send(ctx, wspool.TextMessage, []byte("reply"))
		return nil
	},
		wspool.WithQueue(wspool.Queue{Messages: 4, DrainBeforeReconnect: true}),
		wspool.WithSendBuffer(wspool.SendBuffer{Messages: 4}),
		wspool.WithBackoff(20*time.Millisecond, 50*time.Millisecond),
		wspool.WithOnStateChange(func(sc wspool.StateChange) {
			ev.record(sc)
			if sc.To == wspool.StateBackingOff {
				once.Do(func() { close(backingOff) })
			}
		}),
	)
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	ev.waitCount(t, wspool.StateConnected, 2, 10*time.Second)
}

// rotServer is a feed server for rotation tests: it broadcasts one global
// sequence to every open connection (so a rotation's overlap shows as
// duplicates and a cut-short drain as a gap) and records what it receives.
type rotServer struct {
	mu      sync.Mutex
	conns   map[*websocket.Conn]*sync.Mutex
	perConn []map[string][]int // per accepted connection: sender -> numbers in arrival order
	seq     int
	stop    chan struct{}
	done    chan struct{}
}

func newRotServer(t *testing.T) (*rotServer, *wstest.Server) {
	rs := &rotServer{conns: map[*websocket.Conn]*sync.Mutex{}, stop: make(chan struct{}), done: make(chan struct{})}
	srv := newServer(t, rs.handle)
	go rs.publish()
	t.Cleanup(func() {
		close(rs.stop)
		<-rs.done
	})
	return rs, srv
}

func (rs *rotServer) handle(c *websocket.Conn, _ *http.Request) {
	wmu := &sync.Mutex{}
	mine := map[string][]int{}
	rs.mu.Lock()
	rs.conns[c] = wmu
	rs.perConn = append(rs.perConn, mine)
	// "hello" tells the client that this connection now gets the stream
	// (what a subscription's acknowledgement does for a real upstream).
	_ = c.WriteMessage(websocket.TextMessage, []byte("hello"))
	rs.mu.Unlock()
	defer func() {
		rs.mu.Lock()
		delete(rs.conns, c)
		rs.mu.Unlock()
	}()
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			return
		}
		sender, n, ok := strings.Cut(string(data), ":")
		if !ok {
			continue
		}
		v, _ := strconv.Atoi(n)
		rs.mu.Lock()
		mine[sender] = append(mine[sender], v)
		rs.mu.Unlock()
	}
}

func (rs *rotServer) publish() {
	defer close(rs.done)
	tk := time.NewTicker(time.Millisecond)
	defer tk.Stop()
	for {
		select {
		case <-rs.stop:
			return
		case <-tk.C:
		}
		rs.mu.Lock()
		rs.seq++
		msg := []byte(strconv.Itoa(rs.seq))
		for c, wmu := range rs.conns {
			wmu.Lock()
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_ = c.WriteMessage(websocket.TextMessage, msg)
			wmu.Unlock()
		}
		rs.mu.Unlock()
	}
}

// Findings 2 and 3: with concurrent senders and many make-before-break
// rotations, the inbound stream has no gap (a send never kills the old
// connection's drain), no Send fails while the feed stays connected, and,
// with a send buffer, nothing is stranded in it and every sender's messages
// reach the server once, in order.
func TestRotationWithConcurrentSends(t *testing.T) {
	rotations := 35
	if testing.Short() {
		rotations = 12
	}
	for _, buffered := range []bool{false, true} {
		t.Run(fmt.Sprintf("sendbuffer=%v", buffered), func(t *testing.T) {
			rs, srv := newRotServer(t)
			var mu sync.Mutex
			last, gaps := 0, 0
			var lastConn uint64
			opts := []wspool.Option{
				wspool.WithMaxConnectionAge(120 * time.Millisecond),
				wspool.WithDuplicateFilter(func(m wspool.Message) bool {
					n, _ := strconv.Atoi(string(m.Data))
					mu.Lock()
					defer mu.Unlock()
					return n <= last
				}),
				wspool.WithPingInterval(0),
				// Wait for the server's acknowledgement before the switch,
				// as a real subscription would.
				wspool.WithOnConnect(func(ctx context.Context, cn *wspool.Conn) error {
					m, err := cn.ReadMessage(ctx)
					if err == nil && string(m.Data) != "hello" {
						err = fmt.Errorf("first message %q, want hello", m.Data)
					}
					return err
				}),
			}
			if buffered {
				opts = append(opts, wspool.WithSendBuffer(wspool.SendBuffer{Messages: 1024}))
			}
			ev := newEvents()
			opts = append(opts, ev.option())
			c, err := wspool.NewClient(srv.URL("/"), func(ctx context.Context, m wspool.Message) error {
				n, _ := strconv.Atoi(string(m.Data))
				mu.Lock()
				defer mu.Unlock()
				if last != 0 && n != last+1 {
					gaps++
					t.Logf("gap: %d -> %d on conn %d (previous message on conn %d)", last, n, m.ConnID, lastConn)
				}
				last, lastConn = n, m.ConnID
				return nil
			}, opts...)
			if err != nil {
				t.Fatal(err)
			}
			runClient(t, c)
			ev.waitCount(t, wspool.StateConnected, 1, 10*time.Second)

			const senders = 6
			var failed atomic.Int64
			var firstErr atomic.Value
			sent := make([]int, senders)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for s := range senders {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 1; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						err := c.Send(context.Background(), wspool.TextMessage, fmt.Appendf(nil, "s%d:%d", s, i))
						if err != nil {
							failed.Add(1)
							firstErr.CompareAndSwap(nil, err)
							continue
						}
						sent[s] = i
						time.Sleep(200 * time.Microsecond) // pacing the senders, not waiting for an event
					}
				}()
			}
			waitFor(t, 30*time.Second, fmt.Sprint(rotations, " rotations"), func() bool { return c.Stats().Rotations >= int64(rotations) })
			close(stop)
			wg.Wait()
			st := c.Stats()
			if n := failed.Load(); n > 0 {
				t.Errorf("%d sends failed while the feed stayed connected (first: %v)", n, firstErr.Load())
			}
			if st.Disconnects != st.Rotations {
				t.Errorf("%d disconnects for %d rotations: a connection was lost (last error %v)", st.Disconnects, st.Rotations, st.LastError)
			}
			if st.SendBuffered != 0 {
				t.Errorf("%d messages stranded in the send buffer of a connected feed", st.SendBuffered)
			}
			mu.Lock()
			if gaps > 0 {
				t.Errorf("%d gaps in the inbound sequence across %d rotations", gaps, st.Rotations)
			}
			mu.Unlock()
			// Every written message reaches the server once, in order per
			// sender: the connections in the order they were accepted, each
			// read to its close, carry every sender's numbers 1, 2, 3, ...
			// (the server reads two connections at once during a switch, so
			// order is judged per connection).
			received := func(s int) []int {
				var all []int
				for _, m := range rs.perConn {
					all = append(all, m[fmt.Sprintf("s%d", s)]...)
				}
				return all
			}
			waitFor(t, 10*time.Second, "the server to read every send", func() bool {
				rs.mu.Lock()
				defer rs.mu.Unlock()
				for s := range senders {
					if got := received(s); len(got) < sent[s] {
						return false
					}
				}
				return true
			})
			rs.mu.Lock()
			defer rs.mu.Unlock()
			for s := range senders {
				got := received(s)
				for i, v := range got {
					if v != i+1 {
						t.Fatalf("sender %d: message %d arrived as number %d (lost, doubled or reordered): %v", s, i+1, v, got[max(0, i-3):min(len(got), i+3)])
					}
				}
			}
			mu.Lock()
			upTo := last
			mu.Unlock()
			t.Logf("%d rotations, %d disconnects, inbound up to %d, sends per sender %v", st.Rotations, st.Disconnects, upTo, sent)
		})
	}
}

// Finding 4: a feed reaching its host again wakes the host's backing-off
// feeds only if it had failed attempts itself; a feed whose routine drops
// and reconnects never cut another feed's backoff short.
func TestWakeOnlyAfterWakerFailed(t *testing.T) {
	var drops atomic.Int64
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		// The healthy feed's connections are dropped after 50 ms, again and again.
		time.Sleep(50 * time.Millisecond) // the server's own schedule
		drops.Add(1)
	})
	srv.SetReject(func(r *http.Request) (int, http.Header) {
		if r.URL.Path == "/broken" {
			return http.StatusInternalServerError, nil
		}
		return 0, nil
	})
	pool, err := wspool.NewPool(wspool.WithPingInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Add(srv.URL("/healthy"), nil, wspool.WithMinUptime(10*time.Millisecond), wspool.WithBackoff(10*time.Millisecond, 20*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	broken, err := pool.Add(srv.URL("/broken"), nil, wspool.WithBackoff(2*time.Second, 6*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pool.Run(ctx) }()
	defer func() {
		cancel()
		recv(t, done, 10*time.Second, "Pool.Run")
	}()
	waitFor(t, 10*time.Second, "20 routine drops of the healthy feed", func() bool { return drops.Load() >= 20 })
	// Over that time (>= 1 s) the broken feed, waiting 1-3 s then 1.5-4.5 s
	// ..., can have made at most 2 attempts.
	if n := broken.Stats().Attempts; n > 3 {
		t.Fatalf("the broken feed made %d attempts while another feed of its host dropped routinely: the wake cut its backoff short", n)
	}
}

// Finding 5: Close before Run reports buffered sends (Client.Close,
// Pool.Close, Pool.Remove).
func TestCloseBeforeRunFailsBufferedSends(t *testing.T) {
	opts := []wspool.Option{wspool.WithSendBuffer(wspool.SendBuffer{Messages: 4})}
	check := func(t *testing.T, c *wspool.Client, closeIt func() error) {
		asyncErr := make(chan error, 1)
		c.SendAsync(wspool.TextMessage, []byte("a"), func(err error) { asyncErr <- err })
		sendErr := make(chan error, 1)
		go func() { sendErr <- c.Send(context.Background(), wspool.TextMessage, []byte("b")) }()
		waitFor(t, 5*time.Second, "two buffered sends", func() bool { return c.Stats().SendBuffered == 2 })
		if err := callWithin(t, 5*time.Second, "Close", closeIt); err != nil {
			t.Fatal(err)
		}
		if err := recv(t, asyncErr, 5*time.Second, "SendAsync's done"); !errors.Is(err, wspool.ErrClosed) {
			t.Fatalf("SendAsync done: %v, want ErrClosed", err)
		}
		if err := recv(t, sendErr, 5*time.Second, "Send"); !errors.Is(err, wspool.ErrClosed) {
			t.Fatalf("Send: %v, want ErrClosed", err)
		}
	}
	t.Run("Client.Close", func(t *testing.T) {
		c, err := wspool.NewClient("ws://127.0.0.1:1/", nil, opts...)
		if err != nil {
			t.Fatal(err)
		}
		check(t, c, c.Close)
	})
	t.Run("Pool.Close", func(t *testing.T) {
		p, _ := wspool.NewPool()
		c, err := p.Add("ws://127.0.0.1:1/", nil, opts...)
		if err != nil {
			t.Fatal(err)
		}
		check(t, c, p.Close)
	})
	t.Run("Pool.Remove", func(t *testing.T) {
		p, _ := wspool.NewPool()
		c, err := p.Add("ws://127.0.0.1:1/", nil, opts...)
		if err != nil {
			t.Fatal(err)
		}
		check(t, c, func() error { return p.Remove(c.Name()) })
	})
}

// Finding 6 (first fixed by failing the attempt, since a gorilla read cannot
// be resumed): a Conn.ReadMessage interrupted by a short sub-context returns
// the context's error and leaves the connection usable, because OnConnect's
// reads come from the reader's hold buffer, not the socket. The message that
// arrives later is delivered on the same connection: one Connected, no
// failed attempt.
func TestOnConnectReadTimeoutKeepsConnection(t *testing.T) {
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		time.Sleep(100 * time.Millisecond) // the server answers late, on purpose
		_ = c.WriteMessage(websocket.TextMessage, []byte("data"))
		wstest.Drain(c, r)
	})
	ev := newEvents()
	got := make(chan string, 1)
	readErr := make(chan error, 1)
	c, err := wspool.NewClient(srv.URL("/"), func(ctx context.Context, m wspool.Message) error {
		select {
		case got <- string(m.Data):
		default:
		}
		return nil
	}, ev.option(), wspool.WithBackoff(10*time.Millisecond, 20*time.Millisecond),
		wspool.WithOnConnect(func(ctx context.Context, cn *wspool.Conn) error {
			rctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
			defer cancel()
			_, err := cn.ReadMessage(rctx) // times out; OnConnect carries on regardless
			readErr <- err
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	if err := recv(t, readErr, 10*time.Second, "ReadMessage's error"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ReadMessage returned %v, want the read's deadline", err)
	}
	if m := recv(t, got, 10*time.Second, "a message"); m != "data" {
		t.Fatalf("delivered %q, want data", m)
	}
	if n := ev.count(wspool.StateConnected); n != 1 || ev.count(wspool.StateBackingOff) != 0 {
		t.Fatalf("%d Connected transitions, want 1 and no failed attempt: %v", n, ev.snapshot())
	}
}

// Finding 7: WithMaxAttempts counts failed attempts; the drop of a healthy
// connection is not one, so WithMaxAttempts(1) still redials after it.
func TestMaxAttemptsAfterHealthyConnection(t *testing.T) {
	var conns atomic.Int64
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		if conns.Add(1) == 1 {
			time.Sleep(100 * time.Millisecond) // stays up past the minimum uptime
			return
		}
		wstest.Drain(c, r)
	})
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil, ev.option(), wspool.WithMaxAttempts(1),
		wspool.WithMinUptime(20*time.Millisecond), wspool.WithBackoff(10*time.Millisecond, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	ev.waitCount(t, wspool.StateConnected, 2, 10*time.Second)
}

// Finding 8: Close while a send is stuck on a peer that does not read
// returns within the close timeout, not the write timeout: during
// OnConnect and during the send-buffer flush.
func TestCloseDuringStuckWrite(t *testing.T) {
	big := make([]byte, 64<<20)
	stuck := func(t *testing.T, opts ...wspool.Option) *wspool.Client {
		release := make(chan struct{})
		srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
			<-release // never reads
		})
		t.Cleanup(func() { close(release) }) // before the server's Close waits for this handler
		opts = append(opts, wspool.WithWriteTimeout(time.Minute), wspool.WithCloseTimeout(200*time.Millisecond), wspool.WithPingInterval(0))
		c, err := wspool.NewClient(srv.URL("/"), nil, opts...)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	t.Run("OnConnect", func(t *testing.T) {
		inSend := make(chan struct{})
		c := stuck(t, wspool.WithOnConnect(func(ctx context.Context, cn *wspool.Conn) error {
			close(inSend)
			return cn.Send(ctx, wspool.BinaryMessage, big)
		}))
		stop := runClient(t, c)
		recv(t, inSend, 10*time.Second, "OnConnect's send")
		callWithin(t, 10*time.Second, "Run after cancel", stop)
	})
	t.Run("flush", func(t *testing.T) {
		c := stuck(t, wspool.WithSendBuffer(wspool.SendBuffer{Messages: 2, Bytes: 128 << 20}))
		c.SendAsync(wspool.BinaryMessage, big, nil)
		stop := runClient(t, c)
		waitFor(t, 10*time.Second, "the flush to start", func() bool {
			return c.State() == wspool.StateConnected && c.Stats().SendBuffered == 0
		})
		callWithin(t, 10*time.Second, "Run after cancel", stop)
	})
}

// Finding 9: time the reader spends in IsReply (or the duplicate filter)
// is ours, not the peer's: it must not count as a missed pong.
func TestSlowIsReplyIsNotAMissedPong(t *testing.T) {
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		gone, release := wstest.ReadInBackground(c) // answers pings throughout
		defer release()
		_ = c.WriteMessage(websocket.TextMessage, []byte("slow"))
		time.Sleep(800 * time.Millisecond) // the server's schedule
		_ = c.WriteMessage(websocket.TextMessage, []byte("after"))
		<-gone
	})
	after := make(chan struct{})
	c, err := wspool.NewClient(srv.URL("/"), func(ctx context.Context, m wspool.Message) error {
		if string(m.Data) == "after" {
			close(after)
		}
		return nil
	},
		wspool.WithPingInterval(50*time.Millisecond), wspool.WithPongTimeout(50*time.Millisecond),
		wspool.WithHeartbeat(wspool.Heartbeat{
			Interval: time.Hour,
			Message:  func() (wspool.MessageType, []byte) { return wspool.TextMessage, []byte("hb") },
			IsReply: func(m wspool.Message) bool {
				if string(m.Data) == "slow" {
					time.Sleep(600 * time.Millisecond) // a slow user function, on purpose
				}
				return false
			},
		}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	select {
	case <-after:
	case <-time.After(10 * time.Second):
		st := c.Stats()
		t.Fatalf("no message after the slow IsReply on the first connection: %d disconnects, last error %v", st.Disconnects, st.LastError)
	}
	if st := c.Stats(); st.Disconnects != 0 || st.Connects != 1 {
		t.Fatalf("a slow IsReply was blamed on the peer: %d connects, %d disconnects, last error %v", st.Connects, st.Disconnects, st.LastError)
	}
}

package wspool_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/faultproxy"
	"github.com/wspool/wspool/internal/seqserver"
	"github.com/wspool/wspool/internal/wstest"
)

func startSeqServer(t *testing.T, interval time.Duration) *seqserver.Server {
	t.Helper()
	s, err := seqserver.New(interval)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// seqOf is the Sequence.Extract of the seqserver's messages.
func seqOf(m wspool.Message) (string, uint64, bool) {
	n, err := strconv.ParseUint(string(m.Data), 10, 64)
	return "", n, err == nil
}

// resumeFrom is a request func that resumes the stream after the last
// number delivered.
func resumeFrom(c **wspool.Client) wspool.Option {
	return wspool.WithRequestFunc(func(_ context.Context, u *url.URL, _ http.Header) error {
		if last, ok := (*c).LastSequence(""); ok {
			q := u.Query()
			q.Set("from", strconv.FormatUint(last+1, 10))
			u.RawQuery = q.Encode()
		}
		return nil
	})
}

// orderChecker is a handler that checks it sees 1, 2, 3, ... (from the
// first number it sees) exactly once, in order.
type orderChecker struct {
	mu      sync.Mutex
	last    uint64
	n       int
	bad     []string
	arrived []time.Time // delivery times, for stall measurements
	perConn map[uint64]int
}

func (o *orderChecker) handle(_ context.Context, m wspool.Message) error {
	n, err := strconv.ParseUint(string(m.Data), 10, 64)
	if err != nil {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.last != 0 && n != o.last+1 && len(o.bad) < 10 {
		o.bad = append(o.bad, fmt.Sprintf("%d after %d (conn %d)", n, o.last, m.ConnID))
	}
	o.last = n
	o.n++
	o.arrived = append(o.arrived, time.Now())
	if o.perConn == nil {
		o.perConn = map[uint64]int{}
	}
	o.perConn[m.ConnID]++
	return nil
}

func (o *orderChecker) lastSeen() uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.last
}

func (o *orderChecker) check(t *testing.T) {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.bad) > 0 {
		t.Fatalf("out of sequence (gap, duplicate or reorder): %v", o.bad)
	}
}

// One connection resuming from the last number delivered, through 100
// drops: every number exactly once, in order.
func TestResumeAcrossDrops(t *testing.T) {
	srv := startSeqServer(t, 2*time.Millisecond)
	var o orderChecker
	var c *wspool.Client
	c, err := wspool.NewClient(srv.URL("/feed"), o.handle, wspool.WithSequence(wspool.Sequence{Extract: seqOf}),
		resumeFrom(&c), wspool.WithBackoff(5*time.Millisecond, 20*time.Millisecond), wspool.WithPingInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	for i := range 100 {
		waitFor(t, 10*time.Second, "a connection that delivers", func() bool {
			return len(srv.Conns("/feed")) == 1 && c.State() == wspool.StateConnected && o.lastSeen() > 0
		})
		before := o.lastSeen()
		waitFor(t, 10*time.Second, "progress", func() bool { return o.lastSeen() > before+2 })
		for _, sc := range srv.Conns("/feed") {
			sc.Drop()
		}
		waitFor(t, 10*time.Second, fmt.Sprintf("reconnect %d", i+1), func() bool { return c.Stats().Connects >= int64(i+2) })
	}
	o.check(t)
	st := c.Stats()
	if st.Gaps != 0 {
		t.Fatalf("%d gaps reported", st.Gaps)
	}
	t.Logf("100 drops: %d numbers delivered in order (up to %d), %d duplicates dropped", o.n, o.lastSeen(), st.Duplicates)
}

// An injected gap is reported with its exact range; a resync asked for by
// OnGap fills it.
func TestGapReportedAndResynced(t *testing.T) {
	srv := startSeqServer(t, 2*time.Millisecond)
	var o orderChecker
	gaps := make(chan wspool.Gap, 4)
	var c *wspool.Client
	c, err := wspool.NewClient(srv.URL("/feed"), o.handle,
		wspool.WithSequence(wspool.Sequence{Extract: seqOf, OnGap: func(g wspool.Gap) error {
			gaps <- g
			return fmt.Errorf("resync: %w", wspool.ErrReconnect)
		}}),
		resumeFrom(&c), wspool.WithBackoff(5*time.Millisecond, 20*time.Millisecond), wspool.WithPingInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	waitFor(t, 10*time.Second, "delivery", func() bool { return o.lastSeen() > 10 })
	srv.Skip("/feed", 3)
	g := recv(t, gaps, 10*time.Second, "the gap")
	if g.Next != g.Last+4 || g.Missing() != 3 {
		t.Fatalf("gap %+v, want 3 numbers missing", g)
	}
	waitFor(t, 10*time.Second, "delivery past the gap", func() bool { return o.lastSeen() > g.Next+10 })
	o.check(t)
	if st := c.Stats(); st.Gaps != 1 || st.GapMessages != 3 || st.Connects != 2 {
		t.Fatalf("stats: %d gaps, %d missing, %d connects; want 1, 3, 2", st.Gaps, st.GapMessages, st.Connects)
	}
}

// Hot standby: two connections to the stream, each through its own fault
// proxy; one of them (the other stays up) is killed, blackholed or frozen at
// random 100 times. The handler sees every number exactly once, in order.
func TestStandbyLosesNothing(t *testing.T) {
	rounds := 100
	if testing.Short() {
		rounds = 20
	}
	srv := startSeqServer(t, 2*time.Millisecond)
	proxies := []*faultproxy.Proxy{newProxy(t, srv.Addr()), newProxy(t, srv.Addr())}
	var o orderChecker
	var c *wspool.Client
	c, err := wspool.NewClient("ws://"+proxies[0].Addr()+"/feed", o.handle,
		wspool.WithSequence(wspool.Sequence{Extract: seqOf}),
		wspool.WithStandby(wspool.Standby{Connections: 1, URLs: []string{"ws://" + proxies[1].Addr() + "/feed"}}),
		resumeFrom(&c),
		wspool.WithBackoff(5*time.Millisecond, 20*time.Millisecond),
		wspool.WithPingInterval(50*time.Millisecond), wspool.WithPongTimeout(100*time.Millisecond),
		wspool.WithStaleTimeout(150*time.Millisecond), wspool.WithHandshakeTimeout(time.Second),
		wspool.WithOnConnectTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	bothUp := func() bool {
		st := c.Stats()
		return st.State == wspool.StateConnected && len(st.Standby) == 1 && st.Standby[0].Connected
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	var stalls []time.Duration
	kinds := map[string]int{}
	for i := range rounds {
		waitFor(t, 20*time.Second, "both connections up", bothUp)
		before := o.lastSeen()
		waitFor(t, 10*time.Second, "progress", func() bool { return o.lastSeen() > before+2 })
		victim := rng.IntN(2)
		kind := []string{"kill", "blackhole", "freeze"}[rng.IntN(3)]
		kinds[kind]++
		o.mu.Lock()
		mark := len(o.arrived)
		o.mu.Unlock()
		start := time.Now()
		switch kind {
		case "kill":
			proxies[victim].ResetAll()
		case "blackhole":
			proxies[victim].SetMode(faultproxy.Blackhole)
		case "freeze":
			// The server side of the victim: its newest connection.
			if cs := srv.Conns("/feed"); len(cs) > 0 {
				slices.SortFunc(cs, func(a, b *seqserver.Conn) int { return int(a.ID - b.ID) })
				cs[len(cs)-1-victim%len(cs)].Freeze(true)
			}
		}
		// The stream must go on meanwhile: the next number after the fault.
		at := o.lastSeen()
		waitFor(t, 10*time.Second, fmt.Sprintf("round %d (%s): the stream to go on", i, kind), func() bool { return o.lastSeen() > at+5 })
		o.mu.Lock()
		var worst time.Duration
		prev := start
		for _, a := range o.arrived[mark:] {
			if d := a.Sub(prev); d > worst {
				worst = d
			}
			prev = a
		}
		o.mu.Unlock()
		stalls = append(stalls, worst)
		if kind == "blackhole" {
			time.Sleep(time.Duration(50+rng.IntN(100)) * time.Millisecond) // how long the fault lasts
			proxies[victim].SetMode(faultproxy.PassThrough)
		}
	}
	waitFor(t, 20*time.Second, "both connections up at the end", bothUp)
	o.check(t)
	st := c.Stats()
	slices.Sort(stalls)
	o.mu.Lock()
	delivered := o.n
	o.mu.Unlock()
	t.Logf("%d faults %v: %d numbers in order, %d duplicates dropped, %d gaps; primary won %d, standby won %d; stall after a fault: median %v, worst %v",
		rounds, kinds, delivered, st.Duplicates, st.Gaps, st.Won, st.Standby[0].Won, stalls[len(stalls)/2], stalls[len(stalls)-1])
	if st.Gaps != 0 {
		t.Fatalf("%d gaps", st.Gaps)
	}
}

// A data-level ping ({"ping":n}) is answered ({"pong":n}) within the
// upstream's deadline even while the handler is busy (WithQueue).
func TestServerPingAnsweredWhileHandlerBusy(t *testing.T) {
	var pongs atomic.Int64
	var late atomic.Int64
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		var wmu sync.Mutex
		pending := make(chan int64, 16)
		readerDone := make(chan struct{})
		defer func() { <-readerDone }()
		go func() {
			defer close(readerDone)
			for {
				_, data, err := c.ReadMessage()
				if err != nil {
					return
				}
				var p struct{ Pong int64 }
				if json.Unmarshal(data, &p) == nil && p.Pong > 0 {
					pongs.Add(1)
					select {
					case pending <- p.Pong:
					default:
					}
				}
			}
		}()
		for i := int64(1); i <= 10; i++ {
			wmu.Lock()
			_ = c.WriteMessage(websocket.TextMessage, []byte(`{"data":1}`))
			_ = c.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"ping":%d}`, i))
			wmu.Unlock()
			select {
			case <-pending:
			case <-time.After(300 * time.Millisecond): // the upstream's deadline
				late.Add(1)
				c.Close()
				return
			}
		}
	})
	c, err := wspool.NewClient(srv.URL("/"), func(ctx context.Context, m wspool.Message) error {
		time.Sleep(500 * time.Millisecond) // a busy handler
		return nil
	},
		wspool.WithQueue(wspool.Queue{Messages: 64}),
		wspool.WithServerPing(wspool.ServerPing{Reply: func(m wspool.Message) (wspool.MessageType, []byte, bool) {
			var p struct{ Ping int64 }
			if json.Unmarshal(m.Data, &p) != nil || p.Ping == 0 {
				return 0, nil, false
			}
			return wspool.TextMessage, fmt.Appendf(nil, `{"pong":%d}`, p.Ping), true
		}}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	waitFor(t, 20*time.Second, "10 pongs", func() bool { return pongs.Load() >= 10 || late.Load() > 0 })
	if late.Load() > 0 {
		t.Fatalf("a ping went unanswered for 300 ms while the handler was busy (%d answered)", pongs.Load())
	}
	if st := c.Stats(); st.ServerPings != 10 || st.Disconnects != 0 {
		t.Fatalf("stats: %d server pings, %d disconnects", st.ServerPings, st.Disconnects)
	}
}

// Drain delivers everything queued; with a deadline too short it reports
// ctx.Err() and counts what was left as dropped.
func TestDrainDeliversQueued(t *testing.T) {
	for _, short := range []bool{false, true} {
		t.Run(fmt.Sprintf("deadline=%v", short), func(t *testing.T) {
			const total = 60
			srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
				for i := 1; i <= total; i++ {
					_ = c.WriteMessage(websocket.TextMessage, []byte(strconv.Itoa(i)))
				}
				wstest.Drain(c, r)
			})
			var delivered atomic.Int64
			c, err := wspool.NewClient(srv.URL("/"), func(ctx context.Context, m wspool.Message) error {
				time.Sleep(5 * time.Millisecond) // a slow handler
				delivered.Add(1)
				return nil
			}, wspool.WithQueue(wspool.Queue{Messages: 100}))
			if err != nil {
				t.Fatal(err)
			}
			runClient(t, c)
			waitFor(t, 10*time.Second, "everything read", func() bool { return c.Stats().MessagesIn == total })
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if short {
				ctx, cancel = context.WithTimeout(context.Background(), 20*time.Millisecond)
			}
			defer cancel()
			err = callWithin(t, 15*time.Second, "Drain", func() error {
				err := c.Drain(ctx) // starts the drain; Done says when it is over
				<-c.Done()
				return err
			})
			st := c.Stats()
			if short {
				if err != nil || st.Dropped == 0 || delivered.Load()+st.Dropped != total {
					t.Fatalf("short drain: %v, %d delivered, %d dropped", err, delivered.Load(), st.Dropped)
				}
				return
			}
			if err != nil || delivered.Load() != total || st.Dropped != 0 {
				t.Fatalf("drain: %v, %d of %d delivered, %d dropped", err, delivered.Load(), total, st.Dropped)
			}
		})
	}
}

// Rotate and Reconnect on demand, a handler's ErrReconnect, and the
// per-message facts (receive time, connection number).
func TestReconnectAndRotateOnDemand(t *testing.T) {
	srv := startSeqServer(t, 2*time.Millisecond)
	ev := newEvents()
	var ask atomic.Bool
	var mu sync.Mutex
	conns := map[uint64]bool{}
	var badTime atomic.Int64
	c, err := wspool.NewClient(srv.URL("/feed"), func(ctx context.Context, m wspool.Message) error {
		if m.Received.IsZero() || time.Since(m.Received) < 0 || time.Since(m.Received) > 5*time.Second {
			badTime.Add(1)
		}
		mu.Lock()
		conns[m.ConnID] = true
		mu.Unlock()
		if ask.CompareAndSwap(true, false) {
			return fmt.Errorf("resync please: %w", wspool.ErrReconnect)
		}
		return nil
	}, ev.option(), wspool.WithBackoff(5*time.Millisecond, 20*time.Millisecond), wspool.WithMinUptime(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	ev.waitCount(t, wspool.StateConnected, 1, 10*time.Second)
	waitFor(t, 10*time.Second, "messages", func() bool { return c.Stats().MessagesIn > 5 })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Rotate(ctx); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	waitFor(t, 10*time.Second, "messages on the rotated connection", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return conns[2]
	})
	if st := c.Stats(); st.Rotations != 1 {
		t.Fatalf("%d rotations after Rotate", st.Rotations)
	}

	cause := errors.New("operator asked")
	if err := c.Reconnect(cause); err != nil {
		t.Fatal(err)
	}
	ev.waitCount(t, wspool.StateConnected, 2, 10*time.Second)
	ask.Store(true)
	ev.waitCount(t, wspool.StateConnected, 3, 10*time.Second)
	var causes []error
	for _, sc := range ev.snapshot() {
		if sc.To == wspool.StateBackingOff {
			causes = append(causes, sc.Err)
		}
	}
	if len(causes) != 2 || !errors.Is(causes[0], wspool.ErrReconnect) || !errors.Is(causes[0], cause) || !errors.Is(causes[1], wspool.ErrReconnect) {
		t.Fatalf("backing-off causes %v, want Reconnect's cause then the handler's", causes)
	}
	waitFor(t, 10*time.Second, "messages on the fourth connection", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return conns[4]
	})
	if n := badTime.Load(); n > 0 {
		t.Fatalf("%d messages with an implausible receive time", n)
	}
	if st := c.Stats(); st.HandlerErrors != 0 {
		t.Fatalf("ErrReconnect from the handler reported as a failure: %v", st.LastError)
	}
}

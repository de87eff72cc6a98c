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
	"github.com/wspool/wspool/internal/wstest"
	"github.com/wspool/wspool/wspooltest"
)

// streamServer is a wspooltest.Stream served on its own server.
type streamServer struct {
	*wspooltest.Server
	st *wspooltest.Stream
}

func startSeqServer(t *testing.T, interval time.Duration, opts ...wspooltest.StreamOption) *streamServer {
	t.Helper()
	st := wspooltest.NewStream(interval, opts...)
	srv, err := wspooltest.NewServer(st.Serve)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	t.Cleanup(st.Close) // first: every Serve returns
	return &streamServer{Server: srv, st: st}
}

// Conns returns the stream's open connections, oldest first.
func (s *streamServer) Conns(path string) []*wspooltest.Conn { return s.st.Conns(path) }

// seqOf is the Sequence.Extract of a plain wspooltest.Stream's messages.
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
	o.mu.Lock() // the feed still runs: its handler writes o.n
	n := o.n
	o.mu.Unlock()
	t.Logf("100 drops: %d numbers delivered in order (up to %d), %d duplicates dropped", n, o.lastSeen(), st.Duplicates)
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
	srv.st.Skip("/feed", 3)
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
				srv.st.Pause(cs[len(cs)-1-victim%len(cs)], true)
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

// updatePosition reads a wspooltest.Update's place in its stream.
func updatePosition(u *wspooltest.Update) (wspool.Position, bool) {
	return wspool.Position{Key: u.Stream, First: u.First, Last: u.Last, Prev: u.Prev, Epoch: u.Epoch}, true
}

// seqRecorder records what a sequenced feed delivered and reported.
type seqRecorder struct {
	mu        sync.Mutex
	delivered []wspooltest.Update
	gaps      []wspool.Gap
	undecoded int // messages delivered without Message.Decoded
	onGap     func(wspool.Gap) error
}

func (r *seqRecorder) handle(_ context.Context, m wspool.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	u, ok := m.Decoded.(*wspooltest.Update)
	if !ok {
		r.undecoded++
		return nil
	}
	r.delivered = append(r.delivered, *u)
	return nil
}

func (r *seqRecorder) gap(g wspool.Gap) error {
	if _, ok := g.Message.Decoded.(*wspooltest.Update); !ok {
		panic("the gap's message has no decoded value")
	}
	g.Message = g.Message.Clone()
	r.mu.Lock()
	r.gaps = append(r.gaps, g)
	f := r.onGap
	r.mu.Unlock()
	if f != nil {
		return f(g)
	}
	return nil
}

func (r *seqRecorder) count() (delivered, gaps int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.delivered), len(r.gaps)
}

func (r *seqRecorder) last() wspooltest.Update {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.delivered) == 0 {
		return wspooltest.Update{}
	}
	return r.delivered[len(r.delivered)-1]
}

// startShapeFeed runs a feed on a Stream of JSON updates in shape, produced
// only by Publish, and waits for its connection.
func startShapeFeed(t *testing.T, shape wspool.SequenceShape, seq wspool.Sequence, opts ...wspool.Option) (*streamServer, *wspool.Client, *seqRecorder) {
	t.Helper()
	srv := startSeqServer(t, 0, wspooltest.Updates(shape, 20, 1))
	r := &seqRecorder{}
	seq.Shape = shape
	if seq.Position == nil {
		seq.Position = wspool.JSONPosition(updatePosition)
	}
	seq.OnGap = r.gap
	c, err := wspool.NewClient(srv.URL("/book"), r.handle, append([]wspool.Option{wspool.WithSequence(seq),
		wspool.WithBackoff(5*time.Millisecond, 20*time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	waitFor(t, 10*time.Second, "the stream's connection", func() bool {
		return len(srv.Conns("/book")) == 1 && c.State() == wspool.StateConnected
	})
	return srv, c, r
}

// publishAndWait publishes n updates and waits until the handler has seen
// want messages in all.
func publishAndWait(t *testing.T, srv *streamServer, r *seqRecorder, n, want int) {
	t.Helper()
	srv.st.Publish("/book", n)
	waitFor(t, 10*time.Second, fmt.Sprintf("%d messages delivered", want), func() bool { d, _ := r.count(); return d >= want })
}

// Each shape against a stream that leaves updates out: every gap is
// reported, with its kind and the message that revealed it (decoded once),
// every update that was sent is delivered once and in order, and the numbers
// missing are exactly the ones left out.
func TestSequenceShapesReportEveryGap(t *testing.T) {
	for _, shape := range []wspool.SequenceShape{wspool.SingleNumber, wspool.NumberRange, wspool.LinkedIDs} {
		t.Run(shape.String(), func(t *testing.T) {
			srv, c, r := startShapeFeed(t, shape, wspool.Sequence{})
			srv.st.Publish("/book", 10)
			waitFor(t, 10*time.Second, "the first updates", func() bool { return r.last().Last == srv.st.Head("/book") })
			for i := range 5 {
				srv.st.Skip("/book", i+1)
				srv.st.Publish("/book", i+1+5)
				waitFor(t, 10*time.Second, "the updates after the gap", func() bool { return r.last().Last == srv.st.Head("/book") })
			}
			r.mu.Lock()
			defer r.mu.Unlock()
			if r.undecoded != 0 {
				t.Fatalf("%d messages reached the handler without their decoded value", r.undecoded)
			}
			if len(r.gaps) != 5 {
				t.Fatalf("%d gaps reported, want 5: %+v", len(r.gaps), r.gaps)
			}
			want := wspool.GapSkip
			if shape == wspool.LinkedIDs {
				want = wspool.GapBrokenLink
			}
			var missing uint64
			for i, g := range r.gaps {
				if g.Kind != want || g.Key != "/book" {
					t.Fatalf("gap %d: %+v, want kind %v", i, g, want)
				}
				u := g.Message.Decoded.(*wspooltest.Update)
				if shape != wspool.LinkedIDs && g.Missing() != uint64(i+1) {
					t.Fatalf("gap %d skipped %d numbers, want %d", i, g.Missing(), i+1)
				}
				if shape == wspool.LinkedIDs && g.Prev != u.Prev {
					t.Fatalf("gap %d: Prev %d, the message says %d", i, g.Prev, u.Prev)
				}
				missing += g.Missing()
			}
			// Delivered updates: in order, each covering numbers after the
			// last, and all of them together with the gaps cover the stream.
			var covered uint64
			prev := uint64(0)
			for _, u := range r.delivered {
				if u.First <= prev && shape != wspool.LinkedIDs || u.Last <= prev {
					t.Fatalf("update %d..%d delivered after %d", u.First, u.Last, prev)
				}
				prev = u.Last
				covered += u.Last - u.First + 1
			}
			if shape != wspool.LinkedIDs && covered+missing != srv.st.Head("/book") {
				t.Fatalf("%d numbers delivered and %d reported missing, of %d", covered, missing, srv.st.Head("/book"))
			}
			st := c.Stats()
			if st.Gaps != 5 || st.Duplicates != 0 || st.Restarts != 0 {
				t.Fatalf("stats: %d gaps, %d duplicates, %d restarts", st.Gaps, st.Duplicates, st.Restarts)
			}
		})
	}
}

// An upstream that starts numbering again at 1 on an open connection (its
// own restart, or a new snapshot as some exchanges do) is reported as a
// restart and the stream goes on from the new epoch: nothing is dropped as a
// duplicate. Plain numbers read by Extract, as WithSequence always took.
func TestSequenceRestartOnOneConnectionReported(t *testing.T) {
	srv := startSeqServer(t, 0)
	var o orderChecker
	restarts := make(chan wspool.Gap, 10)
	c, err := wspool.NewClient(srv.URL("/feed"), o.handle, wspool.WithSequence(wspool.Sequence{Extract: seqOf,
		OnGap: func(g wspool.Gap) error { g.Message = g.Message.Clone(); restarts <- g; return nil }}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	waitFor(t, 10*time.Second, "the connection", func() bool { return len(srv.Conns("/feed")) == 1 })
	srv.st.Publish("/feed", 20)
	waitFor(t, 10*time.Second, "20 numbers", func() bool { return o.lastSeen() == 20 })
	srv.st.Restart("/feed")
	srv.st.Publish("/feed", 5)
	g := recv(t, restarts, 10*time.Second, "the restart report")
	if g.Kind != wspool.GapRestart || g.Last != 20 || g.Next != 1 || string(g.Message.Data) != "1" {
		t.Fatalf("report %+v (message %q), want a restart from 20 to 1", g, g.Message.Data)
	}
	waitFor(t, 10*time.Second, "the new epoch delivered", func() bool { return o.lastSeen() == 5 })
	if st := c.Stats(); st.Restarts != 1 || st.Duplicates != 0 || st.Gaps != 0 {
		t.Fatalf("stats: %d restarts, %d duplicates, %d gaps; want 1, 0, 0", st.Restarts, st.Duplicates, st.Gaps)
	}
	if n, _ := c.LastSequence(""); n != 5 {
		t.Fatalf("LastSequence %d, want 5", n)
	}
}

// An upstream that restarts and comes back on a new connection numbering
// from 1: a number more than Sequence.Restart below the last is a restart;
// one within the bound is a copy (a replay's overlap) and dropped as a
// duplicate. An Epoch in the position catches a restart within the bound.
func TestSequenceRestartOnNewConnection(t *testing.T) {
	cases := []struct {
		name      string
		seq       wspool.Sequence
		position  func(*wspooltest.Update) (wspool.Position, bool)
		restarted bool
	}{
		{"past the bound", wspool.Sequence{Restart: 10}, noEpoch, true},
		{"within the bound", wspool.Sequence{Restart: 100}, noEpoch, false},
		{"new epoch within the bound", wspool.Sequence{Restart: 100}, updatePosition, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.seq.Position = wspool.JSONPosition(tc.position)
			srv, c, r := startShapeFeed(t, wspool.SingleNumber, tc.seq)
			publishAndWait(t, srv, r, 30, 30)
			srv.st.Restart("/book")
			srv.Conns("/book")[0].Drop()
			waitFor(t, 10*time.Second, "a new connection", func() bool {
				cs := srv.Conns("/book")
				return len(cs) == 1 && c.Stats().Connects == 2
			})
			srv.st.Publish("/book", 5)
			if tc.restarted {
				waitFor(t, 10*time.Second, "the new epoch delivered", func() bool { return r.last().Epoch == 2 && r.last().Last == 5 })
				r.mu.Lock()
				g := r.gaps[len(r.gaps)-1]
				r.mu.Unlock()
				if g.Kind != wspool.GapRestart || g.Last != 30 || g.Next != 1 {
					t.Fatalf("report %+v, want a restart from 30 to 1", g)
				}
				return
			}
			waitFor(t, 10*time.Second, "5 duplicates", func() bool { return c.Stats().Duplicates == 5 })
			if d, g := r.count(); d != 30 || g != 0 {
				t.Fatalf("%d delivered, %d reported; want 30 and none", d, g)
			}
		})
	}
}

func noEpoch(u *wspooltest.Update) (wspool.Position, bool) {
	p, ok := updatePosition(u)
	p.Epoch = 0
	return p, ok
}

// A restart whose OnGap asks for a resync: the message is not delivered, the
// connection is redialled, and the key starts again with the new
// connection's first message (no gap, no duplicate). ResetSequence does the
// same for the user who knows before a message shows it.
func TestSequenceRestartResyncsAndResetSequence(t *testing.T) {
	srv, c, r := startShapeFeed(t, wspool.SingleNumber, wspool.Sequence{})
	r.mu.Lock()
	r.onGap = func(g wspool.Gap) error {
		if g.Kind == wspool.GapRestart {
			return fmt.Errorf("resync: %w", wspool.ErrReconnect)
		}
		return nil
	}
	r.mu.Unlock()
	publishAndWait(t, srv, r, 10, 10)
	srv.st.Restart("/book")
	srv.st.Publish("/book", 3) // 1 reveals the restart; 2 and 3 go with the closing connection
	waitFor(t, 10*time.Second, "the redial", func() bool {
		return c.Stats().Connects == 2 && len(srv.Conns("/book")) == 1
	})
	publishAndWait(t, srv, r, 4, 14) // the new connection starts live: 4..7
	if u := r.last(); u.Epoch != 2 || u.Last != 7 {
		t.Fatalf("after the resync: update %d of epoch %d, want 7 of 2", u.Last, u.Epoch)
	}
	// ResetSequence: the key starts again with whatever comes next.
	c.ResetSequence("/book")
	if _, ok := c.LastSequence("/book"); ok {
		t.Fatal("LastSequence after ResetSequence: still known")
	}
	srv.st.Skip("/book", 2)
	publishAndWait(t, srv, r, 3, 15) // 8, 9 left out: no gap, the key was reset
	if n, _ := c.LastSequence("/book"); n != 10 {
		t.Fatalf("LastSequence %d, want 10", n)
	}
	st := c.Stats()
	if st.Restarts != 1 || st.Gaps != 0 || st.Duplicates != 0 {
		t.Fatalf("stats: %d restarts, %d gaps, %d duplicates; want 1, 0, 0", st.Restarts, st.Gaps, st.Duplicates)
	}
}

// Decode once: a JSON handler of the type Position decoded into takes the
// decoded value; it does not decode again.
func TestSequenceDecodedOnceForJSONHandler(t *testing.T) {
	srv := startSeqServer(t, 0, wspooltest.Updates(wspool.NumberRange, 5, 2))
	var decodes atomic.Int64
	got := make(chan wspooltest.Update, 100)
	c, err := wspool.NewClient(srv.URL("/x"), wspool.JSON(func(_ context.Context, u wspooltest.Update) error { got <- u; return nil }),
		wspool.WithSequence(wspool.Sequence{Shape: wspool.NumberRange, Position: wspool.DecodedPosition(func(b []byte, u *wspooltest.Update) error {
			decodes.Add(1)
			return json.Unmarshal(b, u)
		}, updatePosition)}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	waitFor(t, 10*time.Second, "the connection", func() bool { return len(srv.Conns("/x")) == 1 })
	srv.st.Publish("/x", 9)
	var n uint64
	for n < 9 {
		n = recv(t, got, 10*time.Second, "an update").Last
	}
	waitFor(t, 10*time.Second, "one decode per message delivered", func() bool { return c.Stats().Delivered == decodes.Load() })
	if st := c.Stats(); st.MessagesIn != decodes.Load() {
		t.Fatalf("%d decodes for %d messages", decodes.Load(), st.MessagesIn)
	}
}

// The same number again on one connection (OKX repeats its last seqId when
// nothing changed) is a duplicate, not a restart; a lower one is a restart.
func TestSequenceRepeatOnOneConnectionIsADuplicate(t *testing.T) {
	srv, err := wspooltest.NewServer(func(c *wspooltest.Conn) {
		for _, n := range []string{"1", "2", "2", "3", "1"} {
			if c.SendText(n) != nil {
				return
			}
		}
		<-c.Done()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	got := make(chan string, 10)
	kinds := make(chan wspool.GapKind, 10)
	c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error { got <- string(m.Data); return nil },
		wspool.WithSequence(wspool.Sequence{Extract: seqOf, OnGap: func(g wspool.Gap) error { kinds <- g.Kind; return nil }}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	var seen []string
	for range 4 {
		seen = append(seen, recv(t, got, 10*time.Second, "a message"))
	}
	if fmt.Sprint(seen) != "[1 2 3 1]" {
		t.Fatalf("delivered %v, want [1 2 3 1]", seen)
	}
	if k := recv(t, kinds, 10*time.Second, "the restart"); k != wspool.GapRestart {
		t.Fatalf("reported %v, want a restart", k)
	}
	waitFor(t, 10*time.Second, "one duplicate counted", func() bool { return c.Stats().Duplicates == 1 })
}

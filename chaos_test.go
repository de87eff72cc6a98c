package wspool_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/faultproxy"
	"github.com/wspool/wspool/internal/wstest"
)

// TestChaosSoak runs a pool of feeds against a sequenced server behind fault
// proxies that reset, blackhole, delay, throttle, slice, close and refuse at
// random while the server restarts now and then; then the faults stop, the
// feeds recover, and the invariants are checked: per-connection order
// without gap or duplicate, every send reported exactly once and received if
// it went through a connection that closed gracefully, exact counters, every
// feed connected again, bounded heap, no goroutine left.
//
//	WSPOOL_SOAK=60s           duration (default 10s; 3s with -short)
//	WSPOOL_SOAK_SEED=1234     fault schedule seed (logged; default random)
//	WSPOOL_SOAK_FEEDS=200     feeds (default 200; 40 with -short)
func TestChaosSoak(t *testing.T) {
	cfg := soakConfigFromEnv(t)
	raiseFDLimit(t, uint64(cfg.feeds)*8+512)
	t.Logf("chaos soak: %d feeds, %v, seed %d (WSPOOL_SOAK_SEED=%d reproduces the fault schedule)", cfg.feeds, cfg.dur, cfg.seed, cfg.seed)

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	baseG := runtime.NumGoroutine()
	sampler := startSoakSampler()
	defer sampler.stop()

	v := &violations{}
	// Each connection publishes every 5-20ms and each feed sends every
	// 20-80ms, stretched beyond 50 feeds so that the total rate stays near
	// 4000 messages a second in and 1000 out: the race detector on a small,
	// shared machine must keep up, or liveness (not the invariants) suffers.
	stretch := time.Duration(max(1, cfg.feeds/50))
	srv := &seqServer{seed: cfg.seed, conns: map[int64]*seqConn{}, v: v, minGap: 5 * time.Millisecond * stretch, maxGap: 20 * time.Millisecond * stretch}
	srv.feeds = make([]*serverFeed, cfg.feeds)
	for i := range srv.feeds {
		srv.feeds[i] = &serverFeed{}
	}
	ws := newServer(t, srv.handle)

	nProxies := (cfg.feeds + soakFeedsPerProxy - 1) / soakFeedsPerProxy
	proxies := make([]*faultproxy.Proxy, nProxies)
	for i := range proxies {
		proxies[i] = newProxy(t, ws.Addr())
	}

	pool, err := wspool.NewPool(
		wspool.WithPingInterval(300*time.Millisecond),
		wspool.WithPongTimeout(600*time.Millisecond),
		wspool.WithHandshakeTimeout(time.Second),
		wspool.WithBackoff(20*time.Millisecond, 500*time.Millisecond),
		wspool.WithCloseTimeout(time.Second),
		wspool.WithWriteTimeout(2*time.Second),
		wspool.WithSendBuffer(wspool.SendBuffer{Messages: 64}),
	)
	if err != nil {
		t.Fatal(err)
	}
	sends := &sendTally{}
	feeds := make([]*soakFeed, cfg.feeds)
	for i := range feeds {
		f := newSoakFeed(i, cfg.seed, v, sends)
		f.sendGap = 20 * time.Millisecond * stretch
		feeds[i] = f
		opts := []wspool.Option{wspool.WithName(f.name), wspool.WithOnConnect(f.onConnect)}
		switch f.kind {
		case kindBlock:
			opts = append(opts, wspool.WithQueue(wspool.Queue{Messages: 16, Policy: wspool.Block, DrainBeforeReconnect: i%20 == 3}))
		case kindSmallBlock:
			opts = append(opts, wspool.WithQueue(wspool.Queue{Messages: 2, Policy: wspool.Block}))
		case kindDropOldest:
			opts = append(opts, wspool.WithQueue(wspool.Queue{Messages: 3, Policy: wspool.DropOldest}))
		case kindDropNewest:
			opts = append(opts, wspool.WithQueue(wspool.Queue{Messages: 3, Policy: wspool.DropNewest}))
		}
		if i%3 == 0 {
			opts = append(opts, wspool.WithSendBuffer(wspool.SendBuffer{Messages: 32, MaxAge: 1500 * time.Millisecond}))
		}
		url := fmt.Sprintf("ws://%s/feed/%d", proxies[i/soakFeedsPerProxy].Addr(), i)
		c, err := pool.Add(url, f.handle, opts...)
		if err != nil {
			t.Fatal(err)
		}
		f.client = c
	}

	// Teardown in dependency order, whichever way the test ends.
	poolCtx, cancelPool := context.WithCancel(context.Background())
	poolErr := make(chan error, 1)
	go func() { poolErr <- pool.Run(poolCtx) }()
	senderStop := make(chan struct{})
	var senders sync.WaitGroup
	for _, f := range feeds {
		senders.Add(1)
		go func() { defer senders.Done(); f.sendLoop(senderStop) }()
	}
	chaos := newChaos(cfg.seed, proxies, ws, v)
	chaosStop := make(chan struct{})
	chaosDone := make(chan struct{})
	go func() { defer close(chaosDone); chaos.run(chaosStop) }()

	var poolStopped bool
	stopPool := func() {
		if poolStopped {
			return
		}
		poolStopped = true
		cancelPool()
		select {
		case err := <-poolErr:
			if err != nil {
				t.Errorf("Pool.Run: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("Pool.Run did not return within 60s of cancel (deadlock?):\n%s", allStacks())
		}
	}
	var tornDown bool
	teardown := func() {
		if tornDown {
			return
		}
		tornDown = true
		select {
		case <-chaosStop:
		default:
			close(chaosStop)
		}
		<-chaosDone
		stopPool()
		close(senderStop)
		senders.Wait()
		ws.Stop() // waits for every connection handler: the server's records are final
		for _, p := range proxies {
			p.Close()
		}
	}
	t.Cleanup(teardown)

	// Chaos, then a quiet recovery phase with every fault cleared.
	start := time.Now()
	quiet := max(cfg.dur/4, min(5*time.Second, cfg.dur/2))
	time.Sleep(cfg.dur - quiet)
	close(chaosStop)
	<-chaosDone
	chaosTime := time.Since(start)
	time.Sleep(quiet)

	// Every feed connected again, all at once.
	waitSoak(t, v, 120*time.Second, func() bool { return pool.Stats().Connected == cfg.feeds }, func() string {
		var b strings.Builder
		ps := pool.Stats()
		fmt.Fprintf(&b, "%d of %d feeds connected; %s", ps.Connected, cfg.feeds, soakDiagnostics(t, cfg, proxies, ws))
		for _, s := range ps.Feeds {
			if s.State != wspool.StateConnected {
				fmt.Fprintf(&b, "\n  %s: %v, last error %v", s.Name, s.State, s.LastError)
			}
		}
		return b.String()
	})
	recovered := time.Since(start)
	// ... and delivering on its current connection.
	waitSoak(t, v, 60*time.Second, func() bool {
		for _, f := range feeds {
			if f.lastHandledConn.Load() < f.latestHello() {
				return false
			}
		}
		return true
	}, func() string {
		var b strings.Builder
		for _, f := range feeds {
			if h := f.latestHello(); f.lastHandledConn.Load() < h {
				fmt.Fprintf(&b, "\n  %s: nothing delivered from its current connection %d (last from %d)", f.name, h, f.lastHandledConn.Load())
			}
		}
		return "feeds not delivering:" + b.String()
	})

	// With the server paused, what was read is accounted for exactly.
	srv.paused.Store(true)
	var blockDiscarded int64
	var lastSnap string
	waitSoak(t, v, 60*time.Second, func() bool {
		snap, ok, discarded := inboundAccounting(pool, feeds)
		stable := ok && snap == lastSnap
		lastSnap = snap
		blockDiscarded = discarded
		if !stable {
			time.Sleep(50 * time.Millisecond)
		}
		return stable
	}, func() string {
		return "inbound accounting does not balance:\n" + inboundReport(pool, feeds)
	})
	var policyDropped int64
	for _, st := range pool.Stats().Feeds {
		policyDropped += st.Dropped
	}
	srv.paused.Store(false)

	// Shut down under traffic, then check every send.
	time.Sleep(100 * time.Millisecond)
	stopPool()
	teardown()
	ps := pool.Stats()

	sendSum := checkSends(feeds, srv, v)
	var handled, handlerErrs, subs int64
	for _, f := range feeds {
		handled += f.handled.Load()
		handlerErrs += f.handlerErrs.Load()
		subs += f.subsOK.Load()
	}
	if ps.SendFailed != sendSum.failed {
		v.add("Stats.SendFailed sums to %d, callbacks reported %d failures", ps.SendFailed, sendSum.failed)
	}
	if ps.MessagesOut != sendSum.written+subs {
		v.add("Stats.MessagesOut sums to %d, want %d written sends + %d subscriptions = %d", ps.MessagesOut, sendSum.written, subs, sendSum.written+subs)
	}
	if ps.HandlerErrors != handlerErrs {
		v.add("Stats.HandlerErrors sums to %d, handlers failed %d times", ps.HandlerErrors, handlerErrs)
	}
	if ps.Closed != cfg.feeds {
		v.add("%d of %d feeds closed after Pool.Run returned", ps.Closed, cfg.feeds)
	}

	// Nothing left running.
	sampler.stop()
	var g int
	if err := wstest.WaitFor(context.Background(), 15*time.Second, func() bool {
		g = runtime.NumGoroutine()
		return g <= baseG+2
	}); err != nil {
		t.Errorf("%d goroutines 15s after shutdown, %d before the soak:\n%s", g, baseG, allStacks())
	}

	heapPeakMiB := float64(sampler.heapPeak) / (1 << 20)
	baseMiB := float64(base.HeapAlloc) / (1 << 20)
	if sampler.heapPeak > base.HeapAlloc+64<<20 {
		v.add("heap peak %.1f MiB over the bound of %.1f + 64 MiB", heapPeakMiB, baseMiB)
	}

	t.Logf("send outcomes by cause: %s", sends.causes())
	t.Logf("server: %d connections, %d data messages published; pool: %d attempts; queues dropped %d by policy; Block queues gave up %d read messages when their connection died; faults cleared after %v, all %d connected %v after start",
		srv.nextConn.Load(), srv.dataSent.Load(), ps.Attempts, policyDropped, blockDiscarded, chaosTime.Round(time.Millisecond), cfg.feeds, recovered.Round(time.Millisecond))
	t.Logf("SUMMARY chaos soak: feeds=%d duration=%v seed=%d faults={%s} reconnects=%d messages checked=%d sends=%d written=%d failed=%d written-but-lost-with-reset-conn=%d violations=%d heap peak=%.1f MiB (base %.1f MiB) goroutines peak=%d",
		cfg.feeds, cfg.dur, cfg.seed, chaos.summary(), ps.Connects-int64(cfg.feeds), handled, sendSum.total, sendSum.written, sendSum.failed, sendSum.lostWithReset,
		v.count(), heapPeakMiB, baseMiB, sampler.goroutinePeak)
	if n := v.count(); n > 0 {
		t.Errorf("%d invariant violations (seed %d); first ones:\n  %s", n, cfg.seed, strings.Join(v.first(), "\n  "))
	}
}

const soakFeedsPerProxy = 20

type soakConfig struct {
	feeds int
	dur   time.Duration
	seed  uint64
}

func soakConfigFromEnv(t *testing.T) soakConfig {
	c := soakConfig{feeds: 200, dur: 10 * time.Second, seed: rand.Uint64() % 1e9}
	if testing.Short() {
		c.feeds, c.dur = 40, 3*time.Second
	}
	if s := os.Getenv("WSPOOL_SOAK"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("WSPOOL_SOAK=%q: want a positive Go duration", s)
		}
		c.dur = d
	}
	if s := os.Getenv("WSPOOL_SOAK_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("WSPOOL_SOAK_SEED=%q: %v", s, err)
		}
		c.seed = n
	}
	if s := os.Getenv("WSPOOL_SOAK_FEEDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			t.Fatalf("WSPOOL_SOAK_FEEDS=%q: want a positive number", s)
		}
		c.feeds = n
	}
	return c
}

// waitSoak polls cond until it holds or timeout passes, then fails with
// what() and the violations seen so far.
func waitSoak(t *testing.T, v *violations, timeout time.Duration, cond func() bool, what func() string) {
	t.Helper()
	if err := wstest.WaitFor(context.Background(), timeout, cond); err != nil {
		msg := fmt.Sprintf("after %v: %s", timeout, what())
		if n := v.count(); n > 0 {
			msg += fmt.Sprintf("\n%d invariant violations so far; first ones:\n  %s", n, strings.Join(v.first(), "\n  "))
		}
		t.Fatal(msg)
	}
}

// soakDiagnostics describes the proxies and the process, and saves every
// goroutine's stack to a file, for a soak that does not recover.
func soakDiagnostics(t *testing.T, cfg soakConfig, proxies []*faultproxy.Proxy, ws *wstest.Server) string {
	var b strings.Builder
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		fmt.Fprintf(&b, "%d open fds, ", len(fds))
	}
	fmt.Fprintf(&b, "%d goroutines, server: %d open, %d accepted, %d handshakes; proxies (open/accepted):", runtime.NumGoroutine(), ws.Open(), ws.Accepted(), ws.Handshakes())
	for _, p := range proxies {
		fmt.Fprintf(&b, " %d/%d", p.ConnCount(), p.Accepted())
	}
	name := fmt.Sprintf("%s/wspool-soak-%d-stacks.txt", os.TempDir(), cfg.seed)
	if err := os.WriteFile(name, []byte(allStacks()), 0o644); err == nil {
		fmt.Fprintf(&b, "; goroutine stacks in %s", name)
	}
	return b.String()
}

func allStacks() string {
	buf := make([]byte, 8<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// violations collects invariant violations from any goroutine.
type violations struct {
	mu      sync.Mutex
	n       int
	samples []string
}

func (v *violations) add(format string, args ...any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.n++
	if len(v.samples) < 40 {
		v.samples = append(v.samples, fmt.Sprintf(format, args...))
	}
}

func (v *violations) count() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.n
}

func (v *violations) first() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.samples)
}

// soakSampler records peak heap and goroutine counts.
type soakSampler struct {
	done          chan struct{}
	finished      chan struct{}
	once          sync.Once
	heapPeak      uint64
	goroutinePeak int
}

func startSoakSampler() *soakSampler {
	s := &soakSampler{done: make(chan struct{}), finished: make(chan struct{})}
	go func() {
		defer close(s.finished)
		var ms runtime.MemStats
		tk := time.NewTicker(25 * time.Millisecond)
		defer tk.Stop()
		for {
			runtime.ReadMemStats(&ms)
			s.heapPeak = max(s.heapPeak, ms.HeapAlloc)
			s.goroutinePeak = max(s.goroutinePeak, runtime.NumGoroutine())
			select {
			case <-s.done:
				return
			case <-tk.C:
			}
		}
	}()
	return s
}

func (s *soakSampler) stop() {
	s.once.Do(func() { close(s.done) })
	<-s.finished
}

// ---- the sequenced server ----

// seqServer serves /feed/<n>: it waits for "sub <n>", answers "hello <conn>",
// then publishes "d <conn> <seq>" (seq 1, 2, ... per connection) every few ms
// and records every "s <n> <seq>" the client sends, and whether the
// connection ended with the client's close frame (gracefully).
type seqServer struct {
	seed           uint64
	minGap, maxGap time.Duration
	v              *violations
	nextConn       atomic.Int64
	paused         atomic.Bool
	dataSent       atomic.Int64
	feeds          []*serverFeed

	mu    sync.Mutex
	conns map[int64]*seqConn
}

type serverFeed struct {
	mu   sync.Mutex
	recv []sendRecord
}

type sendRecord struct{ seq, conn int64 }

type seqConn struct {
	id       int64
	feed     int
	graceful atomic.Bool // the client's close frame arrived: everything it wrote before did too
}

func (s *seqServer) conn(id int64) *seqConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[id]
}

func (s *seqServer) handle(c *websocket.Conn, r *http.Request) {
	feed, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/feed/"))
	if err != nil || feed < 0 || feed >= len(s.feeds) {
		s.v.add("server: unexpected path %q", r.URL.Path)
		return
	}
	sc := &seqConn{id: s.nextConn.Add(1), feed: feed}
	s.mu.Lock()
	s.conns[sc.id] = sc
	s.mu.Unlock()

	_, msg, err := c.ReadMessage()
	if err != nil {
		return
	}
	if want := "sub " + strconv.Itoa(feed); string(msg) != want {
		s.v.add("server: conn %d of feed %d: first message %q, want %q (OnConnect must go first)", sc.id, feed, msg, want)
		return
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte("hello "+strconv.FormatInt(sc.id, 10))); err != nil {
		return
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.publish(c, sc, done) }()
	defer func() {
		close(done)
		c.NetConn().Close() // unblocks a publisher stuck on a full socket
		wg.Wait()
	}()

	sf := s.feeds[feed]
	var last int64
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			// gorilla reports a bare EOF as a CloseError 1006, which no peer sends.
			var ce *websocket.CloseError
			if errors.As(err, &ce) && ce.Code != websocket.CloseAbnormalClosure {
				sc.graceful.Store(true)
			}
			return
		}
		seq, ok := parseSend(data, feed)
		if !ok {
			s.v.add("server: conn %d of feed %d: unexpected message %q", sc.id, feed, data)
			continue
		}
		if seq <= last {
			s.v.add("server: conn %d of feed %d: send %d arrived after %d", sc.id, feed, seq, last)
		}
		last = seq
		sf.mu.Lock()
		sf.recv = append(sf.recv, sendRecord{seq: seq, conn: sc.id})
		sf.mu.Unlock()
	}
}

func (s *seqServer) publish(c *websocket.Conn, sc *seqConn, done <-chan struct{}) {
	rng := rand.New(rand.NewPCG(s.seed, uint64(sc.id)))
	gap := func() time.Duration { return s.minGap + time.Duration(rng.Int64N(int64(s.maxGap-s.minGap)+1)) }
	tm := time.NewTimer(gap())
	defer tm.Stop()
	prefix := "d " + strconv.FormatInt(sc.id, 10) + " "
	buf := make([]byte, 0, 32)
	var seq int64
	for {
		select {
		case <-done:
			return
		case <-tm.C:
		}
		if !s.paused.Load() {
			seq++
			buf = strconv.AppendInt(append(buf[:0], prefix...), seq, 10)
			if err := c.WriteMessage(websocket.TextMessage, buf); err != nil {
				return
			}
			s.dataSent.Add(1)
		}
		tm.Reset(gap())
	}
}

func parseSend(data []byte, feed int) (int64, bool) {
	rest, ok := strings.CutPrefix(string(data), "s "+strconv.Itoa(feed)+" ")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(rest, 10, 64)
	return n, err == nil && n > 0
}

// ---- the feeds ----

const (
	kindDirect     = iota // no queue: the handler runs on the reader
	kindBlock             // WithQueue Block (some with DrainBeforeReconnect)
	kindSmallBlock        // WithQueue Block, 2 messages, blocking Send
	kindDropOldest        // WithQueue DropOldest
	kindDropNewest        // WithQueue DropNewest
)

var kindNames = []string{"direct", "block", "block-2", "drop-oldest", "drop-newest"}

type soakFeed struct {
	idx      int
	name     string
	kind     int
	blocking bool          // sends with Send (1s context) instead of SendAsync
	sendGap  time.Duration // sends go out every 1-4 sendGap
	seed     uint64
	v        *violations
	tally    *sendTally
	client   *wspool.Client

	// Owned by the handler (never called concurrently with itself).
	lastConn, lastSeq int64
	rng               *rand.Rand

	handled         atomic.Int64
	handlerErrs     atomic.Int64
	lastHandledConn atomic.Int64
	hellos          atomic.Int64
	subsOK          atomic.Int64

	mu         sync.Mutex
	helloConns []int64 // connections whose OnConnect read the hello, in order

	smu     sync.Mutex
	reports []uint8 // per send seq-1: how many times its outcome was reported
	written []bool
}

func newSoakFeed(i int, seed uint64, v *violations, tally *sendTally) *soakFeed {
	f := &soakFeed{idx: i, name: fmt.Sprintf("f%03d", i), seed: seed, v: v, tally: tally,
		rng: rand.New(rand.NewPCG(seed, uint64(i)<<32|1))}
	switch i % 10 {
	case 0:
		f.kind = kindDropOldest
	case 1:
		f.kind = kindDropNewest
	case 2, 3:
		f.kind = kindBlock
	case 5:
		f.kind, f.blocking = kindSmallBlock, true
	case 4:
		f.blocking = true
	}
	return f
}

func (f *soakFeed) lossless() bool { return f.kind != kindDropOldest && f.kind != kindDropNewest }

func (f *soakFeed) latestHello() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.helloConns) == 0 {
		return 0
	}
	return f.helloConns[len(f.helloConns)-1]
}

func (f *soakFeed) helloIndex(conn int64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, ok := slices.BinarySearch(f.helloConns, conn)
	if !ok {
		return -1
	}
	return i
}

func (f *soakFeed) onConnect(ctx context.Context, cn *wspool.Conn) error {
	if err := cn.Send(ctx, wspool.TextMessage, []byte("sub "+strconv.Itoa(f.idx))); err != nil {
		return err
	}
	f.subsOK.Add(1)
	m, err := cn.ReadMessage(ctx)
	if err != nil {
		return err
	}
	f.hellos.Add(1)
	rest, ok := strings.CutPrefix(string(m.Data), "hello ")
	id, err := strconv.ParseInt(rest, 10, 64)
	if !ok || err != nil {
		f.v.add("%s: OnConnect read %q, want hello", f.name, m.Data)
		return errors.New("no hello")
	}
	f.mu.Lock()
	if n := len(f.helloConns); n > 0 && f.helloConns[n-1] >= id {
		f.v.add("%s: connection %d after %d", f.name, id, f.helloConns[n-1])
	}
	f.helloConns = append(f.helloConns, id)
	f.mu.Unlock()
	return nil
}

var errSoakHandler = errors.New("soak: handler error")

func (f *soakFeed) handle(_ context.Context, m wspool.Message) error {
	conn, seq, ok := parseData(m.Data)
	if !ok {
		f.v.add("%s: unexpected message %q", f.name, m.Data)
		return nil
	}
	switch {
	case conn < f.lastConn:
		f.v.add("%s: message %d of connection %d after connection %d", f.name, seq, conn, f.lastConn)
	case conn == f.lastConn:
		if f.lossless() && seq != f.lastSeq+1 {
			f.v.add("%s (%s): connection %d: message %d after %d (gap or duplicate)", f.name, kindNames[f.kind], conn, seq, f.lastSeq)
		} else if seq <= f.lastSeq {
			f.v.add("%s (%s): connection %d: message %d after %d (reordered or duplicate)", f.name, kindNames[f.kind], conn, seq, f.lastSeq)
		}
	default:
		if f.lossless() && seq != 1 {
			f.v.add("%s (%s): connection %d starts at message %d", f.name, kindNames[f.kind], conn, seq)
		}
		if f.helloIndex(conn) < 0 {
			f.v.add("%s: message from connection %d whose OnConnect never completed", f.name, conn)
		}
	}
	if conn >= f.lastConn {
		f.lastConn, f.lastSeq = conn, seq
	}
	f.handled.Add(1)
	f.lastHandledConn.Store(max(f.lastHandledConn.Load(), conn))

	// Now and then the handler is slow (holding the reader or filling the
	// queue), fails or panics.
	r := f.rng.IntN(10000)
	switch {
	case r < 3:
		f.handlerErrs.Add(1)
		panic("soak: handler panic")
	case r < 10:
		f.handlerErrs.Add(1)
		return errSoakHandler
	}
	slowOdds := 500
	if f.kind != kindDirect {
		slowOdds = 150
	}
	if f.rng.IntN(slowOdds) == 0 {
		time.Sleep(time.Duration(50+f.rng.IntN(250)) * time.Millisecond)
	}
	return nil
}

func parseData(data []byte) (conn, seq int64, ok bool) {
	rest, ok := strings.CutPrefix(string(data), "d ")
	if !ok {
		return 0, 0, false
	}
	a, b, ok := strings.Cut(rest, " ")
	if !ok {
		return 0, 0, false
	}
	conn, err1 := strconv.ParseInt(a, 10, 64)
	seq, err2 := strconv.ParseInt(b, 10, 64)
	return conn, seq, err1 == nil && err2 == nil && conn > 0 && seq > 0
}

// sendLoop sends "s <feed> <seq>" every 1-4 sendGap until stop, recording outcomes.
func (f *soakFeed) sendLoop(stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(f.seed, uint64(f.idx)<<32|2))
	jitter := func() time.Duration { return f.sendGap + time.Duration(rng.Int64N(int64(3*f.sendGap)+1)) }
	tm := time.NewTimer(jitter())
	defer tm.Stop()
	for seq := int64(1); ; seq++ {
		select {
		case <-stop:
			return
		case <-tm.C:
		}
		data := []byte("s " + strconv.Itoa(f.idx) + " " + strconv.FormatInt(seq, 10))
		f.smu.Lock()
		f.reports = append(f.reports, 0)
		f.written = append(f.written, false)
		f.smu.Unlock()
		if f.blocking {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := f.client.Send(ctx, wspool.TextMessage, data)
			cancel()
			f.report(seq, err)
		} else {
			f.client.SendAsync(wspool.TextMessage, data, func(err error) { f.report(seq, err) })
		}
		tm.Reset(jitter())
	}
}

func (f *soakFeed) report(seq int64, err error) {
	f.smu.Lock()
	f.reports[seq-1]++
	n := f.reports[seq-1]
	if err == nil {
		f.written[seq-1] = true
	}
	f.smu.Unlock()
	if n > 1 {
		f.v.add("%s: send %d reported %d times (now %v)", f.name, seq, n, err)
	}
	f.tally.add(err)
}

// sendTally counts send outcomes by cause.
type sendTally struct {
	mu sync.Mutex
	m  map[string]int
}

func (s *sendTally) add(err error) {
	cause := "written"
	switch {
	case err == nil:
	case errors.Is(err, wspool.ErrSendBufferFull):
		cause = "buffer-full"
	case errors.Is(err, wspool.ErrSendExpired):
		cause = "expired"
	case errors.Is(err, wspool.ErrNotConnected):
		cause = "not-connected"
	case errors.Is(err, wspool.ErrClosed):
		cause = "closed"
	case errors.Is(err, context.DeadlineExceeded):
		cause = "ctx-deadline"
	default:
		cause = "write-error"
	}
	s.mu.Lock()
	if s.m == nil {
		s.m = map[string]int{}
	}
	s.m[cause]++
	s.mu.Unlock()
}

func (s *sendTally) causes() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return formatCounts(s.m)
}

func formatCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s:%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

// inboundAccounting checks, at a quiet moment, that every message read was
// delivered (direct feeds), delivered or dropped (drop policies), or delivered
// or given up with a dead connection (Block: counted for the log). snap
// identifies the counters so that the caller can wait for them to settle.
func inboundAccounting(pool *wspool.Pool, feeds []*soakFeed) (snap string, ok bool, blockDiscarded int64) {
	ps := pool.Stats()
	byName := map[string]wspool.Stats{}
	for _, s := range ps.Feeds {
		byName[s.Name] = s
	}
	var b strings.Builder
	ok = true
	for _, f := range feeds {
		s := byName[f.name]
		read := s.MessagesIn - f.hellos.Load()
		fmt.Fprintf(&b, "%d/%d/%d/%d;", read, s.Delivered, s.Dropped, s.QueueDepth)
		if s.QueueDepth != 0 || s.Delivered != f.handled.Load() {
			ok = false
			continue
		}
		switch f.kind {
		case kindDirect:
			ok = ok && read == s.Delivered && s.Dropped == 0
		case kindBlock, kindSmallBlock:
			// Block never drops by policy, but a message read while the queue was
			// full is given up when the connection dies under it (tail loss).
			ok = ok && read >= s.Delivered+s.Dropped
			blockDiscarded += read - s.Delivered
		default:
			ok = ok && read == s.Delivered+s.Dropped
		}
	}
	return b.String(), ok, blockDiscarded
}

func inboundReport(pool *wspool.Pool, feeds []*soakFeed) string {
	ps := pool.Stats()
	byName := map[string]*soakFeed{}
	for _, f := range feeds {
		byName[f.name] = f
	}
	var b strings.Builder
	for _, s := range ps.Feeds {
		f := byName[s.Name]
		read := s.MessagesIn - f.hellos.Load()
		bad := s.QueueDepth != 0 || s.Delivered != f.handled.Load()
		switch f.kind {
		case kindDirect:
			bad = bad || read != s.Delivered || s.Dropped != 0
		case kindBlock, kindSmallBlock:
			bad = bad || read < s.Delivered+s.Dropped
		default:
			bad = bad || read != s.Delivered+s.Dropped
		}
		if bad {
			fmt.Fprintf(&b, "  %s (%s, %v): read %d (in %d - %d hellos), delivered %d, handled %d, dropped %d, queued %d\n",
				s.Name, kindNames[f.kind], s.State, read, s.MessagesIn, f.hellos.Load(), s.Delivered, f.handled.Load(), s.Dropped, s.QueueDepth)
		}
	}
	return b.String()
}

type sendSummary struct {
	total, written, failed, lostWithReset int64
}

// checkSends matches the feeds' send outcomes against what the server
// received. Sends of a feed are written in order and its connections follow
// one another, so a written send the server never got was written on one of
// the connections between the last earlier send received and the next later
// one received; if every such connection ended gracefully (the server read the
// client's close frame, after every byte written before it), the send was
// lost: a violation. Otherwise a reset may have lost it in flight: counted.
func checkSends(feeds []*soakFeed, srv *seqServer, v *violations) sendSummary {
	var sum sendSummary
	for _, f := range feeds {
		f.smu.Lock()
		reports, written := slices.Clone(f.reports), slices.Clone(f.written)
		f.smu.Unlock()
		f.mu.Lock()
		conns := slices.Clone(f.helloConns)
		f.mu.Unlock()
		pos := make(map[int64]int, len(conns))
		for i, c := range conns {
			pos[c] = i
		}
		sf := srv.feeds[f.idx]
		sf.mu.Lock()
		recv := slices.Clone(sf.recv)
		sf.mu.Unlock()

		got := make(map[int64]int64, len(recv)) // seq -> conn
		for _, r := range recv {
			if prev, dup := got[r.seq]; dup {
				v.add("%s: send %d received twice (connections %d and %d)", f.name, r.seq, prev, r.conn)
				continue
			}
			got[r.seq] = r.conn
			if r.seq > int64(len(reports)) {
				v.add("%s: server received send %d that was never made", f.name, r.seq)
				continue
			}
			if _, ok := pos[r.conn]; !ok {
				v.add("%s: send %d received on connection %d whose OnConnect never completed", f.name, r.seq, r.conn)
			}
			if !written[r.seq-1] {
				v.add("%s: send %d received by the server but reported failed (reports %d)", f.name, r.seq, reports[r.seq-1])
			}
		}
		// Received sends in seq order must use connections in order.
		seqs := make([]int64, 0, len(got))
		for s := range got {
			seqs = append(seqs, s)
		}
		slices.Sort(seqs)
		for i := 1; i < len(seqs); i++ {
			if pos[got[seqs[i]]] < pos[got[seqs[i-1]]] {
				v.add("%s: send %d went out on connection %d, before send %d on connection %d", f.name, seqs[i], got[seqs[i]], seqs[i-1], got[seqs[i-1]])
			}
		}
		for i, n := range reports {
			seq := int64(i + 1)
			sum.total++
			switch {
			case n == 0:
				v.add("%s: send %d never reported", f.name, seq)
				continue
			case !written[i]:
				sum.failed++
				continue
			}
			sum.written++
			if _, ok := got[seq]; ok {
				continue
			}
			// Bracket by the nearest received sends.
			lo, hi := 0, len(conns)-1
			k, _ := slices.BinarySearch(seqs, seq)
			if k > 0 {
				lo = pos[got[seqs[k-1]]]
			}
			if k < len(seqs) {
				hi = pos[got[seqs[k]]] - 1
			}
			if hi < lo && k == len(seqs) {
				v.add("%s: send %d reported written, but the feed never completed a connection", f.name, seq)
				continue
			}
			if hi < lo {
				// It would have to precede a later send on the same connection.
				v.add("%s: send %d reported written but never received, though send %d after it arrived on connection %d (a gap)", f.name, seq, seqs[k], got[seqs[k]])
				continue
			}
			lossy := false
			for j := lo; j <= hi; j++ {
				if sc := srv.conn(conns[j]); sc == nil || !sc.graceful.Load() {
					lossy = true
				}
			}
			if lossy {
				sum.lostWithReset++
			} else {
				v.add("%s: send %d reported written but never received; it went out on connection(s) %v, all closed gracefully", f.name, seq, conns[lo:hi+1])
			}
		}
	}
	return sum
}

// ---- the fault injector ----

type soakChaos struct {
	rng        *rand.Rand
	proxies    []*faultproxy.Proxy
	srv        *wstest.Server
	v          *violations
	counts     map[string]int
	active     []map[string]bool // per proxy: timed faults in progress
	undo       []chaosUndo
	srvDown    bool
	lastRst    time.Time
	startFails int
}

type chaosUndo struct {
	at time.Time
	fn func()
}

func newChaos(seed uint64, proxies []*faultproxy.Proxy, srv *wstest.Server, v *violations) *soakChaos {
	c := &soakChaos{rng: rand.New(rand.NewPCG(seed, 0xc4a05)), proxies: proxies, srv: srv, v: v, counts: map[string]int{}}
	for range proxies {
		c.active = append(c.active, map[string]bool{})
	}
	return c
}

func (c *soakChaos) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(c.rng.Int64N(int64(hi-lo)+1))
}

func (c *soakChaos) later(d time.Duration, fn func()) {
	c.undo = append(c.undo, chaosUndo{at: time.Now().Add(d), fn: fn})
}

func (c *soakChaos) runDue(all bool) {
	now := time.Now()
	keep := c.undo[:0]
	var due []chaosUndo
	for _, u := range c.undo {
		if all || !u.at.After(now) {
			due = append(due, u)
		} else {
			keep = append(keep, u)
		}
	}
	c.undo = keep
	for _, u := range due {
		u.fn()
	}
}

func (c *soakChaos) run(stop <-chan struct{}) {
	// About 7 faults a second for 10 proxies, proportionally fewer for fewer,
	// but at least 3 a second.
	meanGap := min(150*time.Millisecond*time.Duration(10)/time.Duration(len(c.proxies)), 300*time.Millisecond)
	next := time.Now()
	for {
		c.runDue(false)
		wake := next
		for _, u := range c.undo {
			if u.at.Before(wake) {
				wake = u.at
			}
		}
		tm := time.NewTimer(time.Until(wake))
		select {
		case <-stop:
			tm.Stop()
			c.clearAll()
			return
		case <-tm.C:
		}
		if time.Now().Before(next) {
			continue
		}
		c.inject()
		next = time.Now().Add(c.between(meanGap/5, meanGap*9/5))
	}
}

func (c *soakChaos) timed(i int, kind string, d time.Duration, on, off func()) {
	if c.active[i][kind] {
		return
	}
	c.active[i][kind] = true
	c.counts[kind]++
	on()
	c.later(d, func() { off(); c.active[i][kind] = false })
}

func (c *soakChaos) inject() {
	if !c.srvDown && time.Since(c.lastRst) > 2*time.Second && c.rng.IntN(100) < 4 {
		c.restartServer()
		return
	}
	i := c.rng.IntN(len(c.proxies))
	p := c.proxies[i]
	switch r := c.rng.IntN(16); {
	case r < 3:
		c.counts["reset"]++
		p.ResetAll()
	case r < 5:
		c.counts["close"]++
		p.CloseAll()
	case r < 7:
		c.timed(i, "blackhole", c.between(500*time.Millisecond, 3*time.Second),
			func() { p.SetMode(faultproxy.Blackhole) }, func() { p.SetMode(faultproxy.PassThrough) })
	case r < 9:
		c.timed(i, "latency", c.between(time.Second, 4*time.Second),
			func() { p.SetLatency(c.between(20*time.Millisecond, 250*time.Millisecond)) }, func() { p.SetLatency(0) })
	case r < 11:
		c.timed(i, "throttle", c.between(time.Second, 4*time.Second),
			func() { p.SetBandwidth(1<<10 + c.rng.IntN(15<<10)) }, func() { p.SetBandwidth(0) })
	case r < 13:
		c.timed(i, "slice", c.between(time.Second, 3*time.Second),
			func() { p.SetSlice(1 + c.rng.IntN(7)) }, func() { p.SetSlice(0) })
	default:
		c.timed(i, "refuse", c.between(300*time.Millisecond, 2*time.Second),
			func() { p.SetRefuse(true) }, func() { p.SetRefuse(false) })
	}
}

func (c *soakChaos) restartServer() {
	c.srvDown = true
	down := c.between(200*time.Millisecond, time.Second)
	if c.rng.IntN(2) == 0 {
		c.counts["server-goingaway"]++
		c.srv.GoingAway()
		c.srv.StopListening()
	} else {
		c.counts["server-stop"]++
		c.srv.Stop()
	}
	c.later(down, c.startServer)
}

func (c *soakChaos) startServer() {
	if err := c.srv.Start(); err != nil {
		// The port can be taken meanwhile by an outgoing connection: retry.
		c.startFails++
		if c.startFails > 100 {
			c.v.add("server restart failed: %v", err)
			return
		}
		c.later(100*time.Millisecond, c.startServer)
		return
	}
	c.srvDown = false
	c.lastRst = time.Now()
}

// clearAll ends every fault: pending undos run at once, and every knob is reset.
func (c *soakChaos) clearAll() {
	for len(c.undo) > 0 {
		c.runDue(true)
		if len(c.undo) > 0 {
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, p := range c.proxies {
		p.SetMode(faultproxy.PassThrough)
		p.SetLatency(0)
		p.SetBandwidth(0)
		p.SetSlice(0)
		p.SetRefuse(false)
	}
}

func (c *soakChaos) summary() string { return formatCounts(c.counts) }

// TestChaosBlockQueueNoGapAfterKill pins down an ordering failure the soak can
// hit: a Block queue is full, the reader waits to push message 3, and the
// connection is torn down (here by a Send that hits the peer's reset). The
// reader gives message 3 up, but gorilla's read buffer still holds messages
// 4..10, which the reader goes on to read; if the handler made room
// meanwhile, message 4 is queued and delivered: message 3 is lost in the
// middle of the connection's stream, which Block promises never to do.
func TestChaosBlockQueueNoGapAfterKill(t *testing.T) {
	const perConn, conns = 10, 20
	srvConns := make(chan *websocket.Conn, 64)
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		// All ten frames in one write: the client's read buffer gets them at once.
		var raw []byte
		for i := 1; i <= perConn; i++ {
			p := strconv.Itoa(i)
			raw = append(append(raw, 0x81, byte(len(p))), p...)
		}
		if _, err := c.UnderlyingConn().Write(raw); err != nil {
			return
		}
		srvConns <- c
		wstest.Drain(c, nil)
	})
	var (
		client  *wspool.Client
		mu      sync.Mutex
		seen    [][]int // per connection, the messages handled
		resets  int
		sendErr error
	)
	handler := func(ctx context.Context, m wspool.Message) error {
		n, err := strconv.Atoi(string(m.Data))
		if err != nil {
			return err
		}
		mu.Lock()
		if n == 1 {
			seen = append(seen, nil)
		}
		if len(seen) > 0 {
			seen[len(seen)-1] = append(seen[len(seen)-1], n)
		}
		mu.Unlock()
		if n != 1 {
			return nil
		}
		// Message 2 fills the queue and the reader waits to push message 3.
		if err := wstest.WaitFor(ctx, 5*time.Second, func() bool { return client.Stats().QueueDepth == 1 }); err != nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
		// The server resets the connection; our next write fails and kills it.
		var sc *websocket.Conn
		select {
		case sc = <-srvConns:
		case <-ctx.Done():
			return nil
		}
		if tc, ok := sc.UnderlyingConn().(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		sc.UnderlyingConn().Close()
		for i := 0; i < 100; i++ {
			time.Sleep(5 * time.Millisecond)
			if err := client.Send(ctx, wspool.TextMessage, []byte("x")); err != nil {
				mu.Lock()
				resets++
				sendErr = err
				mu.Unlock()
				break
			}
		}
		return nil // the queue makes room now
	}
	var err error
	client, err = wspool.NewClient(srv.URL("/"), handler,
		wspool.WithQueue(wspool.Queue{Messages: 1, Policy: wspool.Block}),
		wspool.WithBackoff(5*time.Millisecond, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, client)
	waitFor(t, 60*time.Second, fmt.Sprintf("%d connections", conns), func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) > conns
	})
	mu.Lock()
	defer mu.Unlock()
	var gaps []string
	for i, s := range seen[:conns] {
		for j := range s {
			if s[j] != j+1 {
				gaps = append(gaps, fmt.Sprintf("connection %d handled %v", i+1, s))
				break
			}
		}
	}
	t.Logf("%d connections, %d killed by a failed send (%v)", conns, resets, sendErr)
	if len(gaps) > 0 {
		t.Fatalf("Block queue lost a message in the middle of a connection's stream in %d of %d connections:\n  %s",
			len(gaps), conns, strings.Join(gaps, "\n  "))
	}
}

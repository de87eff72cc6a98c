//go:build unix

package natsjs_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/cluster/natsjs"
	"github.com/wspool/wspool/internal/leakcheck"
	"github.com/wspool/wspool/wspooltest"
)

// The test binary doubles as a collector process: with NATSJS_CHILD=collector
// in its environment it runs one member until SIGTERM (or until killed).
func TestMain(m *testing.M) {
	switch os.Getenv("NATSJS_CHILD") {
	case "collector":
		os.Exit(collectorMain())
	case "natsserver":
		os.Exit(natsServerMain())
	case "seqfeed":
		os.Exit(seqfeedMain())
	}
	leakcheck.Main(m) // no goroutine of wspool, natsjs or gorilla left after the tests
}

// parseSeq is the sequenced feed's Config.Seq: the message is the number.
func parseSeq(msg wspool.Message) (uint64, bool) {
	n, err := strconv.ParseUint(string(msg.Data), 10, 64)
	return n, err == nil
}

// resumeFrom is the sequenced feed's Config.Resume: ?from=last+1.
func resumeFrom(_ natsjs.Feed, u *url.URL, _ http.Header, last uint64) error {
	q := u.Query()
	q.Set("from", strconv.FormatUint(last+1, 10))
	u.RawQuery = q.Encode()
	return nil
}

// testConfig is the configuration every member of a test cluster shares.
type testConfig struct {
	Name   string        `json:"name"`
	Shards int           `json:"shards"`
	Slots  int           `json:"slots"`
	TTL    time.Duration `json:"ttl"`
	// Replicas of the buckets and the stream (3 on a NATS cluster).
	Replicas int `json:"replicas"`
	// File storage for the buckets and the stream (memory otherwise: a
	// NATS restart would lose them).
	File bool `json:"file"`
	// DuplicateWindow of the stream (default 2 minutes).
	DuplicateWindow time.Duration `json:"dup_window"`
	// ProxyURLs names, per member, another URL to reach NATS by (a
	// proxy); the others use the cluster's URL.
	ProxyURLs map[string]string `json:"proxy_urls"`
}

func (tc testConfig) config(member string) natsjs.Config {
	storage := jetstream.MemoryStorage
	if tc.File {
		storage = jetstream.FileStorage
	}
	return natsjs.Config{
		Name: tc.Name, Member: member, Shards: tc.Shards, Slots: tc.Slots, TTL: tc.TTL,
		Replicas: tc.Replicas, Storage: storage, DuplicateWindow: tc.DuplicateWindow, Seq: parseSeq, Resume: resumeFrom,
		Logger:      testLogger(),
		PoolOptions: []wspool.PoolOption{wspool.WithMaxConcurrentDials(128)},
		FeedOptions: func(natsjs.Feed) []wspool.Option {
			return []wspool.Option{wspool.WithBackoff(20*time.Millisecond, 500*time.Millisecond)}
		},
	}
}

// testLogger is the members' logger: discarded, or with NATSJS_LOG=1
// everything to stderr.
func testLogger() *slog.Logger {
	if os.Getenv("NATSJS_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func collectorMain() int {
	var tc testConfig
	if err := json.Unmarshal([]byte(os.Getenv("NATSJS_CONFIG")), &tc); err != nil {
		fmt.Fprintln(os.Stderr, "config:", err)
		return 2
	}
	member := os.Getenv("NATSJS_MEMBER")
	// NATSJS_CPUPROFILE=dir: each collector writes dir/<member>.cpu.prof
	// when it stops gracefully (for profiling the per-message cost).
	if dir := os.Getenv("NATSJS_CPUPROFILE"); dir != "" {
		if f, err := os.Create(filepath.Join(dir, member+".cpu.prof")); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				defer func() {
					pprof.StopCPUProfile()
					f.Close()
				}()
			}
		}
	}
	// Pings every second, two unanswered: a frozen server is left within
	// about 3 s, well inside TTL - Margin.
	url := os.Getenv("NATSJS_URL")
	if u := tc.ProxyURLs[member]; u != "" {
		url = u
	}
	nc, err := nats.Connect(url, nats.Name(member), nats.ReconnectBufSize(-1),
		nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2),
		nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.ReconnectJitter(0, 0),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { fmt.Fprintln(os.Stderr, "nats disconnected:", err) }),
		nats.ReconnectHandler(func(*nats.Conn) { fmt.Fprintln(os.Stderr, "nats reconnected") }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { fmt.Fprintln(os.Stderr, "nats error:", err) }))
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		return 2
	}
	defer nc.Close()
	cfg := tc.config(member)
	m, err := natsjs.New(nc, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "new:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	fmt.Println("READY")
	err = m.Run(ctx)
	b, _ := json.Marshal(m.Stats())
	fmt.Printf("STATS %s\n", b)
	if err != nil {
		fmt.Fprintln(os.Stderr, "run:", err)
		return 1
	}
	return 0
}

// seqfeedMain runs the sequenced feed server (wspooltest.Stream: each feed
// /<name> numbers its messages 1, 2, 3, ... one per interval from its first
// connection; ?from=N resumes from N) in this process until SIGTERM (the
// test binary started with NATSJS_CHILD=seqfeed) and prints its address.
func seqfeedMain() int {
	iv, err := time.ParseDuration(os.Getenv("NATSJS_INTERVAL"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	st := wspooltest.NewStream(iv)
	srv, err := wspooltest.NewServer(st.Serve)
	if err != nil {
		st.Close()
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	fmt.Printf("ADDR %s\n", srv.Addr())
	<-ctx.Done()
	st.Close()
	srv.Close()
	return 0
}

// feedServer is the sequenced feed server (wspooltest.Stream), run as a
// process of its own, like a real upstream: in the test process its
// thousands of connections, each written every interval, took half of that
// process's CPU (profiled at 1,000 feeds) and shared its Go scheduler with
// the embedded NATS server and the watcher.
type feedServer struct {
	p    *proc
	addr string
}

func startFeedServer(t *testing.T, interval time.Duration) *feedServer {
	t.Helper()
	p := &proc{name: "seqfeed", done: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], "-test.run=^$")
	p.cmd.Env = append(os.Environ(), "NATSJS_CHILD=seqfeed", "NATSJS_INTERVAL="+interval.String())
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	var addr string
	waitFor(t, "the feed server", 30*time.Second, func() bool {
		for _, l := range strings.Split(p.output(), "\n") {
			if a, ok := strings.CutPrefix(l, "ADDR "); ok {
				addr = a
				return true
			}
		}
		select {
		case <-p.done:
			t.Fatalf("feed server exited:\n%s", p.output())
		default:
		}
		return false
	})
	return &feedServer{p: p, addr: addr}
}

// cpuTimes returns the CPU time (user and system) each process of the
// cluster has used so far: "test" (this process: the NATS server and the
// watcher), "feeds" and every collector. Linux only (empty elsewhere).
func (c *testCluster) cpuTimes() map[string]time.Duration {
	pids := map[string]int{"test": os.Getpid(), "feeds": c.feeds.p.cmd.Process.Pid}
	for n, p := range c.procs {
		pids[n] = p.cmd.Process.Pid
	}
	out := map[string]time.Duration{}
	for n, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Fields after the command (in parentheses): utime and stime are
		// the 12th and 13th, in clock ticks (100 per second on Linux).
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		out[n] = time.Duration(u+st) * 10 * time.Millisecond
	}
	return out
}

// loadAverage returns the 1-minute load average (Linux), or "?".
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}

// cpuShare formats the CPU each process used between two cpuTimes over d,
// in cores.
func cpuShare(before, after map[string]time.Duration, d time.Duration) string {
	var names []string
	for n := range after {
		if _, ok := before[n]; ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	var parts []string
	var total time.Duration
	for _, n := range names {
		u := after[n] - before[n]
		total += u
		parts = append(parts, fmt.Sprintf("%s %.2f", n, u.Seconds()/d.Seconds()))
	}
	return fmt.Sprintf("%.2f cores (%s)", total.Seconds()/d.Seconds(), strings.Join(parts, ", "))
}

// URL returns the ws:// URL of the named feed.
func (s *feedServer) URL(name string) string { return "ws://" + s.addr + "/" + name }

// envInt reads an integer setting of the tests.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// feedCount is the number of feeds of the cluster tests: NATSJS_FEEDS, by
// default 1,000 (the figure).
func feedCount() int { return envInt("NATSJS_FEEDS", 1000) }

// startNATS starts an embedded JetStream server on loopback.
func startNATS(t testing.TB) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoLog: os.Getenv("NATSJS_SERVER_LOG") == "", NoSigs: true, MaxPayload: 1 << 20,
		LogFile: os.Getenv("NATSJS_SERVER_LOG"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("NATSJS_SERVER_LOG") != "" {
		ns.ConfigureLogger()
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

// proc is a collector process.
type proc struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// stats returns the Stats line the process printed when it stopped.
func (p *proc) stats() (natsjs.Stats, bool) {
	var s natsjs.Stats
	for _, l := range strings.Split(p.output(), "\n") {
		if rest, ok := strings.CutPrefix(l, "STATS "); ok {
			return s, json.Unmarshal([]byte(rest), &s) == nil
		}
	}
	return s, false
}

// testCluster is a NATS server, a sequenced feed server, registered feeds,
// collector processes and a watcher of the stream.
type testCluster struct {
	t     *testing.T
	tc    testConfig
	url   string
	nc    *nats.Conn
	admin *natsjs.Member
	feeds *feedServer
	names []string
	w     *watcher
	procs map[string]*proc
}

func newTestCluster(t *testing.T, natsURL string, tc testConfig, nFeeds int, interval time.Duration) *testCluster {
	t.Helper()
	c := &testCluster{t: t, tc: tc, url: natsURL, procs: map[string]*proc{}}
	nc, err := nats.Connect(natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
		nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	c.nc = nc
	t.Cleanup(nc.Close)
	c.admin, err = natsjs.New(nc, tc.config("admin"))
	if err != nil {
		t.Fatal(err)
	}
	c.feeds = startFeedServer(t, interval)
	fs := make([]natsjs.Feed, nFeeds)
	for i := range fs {
		n := fmt.Sprintf("f%04d", i)
		c.names = append(c.names, n)
		fs[i] = natsjs.Feed{Name: n, URL: c.feeds.URL(n)}
	}
	// A NATS cluster may still be placing peers: retry for a while, each
	// attempt bounded (a request lost while the cluster settles would
	// otherwise wait out the whole minute: seen once creating the stream).
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		err := c.admin.Register(ctx, fs...)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		t.Logf("registering the feeds (will retry): %v", err)
		time.Sleep(100 * time.Millisecond)
	}
	js, _ := jetstream.New(nc)
	c.w = startWatcher(t, js, c.admin, c.names)
	t.Cleanup(func() {
		for _, p := range c.procs {
			p.cmd.Process.Signal(syscall.SIGCONT)
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return c
}

// start starts a collector process for member name.
func (c *testCluster) start(name string) *proc {
	c.t.Helper()
	cfg, _ := json.Marshal(c.tc)
	p := &proc{name: name, done: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], "-test.run=^$")
	p.cmd.Env = append(os.Environ(), "NATSJS_CHILD=collector", "NATSJS_URL="+c.url,
		"NATSJS_MEMBER="+name, "NATSJS_CONFIG="+string(cfg))
	p.cmd.Stdout = p
	p.cmd.Stderr = p
	if err := p.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	c.procs[name] = p
	return p
}

// stop sends SIGTERM to a collector and waits for it to exit.
func (c *testCluster) stop(name string) natsjs.Stats {
	c.t.Helper()
	p := c.procs[name]
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		c.t.Fatalf("%s did not stop on SIGTERM:\n%s", name, p.output())
	}
	delete(c.procs, name)
	if os.Getenv("NATSJS_LOG") != "" {
		c.t.Logf("--- %s:\n%s", name, p.output())
	}
	s, ok := p.stats()
	if !ok {
		c.t.Errorf("%s printed no stats:\n%s", name, p.output())
	}
	return s
}

// kill kills a collector with SIGKILL.
func (c *testCluster) kill(name string) {
	c.t.Helper()
	p := c.procs[name]
	p.cmd.Process.Kill()
	<-p.done
	delete(c.procs, name)
}

// stopAll stops every collector gracefully and returns their stats.
func (c *testCluster) stopAll() map[string]natsjs.Stats {
	out := map[string]natsjs.Stats{}
	names := make([]string, 0, len(c.procs))
	for n := range c.procs {
		names = append(names, n)
	}
	for _, n := range names {
		out[n] = c.stop(n)
	}
	return out
}

// dump logs every collector's output (on failure).
func (c *testCluster) dump() {
	if !c.t.Failed() {
		return
	}
	for n, p := range c.procs {
		p.cmd.Process.Signal(syscall.SIGCONT)
		p.cmd.Process.Signal(syscall.SIGQUIT) // a goroutine dump
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
		c.t.Logf("--- %s:\n%s", n, p.output())
	}
}

// feedLog is what the watcher saw of one feed.
type feedLog struct {
	last       uint64
	lastAt     time.Time
	lastMember string
	count      int
	dups, ooo  int
	lost       uint64
	moves      int           // changes of the publishing member after gapsFrom
	maxGap     time.Duration // between consecutive stored messages, after gapsFrom
	maxGapAt   time.Time     // when the message after the largest gap was stored
	// per mark: the member of the last message before it, and the time of
	// the first message after it from another member
	before     []string
	firstAfter []time.Time
}

// watcher reads the stream with an ordered consumer and checks every feed's
// numbers: each must be the previous plus one.
type watcher struct {
	mu       sync.Mutex
	feeds    map[string]*feedLog
	prefix   string
	marks    []time.Time
	total    int
	gapsFrom time.Time
	lastSeq  uint64        // stream sequence of the last message read
	info     func() string // the stream's state, for failures
	hist     map[int]int   // messages stored per 500 ms since histFrom
	histFrom time.Time
}

func startWatcher(t *testing.T, js jetstream.JetStream, m *natsjs.Member, names []string) *watcher {
	t.Helper()
	w := &watcher{feeds: map[string]*feedLog{}, prefix: m.Subject("")}
	for _, n := range names {
		w.feeds[n] = &feedLog{}
	}
	w.info = func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, m.StreamName())
		if err != nil {
			return err.Error()
		}
		i, err := s.Info(ctx)
		if err != nil {
			return err.Error()
		}
		return fmt.Sprintf("%d messages, last at %v", i.State.Msgs, i.State.LastTime.Format("15:04:05.000"))
	}
	// An ordered consumer; restarted after the last sequence read whenever
	// it stops making progress while the stream has more (it can get stuck
	// across a stream leader change on a NATS cluster).
	consume := func(from uint64) (jetstream.ConsumeContext, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cfg := jetstream.OrderedConsumerConfig{}
		if from > 0 {
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from
		}
		cons, err := js.OrderedConsumer(ctx, m.StreamName(), cfg)
		if err != nil {
			return nil, err
		}
		return cons.Consume(w.on, jetstream.PullMaxMessages(20000), jetstream.PullHeartbeat(2*time.Second))
	}
	cc, err := consume(0)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() { cc.Stop() }()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		var seen uint64
		stalled := 0
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			w.mu.Lock()
			at := w.lastSeq
			w.mu.Unlock()
			if at != seen {
				seen, stalled = at, 0
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			s, err := js.Stream(ctx, m.StreamName())
			var last uint64
			if err == nil {
				if i, err := s.Info(ctx); err == nil {
					last = i.State.LastSeq
				}
			}
			cancel()
			if last <= at {
				continue
			}
			if stalled++; stalled < 3 {
				continue
			}
			cc.Stop()
			if next, err := consume(at + 1); err == nil {
				cc, stalled = next, 0
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
	})
	return w
}

func (w *watcher) on(msg jetstream.Msg) {
	md, err := msg.Metadata()
	if err != nil {
		return
	}
	feed := strings.TrimPrefix(msg.Subject(), w.prefix)
	seq, _ := strconv.ParseUint(msg.Headers().Get(natsjs.HeaderSeq), 10, 64)
	member := msg.Headers().Get(natsjs.HeaderMember)
	at := md.Timestamp
	w.mu.Lock()
	defer w.mu.Unlock()
	if md.Sequence.Stream <= w.lastSeq {
		return // seen before a restart of the consumer
	}
	w.lastSeq = md.Sequence.Stream
	w.total++
	if w.hist != nil && !at.Before(w.histFrom) {
		w.hist[int(at.Sub(w.histFrom)/w.histStep())]++
	}
	f := w.feeds[feed]
	if f == nil {
		return
	}
	f.count++
	switch {
	case seq == f.last+1:
	case seq <= f.last:
		f.dups++
		if seq < f.last {
			f.ooo++
		}
	default:
		f.lost += seq - f.last - 1
	}
	// A gap counts if it ends after gapsFrom (a stall spanning the event).
	if !w.gapsFrom.IsZero() && f.count > 1 && at.After(w.gapsFrom) {
		if g := at.Sub(f.lastAt); g > f.maxGap {
			f.maxGap, f.maxGapAt = g, at
		}
		if member != f.lastMember {
			f.moves++
		}
	}
	for i, mk := range w.marks {
		for len(f.before) <= i {
			f.before = append(f.before, "")
			f.firstAfter = append(f.firstAfter, time.Time{})
		}
		if !at.After(mk) {
			f.before[i] = member
		} else if f.firstAfter[i].IsZero() && member != f.before[i] {
			f.firstAfter[i] = at
		}
	}
	if seq > f.last {
		f.last = seq
	}
	f.lastAt = at
	f.lastMember = member
}

func (w *watcher) histStep() time.Duration {
	if os.Getenv("NATSJS_TIMELINE") != "" {
		return 100 * time.Millisecond
	}
	return 500 * time.Millisecond
}

// startTimeline starts counting the messages stored per histStep (for
// NATSJS_TIMELINE=1: a stall of every feed at once shows as an empty step).
func (w *watcher) startTimeline() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.hist, w.histFrom = map[int]int{}, time.Now()
}

// timeline returns the counts of the steps over d from the start.
func (w *watcher) timeline(d time.Duration) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var hs []string
	for i := 0; i < int(d/w.histStep()); i++ {
		hs = append(hs, strconv.Itoa(w.hist[i]))
	}
	return strings.Join(hs, " ")
}

// mark records an event time; it returns the mark's index.
func (w *watcher) mark() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.marks = append(w.marks, time.Now())
	i := len(w.marks) - 1
	for _, f := range w.feeds {
		for len(f.before) <= i {
			f.before = append(f.before, f.lastMember)
			f.firstAfter = append(f.firstAfter, time.Time{})
		}
	}
	return i
}

// measureGapsFrom starts recording the largest gap of each feed from now on.
func (w *watcher) measureGapsFrom() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.gapsFrom = time.Now()
	for _, f := range w.feeds {
		f.maxGap, f.moves = 0, 0
	}
}

// waitFlowing waits until every feed has a message stored after since.
func (w *watcher) waitFlowing(t *testing.T, since time.Time, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		w.mu.Lock()
		behind := 0
		var example string
		for n, f := range w.feeds {
			if !f.lastAt.After(since) {
				behind++
				example = n
			}
		}
		w.mu.Unlock()
		if behind == 0 {
			return
		}
		if time.Now().After(deadline) {
			w.mu.Lock()
			read := w.total
			w.mu.Unlock()
			if w.info != nil {
				t.Logf("stream: %s; watcher read %d", w.info(), read)
			}
			t.Fatalf("%d feeds have no message since %v (e.g. %s)", behind, since.Format("15:04:05.000"), example)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitCaughtUp waits until the watcher has read every message in the stream.
func (w *watcher) waitCaughtUp(t *testing.T, js jetstream.JetStream, stream string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := int(info.State.Msgs)
	for {
		w.mu.Lock()
		got := w.total
		w.mu.Unlock()
		if got >= want {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("watcher read %d of %d messages", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// summary is what the watcher found over all feeds.
type summary struct {
	messages, dups, ooo int
	lost                uint64
	worstGap            time.Duration
	worstGapFeed        string
	worstGapAt          time.Time
	gaps                []time.Duration // every feed's largest gap, sorted
	movedFeeds          int             // feeds whose publisher changed after gapsFrom
	maxMoves            int             // the most changes of one feed
}

func (w *watcher) summary() summary {
	w.mu.Lock()
	defer w.mu.Unlock()
	var s summary
	for n, f := range w.feeds {
		s.messages += f.count
		s.dups += f.dups
		s.ooo += f.ooo
		s.lost += f.lost
		if f.maxGap > s.worstGap {
			s.worstGap, s.worstGapFeed, s.worstGapAt = f.maxGap, n, f.maxGapAt
		}
		s.gaps = append(s.gaps, f.maxGap)
		if f.moves > 0 {
			s.movedFeeds++
		}
		s.maxMoves = max(s.maxMoves, f.moves)
	}
	slices.Sort(s.gaps)
	return s
}

// moved returns, for mark i, the delays from the mark to the first message
// from a new member of every feed whose last message before the mark came
// from one of the members in from, sorted; and how many such feeds had no
// message after the mark yet.
func (w *watcher) moved(i int, from ...string) (delays []time.Duration, missing int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	mk := w.marks[i]
	for _, f := range w.feeds {
		if len(f.before) <= i || !slices.Contains(from, f.before[i]) {
			continue
		}
		if f.firstAfter[i].IsZero() {
			missing++
			continue
		}
		delays = append(delays, f.firstAfter[i].Sub(mk))
	}
	slices.Sort(delays)
	return delays, missing
}

// owners counts the feeds by the member of their last message.
func (w *watcher) owners() map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]int{}
	for _, f := range w.feeds {
		out[f.lastMember]++
	}
	return out
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (c *testCluster) nc2js() jetstream.JetStream {
	js, _ := jetstream.New(c.nc)
	return js
}

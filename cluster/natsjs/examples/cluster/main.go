// Command cluster shows feeds owned across collector processes with
// cluster/natsjs, with no network: it starts an embedded NATS server and a
// local sequenced feed server, registers the feeds, and starts three
// collector processes (this program again). Once every feed flows it kills
// one collector with SIGKILL and shows its feeds being taken over within
// the lease TTL; then it stops the others with SIGTERM (they hand over at
// once) and checks that every feed's numbers arrived downstream exactly once
// and in order.
//
//	go run ./examples/cluster -feeds 300
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/cluster/natsjs"
	"github.com/wspool/wspool/wspooltest"
)

const ttl = 2 * time.Second

func main() {
	if os.Getenv("CLUSTER_EXAMPLE_MEMBER") != "" {
		os.Exit(collector())
	}
	feeds := flag.Int("feeds", 300, "number of feeds")
	flag.Parse()
	if err := run(context.Background(), os.Stdout, os.Args[0], *feeds); err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		os.Exit(1)
	}
}

// config is what every member shares: the sequenced feed's numbers are the
// sequence, and a dial resumes after the last one stored downstream.
func config(member string) natsjs.Config {
	return natsjs.Config{
		Name: "example", Member: member, TTL: ttl, Storage: jetstream.MemoryStorage,
		Seq: func(m wspool.Message) (uint64, bool) {
			n, err := strconv.ParseUint(string(m.Data), 10, 64)
			return n, err == nil
		},
		Resume: func(_ natsjs.Feed, u *url.URL, _ http.Header, last uint64) error {
			q := u.Query()
			q.Set("from", strconv.FormatUint(last+1, 10))
			u.RawQuery = q.Encode()
			return nil
		},
	}
}

// collector is one member process: it runs until SIGTERM.
func collector() int {
	member := os.Getenv("CLUSTER_EXAMPLE_MEMBER")
	// The connection options the module's README recommends: reconnect for
	// ever, send nothing buffered after a reconnect (a renewal or publish
	// must not go out after its lease ended), and leave a frozen server
	// before a lease has to be proven again: (MaxPingsOutstanding + 1) x
	// PingInterval below TTL - Margin, here 1.2 s against 1.5 s (New logs
	// a warning otherwise).
	nc, err := nats.Connect(os.Getenv("CLUSTER_EXAMPLE_NATS"), nats.MaxReconnects(-1),
		nats.ReconnectBufSize(-1), nats.PingInterval(400*time.Millisecond), nats.MaxPingsOutstanding(2))
	if err != nil {
		fmt.Fprintln(os.Stderr, member+":", err)
		return 1
	}
	defer nc.Close()
	m, err := natsjs.New(nc, config(member))
	if err != nil {
		fmt.Fprintln(os.Stderr, member+":", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := m.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, member+":", err)
		return 1
	}
	s := m.Stats()
	// Acquired and Released count every move of a lease, including the
	// start-up churn: the first collector to start claims every shard and
	// hands most of them over as the others register.
	fmt.Printf("  %s stopped: published %d messages (and %d copies JetStream already had); leases acquired %d (%d taken over from a dead member, %d handed over by another), released %d (handed to another member: start-up rebalancing, then this SIGTERM)\n",
		member, s.Published, s.Duplicates, s.Acquired, s.Takeovers, s.Handovers, s.Released)
	return 0
}

// feedState is what the downstream reader saw of one feed.
type feedState struct {
	last   uint64
	member string
	bad    int // numbers that were not the previous plus one
	at     time.Time
}

// run starts everything, kills a collector, and checks the stream. self is
// the program to start as a collector.
func run(ctx context.Context, w io.Writer, self string, nFeeds int) error {
	out := &lockedWriter{w: w} // the collectors' output is copied in too
	dir, err := os.MkdirTemp("", "wspool-cluster-example")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoSigs: true, NoLog: true})
	if err != nil {
		return err
	}
	go ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(10 * time.Second) {
		return errors.New("nats-server not ready")
	}
	// Sequenced feeds: /<name> numbers its messages one per 50 ms, and
	// ?from=N resumes from N.
	feeds := wspooltest.NewStream(50 * time.Millisecond)
	defer feeds.Close()
	feedSrv, err := wspooltest.NewServer(feeds.Serve)
	if err != nil {
		return err
	}
	defer feedSrv.Close()

	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return err
	}
	defer nc.Close()
	admin, err := natsjs.New(nc, config("")) // registers feeds only (no Run)
	if err != nil {
		return err
	}
	var fs []natsjs.Feed
	for i := 0; i < nFeeds; i++ {
		n := fmt.Sprintf("feed%03d", i)
		fs = append(fs, natsjs.Feed{Name: n, URL: feedSrv.URL(n)})
	}
	if err := admin.Register(ctx, fs...); err != nil {
		return err
	}
	fmt.Fprintf(out, "NATS at %s, %d feeds registered, lease TTL %v\n", ns.ClientURL(), nFeeds, ttl)

	// Read the whole stream, checking each feed's numbers.
	var mu sync.Mutex
	state := map[string]*feedState{}
	js, _ := jetstream.New(nc)
	cons, err := js.OrderedConsumer(ctx, admin.StreamName(), jetstream.OrderedConsumerConfig{})
	if err != nil {
		return err
	}
	total := 0
	cc, err := cons.Consume(func(m jetstream.Msg) {
		feed := strings.TrimPrefix(m.Subject(), admin.Subject(""))
		seq, _ := strconv.ParseUint(m.Headers().Get(natsjs.HeaderSeq), 10, 64)
		md, _ := m.Metadata()
		mu.Lock()
		defer mu.Unlock()
		total++
		f := state[feed]
		if f == nil {
			f = &feedState{}
			state[feed] = f
		}
		if seq != f.last+1 {
			f.bad++
		}
		f.last, f.member = max(f.last, seq), m.Headers().Get(natsjs.HeaderMember)
		if md != nil {
			f.at = md.Timestamp
		}
	}, jetstream.PullMaxMessages(10000))
	if err != nil {
		return err
	}
	defer cc.Stop()
	owners := func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		o := map[string]int{}
		for _, f := range state {
			o[f.member]++
		}
		return o
	}
	flowingSince := func(t time.Time) bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, f := range state {
			if f.at.After(t) {
				n++
			}
		}
		return n == nFeeds
	}
	wait := func(what string, d time.Duration, cond func() bool) error {
		deadline := time.Now().Add(d)
		for !cond() {
			if time.Now().After(deadline) {
				return fmt.Errorf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
		return nil
	}

	procs := map[string]*exec.Cmd{}
	defer func() {
		for _, p := range procs {
			p.Process.Kill()
			p.Wait()
		}
	}()
	for _, m := range []string{"collector-a", "collector-b", "collector-c"} {
		p := exec.Command(self)
		p.Env = append(os.Environ(), "CLUSTER_EXAMPLE_MEMBER="+m, "CLUSTER_EXAMPLE_NATS="+ns.ClientURL())
		p.Stdout, p.Stderr = out, os.Stderr
		if err := p.Start(); err != nil {
			return err
		}
		procs[m] = p
	}
	if err := wait("three collectors publishing", 60*time.Second, func() bool { return len(owners()) == 3 }); err != nil {
		return err
	}
	if err := wait("every feed flowing", 30*time.Second, func() bool { return flowingSince(time.Now().Add(-time.Second)) }); err != nil {
		return err
	}
	before := owners()
	fmt.Fprintf(out, "feeds per collector: %s\n", show(before))

	fmt.Fprintf(out, "kill -9 collector-b (%d feeds)\n", before["collector-b"])
	killed := time.Now()
	procs["collector-b"].Process.Kill()
	procs["collector-b"].Wait()
	delete(procs, "collector-b")
	if err := wait("the takeover", 4*ttl, func() bool { return owners()["collector-b"] == 0 && flowingSince(killed) }); err != nil {
		return err
	}
	fmt.Fprintf(out, "taken over %v after the kill (TTL %v): %s\n", time.Since(killed).Round(10*time.Millisecond), ttl, show(owners()))

	for name, p := range procs {
		p.Process.Signal(syscall.SIGTERM)
		p.Wait()
		delete(procs, name)
	}
	// Everything stored has been read once the reader has the stream's count.
	s, err := js.Stream(ctx, admin.StreamName())
	if err != nil {
		return err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return err
	}
	if err := wait("the reader", 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return total >= int(info.State.Msgs) }); err != nil {
		return err
	}
	mu.Lock()
	bad := 0
	for _, f := range state {
		bad += f.bad
	}
	mu.Unlock()
	fmt.Fprintf(out, "downstream: %d messages over %d feeds, %d out of sequence (lost, doubled or reordered)\n", total, nFeeds, bad)
	if bad > 0 {
		return fmt.Errorf("%d messages out of sequence", bad)
	}
	return nil
}

func show(o map[string]int) string {
	var names []string
	for n := range o {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range slices.Compact(names) {
		fmt.Fprintf(&b, "%s %d  ", n, o[n])
	}
	return strings.TrimSpace(b.String())
}

// lockedWriter serializes writes from this program and its collectors' output.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

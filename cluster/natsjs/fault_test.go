//go:build unix

package natsjs_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/wspool/wspool/cluster/natsjs"
)

// The fault tests (TestFault*) run in ./ci.sh's -race phase, with collector
// processes built with -race too, so they use fewer feeds than the
// TestCluster* timings: NATSJS_FAULT_FEEDS, default 100.
func faultFeeds() int { return envInt("NATSJS_FAULT_FEEDS", 100) }

// faultInterval is their feeds' message interval: 200 ms, a quarter of the
// TestCluster* rate, which the race-built NATS server in the test process
// takes on a loaded machine.
const faultInterval = 200 * time.Millisecond

// faultShards is their shard count: 64, a quarter of the default, as the
// lease renewals (one per shard and slot every TTL/4) are most of the race-
// built NATS server's work besides the messages.
const faultShards = 64

// faultTTL is their lease TTL: renewals every 750 ms, each lease proven for
// 2.25 s after its last renewal was sent, which a loaded 2-core machine
// running everything under -race keeps (at 2 s, members there fenced
// leases for slow renewals alone).
const faultTTL = 3 * time.Second

// restartableNATS is an embedded JetStream server with file storage that a
// test can shut down and start again on the same port and store.
type restartableNATS struct {
	t    *testing.T
	opts server.Options
	ns   *server.Server
}

func startRestartableNATS(t *testing.T) *restartableNATS {
	t.Helper()
	port := freePorts(t, 1)[0]
	r := &restartableNATS{t: t, opts: server.Options{
		Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true, MaxPayload: 1 << 20,
	}}
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *restartableNATS) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", r.opts.Port) }

func (r *restartableNATS) start() {
	r.t.Helper()
	o := r.opts
	ns, err := server.NewServer(&o)
	if err != nil {
		r.t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		r.t.Fatal("nats-server not ready")
	}
	r.ns = ns
}

func (r *restartableNATS) stop() {
	if r.ns != nil {
		r.ns.Shutdown()
		r.ns.WaitForShutdown()
		r.ns = nil
	}
}

// TestFaultPartition: a member is cut off from NATS by a proxy that keeps
// its connections open and holds what it sent (like a network partition
// whose TCP retransmissions deliver it at the heal), for longer than the
// TTL and the stream's duplicate window (1 s here). Its shards are taken
// over; at the heal the publishes it had sent before it noticed reach the
// stream, seconds late and outside the window. With one slot and with two,
// none of them is stored: every append names its predecessor, so 0
// duplicates, 0 lost, 0 out of order.
func TestFaultPartition(t *testing.T) {
	for _, slots := range []int{1, 2} {
		t.Run(fmt.Sprintf("N%d", slots), func(t *testing.T) { faultPartition(t, slots) })
	}
}

func faultPartition(t *testing.T, slots int) {
	ns := startNATS(t)
	px := startPartitionProxy(t, ns.Addr().String())
	tc := testConfig{Name: "partition", Shards: faultShards, Slots: slots, TTL: faultTTL, DuplicateWindow: time.Second,
		ProxyURLs: map[string]string{"b": px.URL()}}
	c := newTestCluster(t, ns.ClientURL(), tc, faultFeeds(), faultInterval)
	defer c.dump()
	c.startMembers("a", "b", "c")
	if slots == 1 {
		// (With two slots the member of a feed's last message is whoever
		// won the race for it, so owner counts never settle; nothing
		// below depends on the start-up hand-overs being over.)
		c.settle(tc.TTL / 2)
	}

	c.w.measureGapsFrom()
	px.partition()
	i := c.w.mark()
	cut := 2*tc.TTL + tc.DuplicateWindow // b is fenced and taken over, and the window passes
	if slots == 1 {
		c.w.waitFlowing(t, time.Now(), tc.TTL+20*time.Second)
	}
	time.Sleep(cut - time.Since(c.w.marks[i]))
	px.heal()
	healed := time.Now()
	c.w.waitFlowing(t, time.Now(), 30*time.Second)
	// b comes back: its renewals work again and it ranks first for its
	// shards once more.
	waitFor(t, "b publishing again", 30*time.Second, func() bool { return c.owners()["b"] > 0 })
	c.w.waitFlowing(t, time.Now(), 30*time.Second)
	d, missing := c.w.moved(i, "b")
	gaps := c.w.summary()
	bs := c.stop("b")
	s := c.finish()
	t.Logf("partition of b from NATS for %v, N=%d, %d feeds, TTL %v, duplicate window %v: %d of b's feeds moved (first message from another member median %v, max %v, %d never); largest gap of any feed %v; b after the heal: fenced %d, lost %d, dropped %d messages as fenced, publish retries %d; stream %d messages, lost %d, duplicated %d, out of order %d; back in %v after the heal",
		cut, slots, len(c.names), tc.TTL, tc.DuplicateWindow, len(d), pct(d, 0.5), pct(d, 1), missing, gaps.worstGap,
		bs.Fenced, bs.Lost, bs.FencedDrops, bs.PublishRetries, s.messages, s.lost, s.dups, s.ooo, time.Since(healed).Round(time.Millisecond))
	if bs.Fenced+bs.Lost == 0 {
		t.Errorf("b never noticed the partition: %+v", bs)
	}
	if slots == 1 && (missing > 0 || len(d) == 0) {
		t.Errorf("%d of b's feeds never moved (%d did)", missing, len(d))
	}
}

// TestFaultNATSRestart: the NATS server (file storage) shuts down and starts
// again on the same port and store after 0, 3 and 8 s. The members fence
// what they cannot renew, watch the buckets again as soon as the
// connection is back, and claim their own leases back (nobody counts the
// outage as the others' silence): every feed stalls at most the downtime
// plus one TTL, nothing is lost or doubled, and no feed moves twice.
// In "kill3s" a member is killed 3 s after the restart: its feeds are
// taken over within TTL + TTL/10 (plus the dial).
func TestFaultNATSRestart(t *testing.T) {
	for _, down := range []time.Duration{0, 3 * time.Second, 8 * time.Second} {
		t.Run(fmt.Sprintf("down%v", down.Seconds()), func(t *testing.T) { natsRestart(t, down, false) })
	}
	t.Run("kill3s", func(t *testing.T) { natsRestart(t, 0, true) })
}

func natsRestart(t *testing.T, down time.Duration, kill bool) {
	ns := startRestartableNATS(t)
	tc := testConfig{Name: "restart", Shards: faultShards, Slots: 1, TTL: faultTTL, File: true}
	c := newTestCluster(t, ns.URL(), tc, faultFeeds(), faultInterval)
	defer c.dump()
	c.startMembers("a", "b", "c")
	c.settle(tc.TTL / 2)

	c.w.measureGapsFrom()
	start := time.Now()
	ns.stop()
	time.Sleep(down)
	ns.start()
	back := time.Now()
	downtime := back.Sub(start)
	c.w.waitFlowing(t, back, downtime+tc.TTL+30*time.Second)
	flowing := time.Since(back)
	gaps := c.w.summary()
	var d []time.Duration
	missing := 0
	if kill {
		time.Sleep(3*time.Second - time.Since(back))
		c.w.measureGapsFrom()
		c.kill("b")
		i := c.w.mark()
		c.w.waitFlowing(t, time.Now(), tc.TTL+20*time.Second)
		d, missing = c.w.moved(i, "b")
	} else {
		// Past one more TTL: a lease wrongly thought expired would have
		// been taken by now.
		time.Sleep(tc.TTL)
		c.w.waitFlowing(t, time.Now(), 30*time.Second)
	}
	after := c.w.summary()
	s := c.finish()
	if kill {
		t.Logf("NATS restarted (down %v), b killed 3 s after: %d of b's feeds taken over, kill to first message from the new owner median %v, max %v (%d never); stream %d messages, lost %d, duplicated %d, out of order %d",
			downtime.Round(time.Millisecond), len(d), pct(d, 0.5), pct(d, 1), missing, s.messages, s.lost, s.dups, s.ooo)
		if missing > 0 || len(d) == 0 {
			t.Errorf("%d of b's feeds never moved (%d did)", missing, len(d))
		}
		target(t, "slowest takeover after the restart", pct(d, 1), tc.TTL+tc.TTL/10+500*time.Millisecond, 2*tc.TTL)
		return
	}
	t.Logf("NATS restarted after %v down (%v from shutdown to ready), N=1, %d feeds, TTL %v: every feed flowing %v after NATS was back; largest gap of any feed %v (p99 %v, median %v); feeds that changed publisher %d, most changes of one feed %d; stream %d messages, lost %d, duplicated %d, out of order %d",
		down, downtime.Round(time.Millisecond), len(c.names), tc.TTL, flowing.Round(time.Millisecond), gaps.worstGap, pct(gaps.gaps, 0.99), pct(gaps.gaps, 0.5),
		after.movedFeeds, after.maxMoves, s.messages, s.lost, s.dups, s.ooo)
	target(t, "largest gap across the restart", gaps.worstGap, downtime+tc.TTL, downtime+2*tc.TTL)
	if after.maxMoves > 1 {
		t.Errorf("a feed changed publisher %d times across the restart (want at most 1)", after.maxMoves)
	}
	if os.Getenv("NATSJS_LOG") != "" {
		t.Logf("owners after: %v", c.owners())
	}
}

// TestFaultNATSRestartMemory: with memory storage a NATS restart loses the
// buckets and the stream. Once the connection is back the member cannot
// watch its buckets again, and Run returns an error saying so (it used to
// go on blind until its watchers timed out, and then fail).
func TestFaultNATSRestartMemory(t *testing.T) {
	ns := startRestartableNATS(t)
	tc := testConfig{Name: "memory", Shards: 8, Slots: 1, TTL: faultTTL}
	nc, err := nats.Connect(ns.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	m, err := natsjs.New(nc, tc.config("solo"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	waitFor(t, "every shard held", 30*time.Second, func() bool { return m.Stats().LeasesHeld == tc.Shards })
	ns.stop()
	ns.start()
	back := time.Now()
	select {
	case err := <-done:
		t.Logf("Run returned %v after NATS was back: %v", time.Since(back).Round(time.Millisecond), err)
		if err == nil || !strings.Contains(err.Error(), "memory storage") {
			t.Errorf("Run returned %v, want the lost bucket named", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after the buckets were lost")
	}
}

//go:build unix

package natsjs_test

import (
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"
)

// target checks a timing figure against the target. Timings on a
// shared 2-core CI machine are noisy, so by default a miss fails the test
// only beyond the loose bound (which a design fault would exceed); with
// NATSJS_STRICT=1 the target itself must hold.
func target(t *testing.T, what string, got, want, loose time.Duration) {
	t.Helper()
	switch {
	case got <= want:
	case os.Getenv("NATSJS_STRICT") != "" || got > loose:
		t.Errorf("%s %v > %v", what, got, want)
	default:
		t.Logf("TARGET MISSED (not failing without NATSJS_STRICT=1): %s %v > %v", what, got, want)
	}
}

// feedInterval is the sequenced feed's message interval (NATSJS_INTERVAL_MS,
// default 50 ms): the resolution of the stall figures.
func feedInterval() time.Duration {
	return time.Duration(envInt("NATSJS_INTERVAL_MS", 50)) * time.Millisecond
}

// startMembers starts collectors and waits until every feed flows and every
// member publishes some of them.
func (c *testCluster) startMembers(names ...string) {
	c.t.Helper()
	for _, n := range names {
		c.start(n)
	}
	waitFor(c.t, "every member publishing", 60*time.Second, func() bool {
		o := c.owners()
		for _, n := range names {
			if o[n] == 0 {
				return false
			}
		}
		return true
	})
	c.w.waitFlowing(c.t, time.Now(), 30*time.Second)
}

func (c *testCluster) owners() map[string]int { return c.w.owners() }

// settle waits until the owner counts have not changed for d.
func (c *testCluster) settle(d time.Duration) {
	c.t.Helper()
	prev, stable := "", time.Now()
	waitFor(c.t, "the owners to settle", 60*time.Second, func() bool {
		o := fmt.Sprint(c.owners())
		if o != prev {
			prev, stable = o, time.Now()
		}
		return time.Since(stable) > d
	})
}

// finish stops every collector, waits for the watcher to read the whole
// stream, and checks that every feed's numbers are 1, 2, 3, ... with nothing
// missing, doubled or out of order.
func (c *testCluster) finish() summary {
	c.t.Helper()
	st := c.stopAll()
	c.w.waitCaughtUp(c.t, c.nc2js(), c.admin.StreamName())
	s := c.w.summary()
	for n, x := range st {
		c.t.Logf("member %s: %+v", n, x)
	}
	c.t.Logf("stream: %d messages over %d feeds; lost %d, duplicated %d, out of order %d",
		s.messages, len(c.names), s.lost, s.dups, s.ooo)
	if s.lost != 0 || s.dups != 0 || s.ooo != 0 {
		c.t.Errorf("downstream: lost %d, duplicated %d, out of order %d (want 0 each)", s.lost, s.dups, s.ooo)
	}
	return s
}

// TestClusterKillN1: kill -9 of one of three members with one owner per shard: its
// feeds are taken over within TTL + 0.5 s and resume from the stream, with
// nothing lost or duplicated downstream.
func TestClusterKillN1(t *testing.T) {
	ns := startNATS(t)
	tc := testConfig{Name: "killn1", Slots: 1, TTL: 2 * time.Second}
	c := newTestCluster(t, ns.ClientURL(), tc, feedCount(), feedInterval())
	defer c.dump()
	c.startMembers("a", "b", "c")
	t.Logf("owners before: %v", c.owners())

	c.kill("b")
	i := c.w.mark()
	c.w.waitFlowing(t, time.Now(), tc.TTL+20*time.Second)
	d, missing := c.w.moved(i, "b")
	t.Logf("kill -9, N=1, %d feeds, TTL %v: %d feeds taken over, takeover (kill to first message from the new owner) median %v, p99 %v, max %v; owners after: %v",
		len(c.names), tc.TTL, len(d), pct(d, 0.5), pct(d, 0.99), pct(d, 1), c.owners())
	if missing > 0 || len(d) == 0 {
		t.Errorf("%d of b's feeds never moved (%d did)", missing, len(d))
	}
	target(t, "slowest takeover", pct(d, 1), tc.TTL+500*time.Millisecond, 2*tc.TTL)
	c.finish()
}

// TestClusterKillN2: with two slots per shard every feed runs on two members and
// both publish; kill -9 of one loses nothing, doubles nothing downstream, and
// the worst gap between a feed's consecutive messages stays within 200 ms.
func TestClusterKillN2(t *testing.T) {
	ns := startNATS(t)
	tc := testConfig{Name: "killn2", Slots: 2, TTL: 2 * time.Second}
	c := newTestCluster(t, ns.ClientURL(), tc, feedCount(), feedInterval())
	defer c.dump()
	c.startMembers("a", "b", "c")
	// A baseline: the gaps with all three members up, over as long a period.
	period := tc.TTL + time.Second
	c.w.startTimeline()
	c.w.measureGapsFrom()
	cpu0, t0, n0 := c.cpuTimes(), time.Now(), c.w.summary().messages
	time.Sleep(period) // the period whose gaps are measured
	cpu1, t1, n1 := c.cpuTimes(), time.Now(), c.w.summary().messages
	c.w.waitFlowing(t, time.Now(), 10*time.Second)
	base := c.w.summary()
	t.Logf("baseline: %d messages stored per second; CPU used: %s; load average %s",
		int(float64(n1-n0)/t1.Sub(t0).Seconds()), cpuShare(cpu0, cpu1, t1.Sub(t0)), loadAverage())

	c.w.measureGapsFrom()
	c.kill("b")
	i := c.w.mark()
	// Past the TTL: c takes b's slots over; the feeds never wait for it.
	time.Sleep(period)
	c.w.waitFlowing(t, time.Now(), 10*time.Second)
	after := c.w.summary()
	c.finish()
	if os.Getenv("NATSJS_TIMELINE") != "" {
		t.Logf("messages stored per 100 ms from the baseline's start (kill at %v): %s",
			c.w.marks[i].Sub(c.w.histFrom).Round(time.Millisecond), c.w.timeline(2*period))
	}
	// A gap is the time between the stream's timestamps of a feed's
	// consecutive numbers, so it includes the interval in which no number
	// is due: the feed was stalled (its next number late) for gap-interval.
	t.Logf("kill -9, N=2, %d feeds, interval %v: largest gap between a feed's consecutive messages over %v after the kill: worst %v (feed %s, %v after the kill; the next number %v late), p99 %v, median %v; baseline over %v with no kill: worst %v, p99 %v, median %v",
		len(c.names), feedInterval(), period, after.worstGap, after.worstGapFeed, after.worstGapAt.Sub(c.w.marks[i]).Round(time.Millisecond),
		(after.worstGap - feedInterval()).Round(time.Millisecond),
		pct(after.gaps, 0.99), pct(after.gaps, 0.5), period, base.worstGap, pct(base.gaps, 0.99), pct(base.gaps, 0.5))
	target(t, "worst per-feed stall", after.worstGap, 200*time.Millisecond, tc.TTL)
}

// TestClusterZombie: a member stopped (SIGSTOP) for longer than the TTL is taken
// over; when it wakes it finds its leases unproven and publishes nothing
// from its stale connections; nothing is lost, doubled or reordered.
func TestClusterZombie(t *testing.T) {
	ns := startNATS(t)
	tc := testConfig{Name: "zombie", Slots: 1, TTL: 2 * time.Second}
	c := newTestCluster(t, ns.ClientURL(), tc, feedCount(), feedInterval())
	defer c.dump()
	c.startMembers("a", "b", "c")

	p := c.procs["b"]
	p.cmd.Process.Signal(syscall.SIGSTOP)
	i := c.w.mark()
	c.w.waitFlowing(t, time.Now(), tc.TTL+20*time.Second)
	d, missing := c.w.moved(i, "b")
	time.Sleep(time.Second) // stopped for TTL + takeover + 1 s
	paused := time.Since(c.w.marks[i])
	p.cmd.Process.Signal(syscall.SIGCONT)
	j := c.w.mark()
	// b wakes up, finds its leases gone, and rejoins: it ranks first again
	// for its shards, so they are handed back to it.
	waitFor(t, "b publishing again", 30*time.Second, func() bool { return c.owners()["b"] > 0 })
	c.w.waitFlowing(t, time.Now(), 30*time.Second)
	back, _ := c.w.moved(j, "a", "c")
	bs := c.stop("b")
	t.Logf("SIGSTOP, N=1, %d feeds, TTL %v, paused %v: %d feeds taken over (median %v, max %v, %d never); after waking b dropped %d messages as fenced, lost %d leases, fenced %d; %d feeds handed back to b (median %v, max %v)",
		len(c.names), tc.TTL, paused.Round(time.Millisecond), len(d), pct(d, 0.5), pct(d, 1), missing,
		bs.FencedDrops, bs.Lost, bs.Fenced, len(back), pct(back, 0.5), pct(back, 1))
	if missing > 0 || len(d) == 0 {
		t.Errorf("%d of b's feeds never moved (%d did)", missing, len(d))
	}
	if bs.Lost+bs.Fenced == 0 {
		t.Errorf("b never noticed it lost its leases: %+v", bs)
	}
	c.finish()
}

// TestClusterSigterm: SIGTERM hands a member's leases over at once: its feeds
// continue on the others within 200 ms.
func TestClusterSigterm(t *testing.T) {
	ns := startNATS(t)
	tc := testConfig{Name: "sigterm", Slots: 1, TTL: 2 * time.Second}
	c := newTestCluster(t, ns.ClientURL(), tc, feedCount(), feedInterval())
	defer c.dump()
	c.startMembers("a", "b", "c")

	i := c.w.mark()
	bs := c.stop("b")
	c.w.waitFlowing(t, time.Now(), 10*time.Second)
	d, missing := c.w.moved(i, "b")
	t.Logf("SIGTERM, N=1, %d feeds: %d feeds handed over (SIGTERM to first message from the new owner) median %v, p99 %v, max %v; b released %d leases",
		len(c.names), len(d), pct(d, 0.5), pct(d, 0.99), pct(d, 1), bs.Released)
	if missing > 0 || len(d) == 0 {
		t.Errorf("%d of b's feeds never moved (%d did)", missing, len(d))
	}
	target(t, "slowest hand-over", pct(d, 1), 200*time.Millisecond, tc.TTL)
	c.finish()
}

// TestClusterJoinLeave: a 4th member joining takes its share of the shards (the
// others hand them over), and leaving gives it back; nothing is lost or
// doubled.
func TestClusterJoinLeave(t *testing.T) {
	ns := startNATS(t)
	tc := testConfig{Name: "joinleave", Slots: 1, TTL: 2 * time.Second}
	c := newTestCluster(t, ns.ClientURL(), tc, feedCount(), feedInterval())
	defer c.dump()
	c.startMembers("a", "b", "c")

	c.w.measureGapsFrom()
	c.start("d")
	waitFor(t, "d publishing", 30*time.Second, func() bool { return c.owners()["d"] > 0 })
	// Settled when d's share stops growing for a while.
	prev, stable := -1, time.Now()
	waitFor(t, "d's share to settle", 30*time.Second, func() bool {
		n := c.owners()["d"]
		if n != prev {
			prev, stable = n, time.Now()
		}
		return time.Since(stable) > tc.TTL
	})
	joined := c.owners()
	in := c.w.summary()

	c.w.measureGapsFrom()
	j := c.w.mark()
	ds := c.stop("d")
	c.w.waitFlowing(t, time.Now(), 10*time.Second)
	out, missing := c.w.moved(j, "d")
	left := c.w.summary()
	t.Logf("join/leave, N=1, %d feeds, interval %v: owners with d %v (d took %d leases by hand-over); largest gap of any feed while d joined %v (p99 %v); on leaving %d feeds moved back (SIGTERM to first message median %v, max %v; %d never), largest gap %v",
		len(c.names), feedInterval(), joined, ds.Handovers, in.worstGap, pct(in.gaps, 0.99),
		len(out), pct(out, 0.5), pct(out, 1), missing, left.worstGap)
	if joined["d"] == 0 || missing > 0 {
		t.Errorf("d got %d feeds, %d never moved back", joined["d"], missing)
	}
	c.finish()
}

// TestClusterRestartSameName: a member killed with SIGKILL and started again
// at once under the same name (a StatefulSet pod restarting) finds its old
// leases, which hold its name but another process's id, and takes them back
// (it owns as many feeds as before); nothing is lost or doubled.
func TestClusterRestartSameName(t *testing.T) {
	ns := startNATS(t)
	tc := testConfig{Name: "restart", Slots: 1, TTL: 2 * time.Second}
	c := newTestCluster(t, ns.ClientURL(), tc, feedCount()/5, feedInterval())
	defer c.dump()
	c.startMembers("a", "b")
	// The count is taken once start-up hand-overs (a claimed everything
	// before b registered) have stopped moving feeds.
	c.settle(tc.TTL)
	before := c.owners()["b"]
	c.kill("b")
	killed := time.Now()
	c.start("b")
	// Every feed stores a message after the kill; b's only once b has
	// taken its leases back (the TTL would pass first otherwise).
	c.w.waitFlowing(t, killed, 30*time.Second)
	back := time.Since(killed)
	waitFor(t, "b publishing again", 30*time.Second, func() bool { return c.owners()["b"] >= before })
	st := c.finish()
	t.Logf("kill -9 and restart of b under its name, %d feeds: b owned %d before and %d after; every feed flowing again %v after the kill; stream %d messages",
		len(c.names), before, c.owners()["b"], back.Round(time.Millisecond), st.messages)
}

//go:build unix

package natsjs_test

import (
	"testing"
	"time"
)

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

// TestKillN1: kill -9 of one of three members with one owner per shard: its
// feeds are taken over within TTL + 0.5 s and resume from the stream, with
// nothing lost or duplicated downstream.
func TestKillN1(t *testing.T) {
	ns := startNATS(t)
	tc := testConfig{Name: "killn1", Shards: 64, Slots: 1, TTL: 2 * time.Second}
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
	if m := pct(d, 1); m > tc.TTL+500*time.Millisecond {
		t.Errorf("slowest takeover %v > TTL + 0.5 s", m)
	}
	c.finish()
}

//go:build unix

package natsjs_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/wspool/wspool/cluster/natsjs"
)

// runMember runs a member in this process (for -race); stop ends it
// gracefully and returns its stats.
func runMember(t *testing.T, url string, tc testConfig, name string) (stop func() natsjs.Stats) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	m, err := natsjs.New(nc, tc.config(name))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	stopped := false
	stop = func() natsjs.Stats {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: Run: %v", name, err)
			}
			nc.Close()
		}
		return m.Stats()
	}
	t.Cleanup(func() { stop() })
	return stop
}

// TestMembersInProcess runs members in the test process, so that -race sees
// the member's own goroutines: two members share the feeds, one leaves (its
// feeds move), and with two slots both publish and JetStream drops the
// copies. Nothing is lost, doubled or reordered.
func TestMembersInProcess(t *testing.T) {
	for _, slots := range []int{1, 2} {
		ns := startNATS(t)
		tc := testConfig{Name: "inproc", Shards: 16, Slots: slots, TTL: time.Second}
		c := newTestCluster(t, ns.ClientURL(), tc, 40, 20*time.Millisecond)
		stopA := runMember(t, ns.ClientURL(), tc, "a")
		stopB := runMember(t, ns.ClientURL(), tc, "b")
		waitFor(t, "both members publishing", 30*time.Second, func() bool {
			o := c.owners()
			return o["a"] > 0 && o["b"] > 0
		})
		c.w.waitFlowing(t, time.Now(), 10*time.Second)
		i := c.w.mark()
		sa := stopA()
		c.w.waitFlowing(t, time.Now(), 10*time.Second)
		d, missing := c.w.moved(i, "a")
		sb := stopB()
		c.w.waitCaughtUp(t, c.nc2js(), c.admin.StreamName())
		s := c.w.summary()
		t.Logf("slots %d: a %+v; b %+v; %d feeds moved from a (max %v, %d never); stream %d messages, lost %d, duplicated %d, out of order %d",
			slots, sa, sb, len(d), pct(d, 1), missing, s.messages, s.lost, s.dups, s.ooo)
		if s.lost != 0 || s.dups != 0 || s.ooo != 0 {
			t.Errorf("slots %d: lost %d, duplicated %d, out of order %d", slots, s.lost, s.dups, s.ooo)
		}
		if slots == 1 && (missing > 0 || len(d) == 0) {
			t.Errorf("%d of a's feeds never moved (%d did)", missing, len(d))
		}
		if slots == 2 && sb.Duplicates == 0 && sa.Duplicates == 0 {
			t.Errorf("two slots but no duplicates dropped")
		}
		if sa.LeasesHeld != 0 || sb.LeasesHeld != 0 {
			t.Errorf("leases held after Run: %d, %d", sa.LeasesHeld, sb.LeasesHeld)
		}
	}
}

// TestRegisterUnregister: feeds registered while members run are started by
// their owner, and unregistered ones stopped.
func TestRegisterUnregister(t *testing.T) {
	ns := startNATS(t)
	tc := testConfig{Name: "reg", Shards: 8, Slots: 1, TTL: time.Second}
	c := newTestCluster(t, ns.ClientURL(), tc, 5, 20*time.Millisecond)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	m, err := natsjs.New(nc, tc.config("solo"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	waitFor(t, "5 feeds running", 10*time.Second, func() bool { return m.Stats().Feeds == 5 })

	// The watcher only checks the feeds it was told about: a new feed is
	// checked through the member's counters.
	if err := c.admin.Register(ctx, natsjs.Feed{Name: "late", URL: c.feeds.URL("late")}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the late feed running", 10*time.Second, func() bool { return m.Stats().Feeds == 6 })
	feeds, err := c.admin.Feeds(ctx)
	if err != nil || len(feeds) != 6 {
		t.Fatalf("Feeds: %d, %v", len(feeds), err)
	}
	if err := c.admin.Unregister(ctx, "late", c.names[0]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two feeds stopped", 10*time.Second, func() bool { return m.Stats().Feeds == 4 })
	if feeds, _ := c.admin.Feeds(ctx); len(feeds) != 4 {
		t.Fatalf("Feeds after unregister: %d", len(feeds))
	}
}

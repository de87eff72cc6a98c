//go:build unix

package natsjs_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wspool/wspool/cluster/natsjs"
)

// runMember runs a member in this process (for -race); stop ends it
// gracefully and returns its stats (the test's cleanup stops it too).
func runMember(t *testing.T, url string, tc testConfig, name string) (m *natsjs.Member, stop func() natsjs.Stats) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	m, err = natsjs.New(nc, tc.config(name))
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
	return m, stop
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
		_, stopA := runMember(t, ns.ClientURL(), tc, "a")
		_, stopB := runMember(t, ns.ClientURL(), tc, "b")
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
	m, _ := runMember(t, ns.ClientURL(), tc, "solo")
	ctx := t.Context()
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

// TestRenewalStoredUnheard: a renewal that JetStream stored but whose
// acknowledgement never came back (a NATS leader frozen or killed
// mid-write: the new leader commits the write the old one had replicated)
// leaves the member one revision behind its own lease. The next renewal is
// refused for the revision; the member reads the key back, finds its own
// name, and renews from there: no lease is lost. Here the unheard renewal is
// made by hand: an Update of each of the member's leases, writing its value
// again. A write of another value under its name (another process with the
// same Member) takes the lease.
func TestRenewalStoredUnheard(t *testing.T) {
	ns := startNATS(t)
	tc := testConfig{Name: "unheard", Shards: 8, Slots: 1, TTL: 2 * time.Second}
	c := newTestCluster(t, ns.ClientURL(), tc, 8, 20*time.Millisecond)
	m, _ := runMember(t, ns.ClientURL(), tc, "solo")
	ctx := t.Context()
	waitFor(t, "every shard held", 10*time.Second, func() bool { return m.Stats().LeasesHeld == tc.Shards })
	c.w.waitFlowing(t, time.Now(), 10*time.Second)

	js, _ := jetstream.New(c.nc)
	kv, err := js.KeyValue(ctx, tc.Name+"_leases")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	moved := map[string]uint64{}
	for _, k := range keys {
		if !strings.HasPrefix(k, "s.") {
			continue
		}
		e, err := kv.Get(ctx, k)
		if err != nil || !strings.HasPrefix(string(e.Value()), "solo@") {
			continue
		}
		// Races a renewal of the member now and then: then the member's
		// own renewal wins and this one is refused, which is fine too.
		if rev, err := kv.Update(ctx, k, e.Value(), e.Revision()); err == nil {
			moved[k] = rev
		}
	}
	if len(moved) == 0 {
		t.Fatal("no lease revision moved on")
	}
	// Two renewal rounds (every TTL/4) later every moved lease has been
	// renewed past the revision written here, and none was lost.
	waitFor(t, "the member renewing the moved leases", 10*time.Second, func() bool {
		for k, rev := range moved {
			if e, err := kv.Get(ctx, k); err != nil || e.Revision() <= rev || !strings.HasPrefix(string(e.Value()), "solo@") {
				return false
			}
		}
		return true
	})
	c.w.waitFlowing(t, time.Now(), 10*time.Second)
	s := m.Stats()
	t.Logf("%d lease revisions moved on behind the member's back; stats %+v", len(moved), s)
	if s.Lost != 0 || s.Fenced != 0 || s.LeasesHeld != tc.Shards {
		t.Errorf("lost %d, fenced %d, held %d of %d (want 0, 0, all)", s.Lost, s.Fenced, s.LeasesHeld, tc.Shards)
	}

	// Another process under the same name (a second incarnation: its own
	// id) writing a lease takes it: the member gives it up.
	for k := range moved {
		e, err := kv.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Update(ctx, k, []byte("solo@other"), e.Revision()); err != nil {
			continue // raced a renewal: try the next key
		}
		waitFor(t, "the lease written by another incarnation given up", 10*time.Second, func() bool { return m.Stats().Lost > 0 })
		break
	}
	if m.Stats().Lost == 0 {
		t.Error("no lease given up to another incarnation")
	}
}

// TestRefusedFeedLeaseStillOurs: the stream refuses a feed's publish
// (another writer appended to its subject), so the member checks whether the
// shard's lease is still its own. The lease key's revision has moved on
// behind the member's back (as after a renewal stored without its hearing
// back), but the key holds its name: the lease is still its own, so the feed
// restarts from the stream and nothing is counted lost or dropped.
func TestRefusedFeedLeaseStillOurs(t *testing.T) {
	ns := startNATS(t)
	tc := testConfig{Name: "refused", Shards: 4, Slots: 1, TTL: 2 * time.Second}
	c := newTestCluster(t, ns.ClientURL(), tc, 4, 20*time.Millisecond)
	m, _ := runMember(t, ns.ClientURL(), tc, "solo")
	ctx := t.Context()
	// A feed the watcher does not check (its subject gets a foreign message).
	if err := c.admin.Register(ctx, natsjs.Feed{Name: "extra", URL: c.feeds.URL("extra")}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every shard held and 5 feeds running", 10*time.Second, func() bool {
		s := m.Stats()
		return s.LeasesHeld == tc.Shards && s.Feeds == 5
	})
	c.w.waitFlowing(t, time.Now(), 10*time.Second)
	js, _ := jetstream.New(c.nc)
	waitFor(t, "the extra feed stored", 10*time.Second, func() bool {
		s, err := js.Stream(ctx, tc.Name)
		if err != nil {
			return false
		}
		_, err = s.GetLastMsgForSubject(ctx, m.Subject("extra"))
		return err == nil
	})

	kv, err := js.KeyValue(ctx, tc.Name+"_leases")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if e, err := kv.Get(ctx, k); err == nil && strings.HasPrefix(k, "s.") && strings.HasPrefix(string(e.Value()), "solo@") {
			kv.Update(ctx, k, e.Value(), e.Revision())
		}
	}
	before := m.Stats()
	foreign := &nats.Msg{Subject: m.Subject("extra"), Data: []byte("foreign"), Header: nats.Header{}}
	foreign.Header.Set(jetstream.MsgIDHeader, "extra:foreign")
	if _, err := js.PublishMsg(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the extra feed refused and restarted", 10*time.Second, func() bool {
		s, err := js.Stream(ctx, tc.Name)
		if err != nil {
			return false
		}
		last, err := s.GetLastMsgForSubject(ctx, m.Subject("extra"))
		return err == nil && string(last.Data) != "foreign" && m.Stats().FencedDrops > before.FencedDrops
	})
	c.w.waitFlowing(t, time.Now(), 10*time.Second)
	s := m.Stats()
	t.Logf("stats %+v", s)
	if s.Lost != 0 || s.Fenced != 0 || s.LeasesHeld != tc.Shards || s.Acquired != before.Acquired {
		t.Errorf("lost %d, fenced %d, held %d of %d, acquired %d then %d (want 0, 0, all, unchanged)",
			s.Lost, s.Fenced, s.LeasesHeld, tc.Shards, before.Acquired, s.Acquired)
	}
}

// TestNewRefusesBufferingConnection: a member's connection must not buffer
// while it reconnects (a buffered renewal or publish would be sent when the
// connection is back, however long after its lease ended): New fails for
// one that does, says what to use, and accepts nats.ReconnectBufSize(-1). A
// Member that only registers feeds (no Config.Member) is not held to it.
func TestNewRefusesBufferingConnection(t *testing.T) {
	ns := startNATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	cfg := natsjs.Config{Member: "a", Logger: slog.New(slog.DiscardHandler)}
	if _, err := natsjs.New(nc, cfg); err == nil || !strings.Contains(err.Error(), "nats.ReconnectBufSize(-1)") {
		t.Errorf("New with a buffering connection: %v, want an error naming nats.ReconnectBufSize(-1)", err)
	}
	if _, err := natsjs.New(nc, natsjs.Config{Logger: cfg.Logger}); err != nil {
		t.Errorf("New without a Member: %v", err)
	}
	nb, err := nats.Connect(ns.ClientURL(), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()
	if _, err := natsjs.New(nb, cfg); err != nil {
		t.Errorf("New with nats.ReconnectBufSize(-1): %v", err)
	}
}

// TestNewWarningReachesDefaultLogger: New's warning about ping options that
// notice a frozen server later than a lease can wait goes to slog.Default()
// when Config.Logger is nil (it used to be discarded), and to
// Config.Logger when set.
func TestNewWarningReachesDefaultLogger(t *testing.T) {
	ns := startNATS(t)
	nc, err := nats.Connect(ns.ClientURL(), nats.ReconnectBufSize(-1)) // pings every 2 minutes
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var def, own bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&def, nil)))
	defer slog.SetDefault(old)
	if _, err := natsjs.New(nc, natsjs.Config{Member: "a"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(def.String(), "level=WARN") || !strings.Contains(def.String(), "nats.PingInterval") {
		t.Errorf("slog.Default() got %q, want the ping warning", def.String())
	}
	def.Reset()
	if _, err := natsjs.New(nc, natsjs.Config{Member: "a", Logger: slog.New(slog.NewTextHandler(&own, nil))}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(own.String(), "nats.PingInterval") || def.Len() != 0 {
		t.Errorf("Config.Logger got %q and slog.Default() %q, want the warning in the first only", own.String(), def.String())
	}
}

package syncstate_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/leakcheck"
	"github.com/wspool/wspool/syncstate"
	"github.com/wspool/wspool/wspooltest"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

type book = map[string]int64

// kit is a wspooltest.Stream of updates in shape, a feed reading it, and a
// State kept from it.
type kit struct {
	st    *wspooltest.Stream
	srv   *wspooltest.Server
	feed  *wspool.Client
	state *syncstate.State[book, wspooltest.Update]

	mu      sync.Mutex
	resyncs []syncstate.Resync
}

func startKit(t *testing.T, shape wspool.SequenceShape, seed uint64) *kit {
	t.Helper()
	k := &kit{st: wspooltest.NewStream(0, wspooltest.Updates(shape, 30, seed))}
	t.Cleanup(k.st.Close)
	srv, err := wspooltest.NewServer(k.st.Serve)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	k.srv = srv
	snapURL, err := k.st.SnapshotURL("/book")
	if err != nil {
		t.Fatal(err)
	}
	k.state, err = syncstate.New(syncstate.Config[book, wspooltest.Update]{
		Fetch: func(ctx context.Context) (syncstate.Snapshot[book], error) { return fetchSnapshot(ctx, snapURL) },
		Apply: applyUpdate,
		Check: func(b *book, u wspooltest.Update) error {
			if sum := wspooltest.Checksum(*b); sum != u.Checksum {
				return fmt.Errorf("checksum %d, upstream says %d", sum, u.Checksum)
			}
			return nil
		},
		Position: func(u wspooltest.Update) wspool.Position {
			return wspool.Position{First: u.First, Last: u.Last, Prev: u.Prev, Epoch: u.Epoch}
		},
		Shape:     shape,
		RetryWait: 2 * time.Millisecond,
		OnResync: func(r syncstate.Resync) {
			k.mu.Lock()
			k.resyncs = append(k.resyncs, r)
			k.mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.state.Close)
	k.feed, err = wspool.NewClient(srv.URL("/book"), wspool.JSON(func(_ context.Context, u wspooltest.Update) error {
		return k.state.Push(u)
	}), wspool.WithBackoff(time.Millisecond, 10*time.Millisecond), wspool.WithPingInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.feed.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return k
}

func fetchSnapshot(ctx context.Context, url string) (syncstate.Snapshot[book], error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return syncstate.Snapshot[book]{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return syncstate.Snapshot[book]{}, err
	}
	defer resp.Body.Close()
	var s wspooltest.Snapshot
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return syncstate.Snapshot[book]{}, err
	}
	if s.State == nil {
		s.State = book{}
	}
	return syncstate.Snapshot[book]{State: s.State, Last: s.Last, Epoch: s.Epoch}, nil
}

func applyUpdate(b *book, u wspooltest.Update) error {
	for _, c := range u.Changes {
		if c.Value == 0 {
			delete(*b, c.Key)
		} else {
			(*b)[c.Key] = c.Value
		}
	}
	return nil
}

// waitTruth waits until the state is in sync at the stream's head and equal
// to the server's true state.
func (k *kit) waitTruth(t *testing.T, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var mine book
		last, in := k.state.Read(func(b *book) { mine = maps.Clone(*b) })
		head, truth := k.st.Head("/book"), k.st.State("/book")
		if in && last == head && maps.Equal(mine, truth) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: state not the server's truth: in sync %v at %d, head %d, equal %v; stats %+v",
				what, in, last, head, maps.Equal(mine, truth), k.state.Stats())
		}
		time.Sleep(time.Millisecond) // polling a condition with a deadline, not waiting for an event to happen
	}
}

// connected waits for the feed's connection number n on the server.
func (k *kit) connected(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for len(k.st.Conns("/book")) != 1 || k.feed.State() != wspool.StateConnected || k.feed.Stats().Connects != n {
		if time.Now().After(deadline) {
			t.Fatal("no connection")
		}
		time.Sleep(time.Millisecond)
	}
}

// The state stays identical to the server's truth through faults of every
// kind, each shape: gaps, restarts of numbering, corrupt updates (checksum
// mismatch), lagging and slow snapshots, dropped connections. Resyncs fetch
// snapshots without reconnecting: the feed connects once plus once per
// dropped connection.
func TestStateMatchesTruthThroughFaults(t *testing.T) {
	faults := 1000
	if testing.Short() {
		faults = 150
	}
	for i, shape := range []wspool.SequenceShape{wspool.NumberRange, wspool.SingleNumber, wspool.LinkedIDs} {
		n := faults
		if shape != wspool.NumberRange { // the range shape (the order book's) takes the full count
			n = faults / 5
		}
		t.Run(shape.String(), func(t *testing.T) {
			seed := uint64(20261205 + i)
			k := startKit(t, shape, seed)
			rng := rand.New(rand.NewPCG(seed, 7))
			k.connected(t, 1)
			k.st.Publish("/book", 20)
			k.waitTruth(t, "start")
			kinds := map[string]int{}
			drops := 0
			start := time.Now()
			for f := range n {
				skipped := 0 // updates left out: the round publishes more, so that one arrives after them
				kind := []string{"gap", "restart", "corrupt", "lagging snapshot", "slow snapshot", "drop"}[rng.IntN(6)]
				kinds[kind]++
				switch kind {
				case "gap":
					skipped = 1 + rng.IntN(3)
					k.st.Skip("/book", skipped)
				case "restart":
					k.st.Restart("/book")
				case "corrupt":
					k.st.Corrupt("/book", 1)
				case "lagging snapshot":
					k.st.SnapshotLag("/book", 6+rng.IntN(4)) // behind the gap whatever is published
					skipped = 1
					k.st.Skip("/book", 1) // a gap makes the State fetch one
				case "slow snapshot":
					k.st.SnapshotDelay(time.Duration(1+rng.IntN(5)) * time.Millisecond)
					skipped = 1
					k.st.Skip("/book", 1)
				case "drop":
					drops++
					k.st.Conns("/book")[0].Drop()
					k.connected(t, int64(1+drops))
				}
				k.st.Publish("/book", skipped+1+rng.IntN(5))
				if kind == "lagging snapshot" {
					// While the snapshots lag, no snapshot lines up with the
					// buffered updates: once one did not, end the lag.
					waitResync(t, k, syncstate.SnapshotBehind)
					k.st.SnapshotLag("/book", 0)
				}
				k.waitTruth(t, fmt.Sprintf("fault %d (%s)", f, kind))
				if kind == "slow snapshot" {
					k.st.SnapshotDelay(0)
				}
			}
			fs := k.feed.Stats()
			ss := k.state.Stats()
			if fs.Connects != int64(1+drops) {
				t.Fatalf("%d connections for %d dropped: a resync reconnected", fs.Connects, drops)
			}
			var byCause []string
			total := int64(0)
			for c, n := range ss.Resyncs {
				if n > 0 {
					byCause = append(byCause, fmt.Sprintf("%v %d", syncstate.Cause(c), n))
					total += n
				}
			}
			var took []time.Duration
			k.mu.Lock()
			for _, r := range k.resyncs {
				if r.Done {
					took = append(took, r.Took)
				}
			}
			k.mu.Unlock()
			slices.Sort(took)
			t.Logf("%d faults %v in %v: %d resyncs (%v), %d fetches; in sync %v, out of sync %v (%.1f%%); resync took median %v, max %v; feed: %d connections",
				n, kinds, time.Since(start).Round(time.Millisecond), total, byCause, ss.Fetches, ss.InSyncTime.Round(time.Millisecond),
				ss.OutOfSyncTime.Round(time.Millisecond), 100*ss.InSyncTime.Seconds()/(ss.InSyncTime+ss.OutOfSyncTime).Seconds(),
				took[len(took)/2].Round(time.Microsecond), ss.MaxResyncTook.Round(time.Microsecond), fs.Connects)
			if ss.Resyncs[syncstate.ChecksumMismatch] == 0 || ss.Resyncs[syncstate.NewEpoch] == 0 || ss.Resyncs[syncstate.Gap] == 0 || ss.Resyncs[syncstate.SnapshotBehind] == 0 {
				t.Fatalf("a cause never seen: %v", byCause)
			}
		})
	}
}

// waitResync waits for a resync with cause to be reported.
func waitResync(t *testing.T, k *kit, c syncstate.Cause) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		k.mu.Lock()
		for i, r := range k.resyncs {
			if r.Cause == c && !r.Done {
				k.resyncs = append(k.resyncs[:i], k.resyncs[i+1:]...)
				k.mu.Unlock()
				return
			}
		}
		k.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no %v resync", c)
		}
		time.Sleep(time.Millisecond)
	}
}

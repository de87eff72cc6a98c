// Command orderbook keeps a local copy of an order book that an exchange
// serves as a snapshot endpoint plus a stream of numbered diffs, through
// faults, and checks it against the exchange's true book after every one.
//
// An embedded local exchange (wspooltest.Stream) publishes diffs of a book
// of price levels in the range shape (each diff covers updates first..last,
// as Binance's depth stream does) with a checksum of the book after it, and
// serves snapshots over HTTP. The client is a wspool feed whose handler hands
// each diff to a syncstate.State: it fetches a snapshot, lines the buffered
// diffs up with it, applies them in order and, on a gap, a restart of the
// numbering or a checksum mismatch, fetches a snapshot again while the
// connection stays up. The faults: dropped connections, diffs left out
// (gaps), numbering restarted (a new epoch), wrong diffs (checksum
// mismatches), and snapshots that lag the stream. After every fault the
// exchange stops publishing until the client's book is in sync at the
// exchange's head, and the two books are compared.
//
// At the end it prints the resyncs by cause, the time in sync, the time to
// resync and the connections made. No network is used (loopback only).
//
//	go run ./examples/orderbook [-duration 10s] [-seed 1] [-rate 500]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/syncstate"
	"github.com/wspool/wspool/wspooltest"
)

// book maps a price level to its quantity; a level with quantity 0 is gone.
type book = map[string]int64

func main() {
	duration := flag.Duration("duration", 10*time.Second, "how long to run the faults")
	seed := flag.Uint64("seed", 1, "seed of the book's diffs and of the faults")
	rate := flag.Int("rate", 500, "diffs per second the exchange publishes between faults")
	flag.Parse()
	if err := run(*duration, *seed, *rate); err != nil {
		fmt.Println("FAIL:", err)
		os.Exit(1)
	}
}

func run(duration time.Duration, seed uint64, rate int) error {
	// The exchange: diffs in the range shape over 40 price levels.
	exchange := wspooltest.NewStream(0, wspooltest.Updates(wspool.NumberRange, 40, seed))
	defer exchange.Close()
	srv, err := wspooltest.NewServer(exchange.Serve)
	if err != nil {
		return err
	}
	defer srv.Close()
	const path = "/depth/BTCUSDT"
	snapshotURL, err := exchange.SnapshotURL(path)
	if err != nil {
		return err
	}

	// The client's book.
	var mu sync.Mutex
	var took []time.Duration
	state, err := syncstate.New(syncstate.Config[book, wspooltest.Update]{
		Fetch: func(ctx context.Context) (syncstate.Snapshot[book], error) { return fetch(ctx, snapshotURL) },
		Apply: func(b *book, u wspooltest.Update) error {
			for _, c := range u.Changes {
				if c.Value == 0 {
					delete(*b, c.Key)
				} else {
					(*b)[c.Key] = c.Value
				}
			}
			return nil
		},
		Check: func(b *book, u wspooltest.Update) error {
			if sum := wspooltest.Checksum(*b); sum != u.Checksum {
				return fmt.Errorf("checksum %08x, the exchange says %08x", sum, u.Checksum)
			}
			return nil
		},
		Position: func(u wspooltest.Update) wspool.Position {
			return wspool.Position{First: u.First, Last: u.Last, Epoch: u.Epoch}
		},
		Shape:     wspool.NumberRange,
		RetryWait: 5 * time.Millisecond,
		OnResync: func(r syncstate.Resync) {
			if r.Done {
				mu.Lock()
				took = append(took, r.Took)
				mu.Unlock()
			}
		},
	})
	if err != nil {
		return err
	}
	defer state.Close()
	feed, err := wspool.NewClient(srv.URL(path), wspool.JSON(func(_ context.Context, u wspooltest.Update) error {
		return state.Push(u)
	}), wspool.WithName("depth"), wspool.WithBackoff(5*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- feed.Run(ctx) }()

	// The publisher: rate diffs a second, stopped while the books are compared.
	var pub sync.Mutex // held while publishing is stopped
	stop := make(chan struct{})
	var pubWG sync.WaitGroup
	pubWG.Add(1)
	go func() {
		defer pubWG.Done()
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		per := max(rate/100, 1)
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			pub.Lock()
			exchange.Publish(path, per)
			pub.Unlock()
		}
	}()
	defer func() { close(stop); pubWG.Wait() }()

	if !waitUntil(10*time.Second, func() bool { return len(exchange.Conns(path)) == 1 }) {
		return fmt.Errorf("the feed did not connect")
	}
	rng := rand.New(rand.NewPCG(seed, 2))
	kinds := []string{"drop", "gap", "restart", "corrupt", "lagging snapshot"}
	count := map[string]int{}
	matched, faults := 0, 0
	drops := 0
	end := time.Now().Add(duration)
	for time.Now().Before(end) {
		kind := kinds[rng.IntN(len(kinds))]
		switch kind {
		case "drop":
			if cs := exchange.Conns(path); len(cs) > 0 {
				cs[0].Drop()
				drops++
			}
		case "gap":
			exchange.Skip(path, 1+rng.IntN(5))
		case "restart":
			exchange.Restart(path)
		case "corrupt":
			exchange.Corrupt(path, 1)
		case "lagging snapshot":
			// The snapshot is taken when asked for and answered later, when
			// the stream has moved on; a gap makes the client ask.
			exchange.SnapshotDelay(time.Duration(20+rng.IntN(80)) * time.Millisecond)
			exchange.Skip(path, 1)
		}
		faults++
		count[kind]++
		time.Sleep(time.Duration(50+rng.IntN(100)) * time.Millisecond) // the fault lasts while the stream goes on
		exchange.SnapshotDelay(0)

		// Stop publishing; wait for the book to be in sync at the head.
		pub.Lock()
		ok := waitUntil(20*time.Second, func() bool {
			return len(exchange.Conns(path)) == 1 && feed.Stats().Connects == int64(1+drops) && feed.State() == wspool.StateConnected
		})
		exchange.Publish(path, 1) // reveals a gap left at the very end
		var mine book
		ok = ok && waitUntil(20*time.Second, func() bool {
			last, in := state.Read(func(b *book) { mine = maps.Clone(*b) })
			return in && last == exchange.Head(path)
		})
		truth := exchange.State(path)
		pub.Unlock()
		if !ok {
			return fmt.Errorf("fault %d (%s): the book did not get back in sync (stats %+v)", faults, kind, state.Stats())
		}
		if !maps.Equal(mine, truth) {
			return fmt.Errorf("fault %d (%s): the book differs from the exchange's", faults, kind)
		}
		matched++
		fmt.Printf("fault %3d: %-16s book matches the exchange (%d levels, update %d of epoch %d)\n",
			faults, kind, len(truth), exchange.Head(path), exchange.Epoch(path))
	}
	st := state.Stats()
	fs := feed.Stats()
	cancel()
	if err := <-runErr; err != nil {
		return err
	}

	fmt.Println()
	fmt.Printf("faults: %d %v\n", faults, fmtCounts(count))
	var causes []string
	for c, n := range st.Resyncs {
		if n > 0 {
			causes = append(causes, fmt.Sprintf("%v %d", syncstate.Cause(c), n))
		}
	}
	fmt.Printf("resyncs by cause: %v (snapshots fetched: %d)\n", causes, st.Fetches)
	total := st.InSyncTime + st.OutOfSyncTime
	fmt.Printf("time in sync: %v of %v (%.1f%%)\n", st.InSyncTime.Round(time.Millisecond), total.Round(time.Millisecond), 100*st.InSyncTime.Seconds()/total.Seconds())
	mu.Lock()
	slices.Sort(took)
	if len(took) > 0 {
		fmt.Printf("time to resync: median %v, 90th percentile %v, max %v (%d resyncs)\n",
			took[len(took)/2].Round(time.Microsecond), took[len(took)*9/10].Round(time.Microsecond), took[len(took)-1].Round(time.Microsecond), len(took))
	}
	mu.Unlock()
	fmt.Printf("diffs applied: %d, covered by a snapshot: %d; connections: %d (%d dropped by the exchange, none by a resync)\n",
		st.Applied, st.Duplicates, fs.Connects, drops)
	if fs.Connects != int64(1+drops) {
		return fmt.Errorf("%d connections for %d drops: a resync reconnected", fs.Connects, drops)
	}
	fmt.Printf("OK: the book matched the exchange's after all %d faults\n", matched)
	return nil
}

func fetch(ctx context.Context, url string) (syncstate.Snapshot[book], error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return syncstate.Snapshot[book]{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return syncstate.Snapshot[book]{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return syncstate.Snapshot[book]{}, fmt.Errorf("snapshot: %s", resp.Status)
	}
	var s wspooltest.Snapshot
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return syncstate.Snapshot[book]{}, err
	}
	if s.State == nil {
		s.State = book{}
	}
	return syncstate.Snapshot[book]{State: s.State, Last: s.Last, Epoch: s.Epoch}, nil
}

func fmtCounts(m map[string]int) string {
	keys := slices.Sorted(maps.Keys(m))
	out := ""
	for i, k := range keys {
		if i > 0 {
			out += ", "
		}
		out += fmt.Sprintf("%s %d", k, m[k])
	}
	return out
}

// waitUntil polls cond until it holds or timeout passes.
func waitUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

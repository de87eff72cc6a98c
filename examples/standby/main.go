// Command standby shows a feed with a hot standby connection surviving
// connection losses with zero gaps: an embedded local server streams
// numbered messages; the feed keeps two connections to it (each through its
// own fault-injecting proxy) merged by sequence number, and one of them is
// killed, blackholed or frozen again and again while the other stays up.
// At the end it prints what each connection contributed and checks that the
// handler saw every number exactly once, in order. No network is used.
//
//	go run ./examples/standby [-faults 30] [-interval 2ms]
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/wspooltest"
)

func main() {
	faults := flag.Int("faults", 30, "connection losses to inflict")
	interval := flag.Duration("interval", 2*time.Millisecond, "time between messages")
	flag.Parse()
	if err := run(*faults, *interval); err != nil {
		fmt.Println("FAIL:", err)
		os.Exit(1)
	}
}

func run(faults int, interval time.Duration) error {
	stream := wspooltest.NewStream(interval)
	defer stream.Close()
	srv, err := wspooltest.NewServer(stream.Serve)
	if err != nil {
		return err
	}
	defer srv.Close()
	var proxies [2]*wspooltest.Proxy
	for i := range proxies {
		if proxies[i], err = wspooltest.NewProxy(srv.Addr()); err != nil {
			return err
		}
		defer proxies[i].Close()
	}

	// The handler checks the merged stream: n, n+1, n+2, ... exactly once.
	var mu sync.Mutex
	var first, last uint64
	var delivered, bad int
	perConn := map[uint64]int{}
	handle := func(_ context.Context, m wspool.Message) error {
		n, err := strconv.ParseUint(string(m.Data), 10, 64)
		if err != nil {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		if last != 0 && n != last+1 {
			bad++
			fmt.Printf("out of sequence: %d after %d\n", n, last)
		}
		if first == 0 {
			first = n
		}
		last = n
		delivered++
		perConn[m.ConnID]++
		return nil
	}
	var feed *wspool.Client
	feed, err = wspool.NewClient("ws://"+proxies[0].Addr()+"/ticker", handle,
		wspool.WithName("ticker"),
		// Messages carry their number: duplicates (the standby's copies, a
		// resumed connection's replay) are dropped, gaps reported.
		wspool.WithSequence(wspool.Sequence{Extract: func(m wspool.Message) (string, uint64, bool) {
			n, err := strconv.ParseUint(string(m.Data), 10, 64)
			return "", n, err == nil
		}}),
		wspool.WithStandby(wspool.Standby{Connections: 1, URLs: []string{"ws://" + proxies[1].Addr() + "/ticker"}}),
		// Every (re)connection resumes after the last number delivered.
		wspool.WithRequestFunc(func(_ context.Context, u *url.URL, _ http.Header) error {
			if n, ok := feed.LastSequence(""); ok {
				u.RawQuery = "from=" + strconv.FormatUint(n+1, 10)
			}
			return nil
		}),
		wspool.WithBackoff(5*time.Millisecond, 50*time.Millisecond),
		wspool.WithPingInterval(50*time.Millisecond), wspool.WithPongTimeout(100*time.Millisecond),
		wspool.WithStaleTimeout(200*time.Millisecond),
	)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- feed.Run(ctx) }()

	bothUp := func() bool {
		st := feed.Stats()
		return st.State == wspool.StateConnected && len(st.Standby) == 1 && st.Standby[0].Connected
	}
	progress := func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		return last
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	var stalls []time.Duration
	for i := 1; i <= faults; i++ {
		if !waitUntil(20*time.Second, bothUp) {
			cancel()
			return fmt.Errorf("the two connections did not come back before fault %d", i)
		}
		victim := rng.IntN(2)
		kind := []string{"kill", "blackhole", "freeze"}[rng.IntN(3)]
		at := progress()
		start := time.Now()
		switch kind {
		case "kill":
			proxies[victim].Reset()
		case "blackhole":
			proxies[victim].Blackhole(true)
		case "freeze":
			if cs := stream.Conns("/ticker"); len(cs) > 0 {
				stream.Pause(cs[rng.IntN(len(cs))], true) // alive, but publishes nothing
			}
		}
		// The stream goes on from the other connection.
		if !waitUntil(10*time.Second, func() bool { return progress() > at }) {
			cancel()
			return fmt.Errorf("the stream stopped after fault %d (%s)", i, kind)
		}
		stall := time.Since(start)
		stalls = append(stalls, stall)
		fmt.Printf("fault %2d: %-9s on connection %d; next message after %v\n", i, kind, victim+1, stall.Round(time.Microsecond))
		if kind == "blackhole" {
			time.Sleep(100 * time.Millisecond) // the fault lasts a while
			proxies[victim].Blackhole(false)
		}
	}
	waitUntil(20*time.Second, bothUp)
	cancel()
	if err := <-done; err != nil {
		return err
	}

	st := feed.Stats()
	slices.Sort(stalls)
	mu.Lock()
	defer mu.Unlock()
	fmt.Printf("\ndelivered %d messages (%d..%d), %d duplicate copies dropped, %d gaps\n", delivered, first, last, st.Duplicates, st.Gaps)
	fmt.Printf("primary connection: %d connections, won %d messages\n", st.Connects, st.Won)
	for _, sb := range st.Standby {
		fmt.Printf("standby connection %d: %d connections, won %d messages\n", sb.Index, sb.Connects, sb.Won)
	}
	fmt.Printf("time from a fault to the next message: median %v, worst %v\n", stalls[len(stalls)/2].Round(time.Microsecond), stalls[len(stalls)-1].Round(time.Microsecond))
	if bad > 0 || st.Gaps > 0 {
		return fmt.Errorf("%d out-of-sequence messages, %d gaps", bad, st.Gaps)
	}
	if uint64(delivered) != last-first+1 {
		return fmt.Errorf("%d messages delivered for %d numbers", delivered, last-first+1)
	}
	fmt.Printf("OK: every number from %d to %d exactly once, in order, across %d connection losses\n", first, last, faults)
	return nil
}

func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, bounded by the deadline
	}
	return true
}

package wspool_test

import (
	"context"
	"fmt"
	"time"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/wspooltest"
)

// One pool, two upstreams with different connection limits: each key (the
// host dialled) is admitted at its own upstream's rate, so neither ever
// answers 429, and both share the pool's handshake slots and its Stats.
func ExampleWithAdmissionFor() {
	a, err := wspooltest.NewServer(nil)
	if err != nil {
		panic(err)
	}
	defer a.Close()
	b, err := wspooltest.NewServer(nil)
	if err != nil {
		panic(err)
	}
	defer b.Close()
	a.LimitUpgrades(2, 200*time.Millisecond) // over that: 429
	b.LimitUpgrades(1, 200*time.Millisecond)

	pool, err := wspool.NewPool(
		wspool.WithAdmissionFor(a.Addr(), wspool.Admission{Rate: 2, Per: 200 * time.Millisecond}),
		wspool.WithAdmissionFor(b.Addr(), wspool.Admission{Rate: 1, Per: 200 * time.Millisecond}),
	)
	if err != nil {
		panic(err)
	}
	for i := range 4 {
		if _, err := pool.Add(a.URL("/"), nil, wspool.WithName(fmt.Sprint("a", i))); err != nil {
			panic(err)
		}
	}
	for i := range 2 {
		if _, err := pool.Add(b.URL("/"), nil, wspool.WithName(fmt.Sprint("b", i))); err != nil {
			panic(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error)
	go func() { runErr <- pool.Run(ctx) }()
	for pool.Stats().Connected < 6 {
		time.Sleep(10 * time.Millisecond) // polling the pool's Stats, as a dashboard would
	}
	cancel()
	fmt.Println("Run returned:", <-runErr)
	fmt.Println("upgrades refused by a:", a.Handshakes()-a.Accepted(), "by b:", b.Handshakes()-b.Accepted())
	// Output:
	// Run returned: <nil>
	// upgrades refused by a: 0 by b: 0
}

package wspoolprom_test

import (
	"context"
	"fmt"
	"log"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/metrics/wspoolprom"
	"github.com/wspool/wspool/wspooltest"
)

// A pool's Stats and timings in a Prometheus registry. A program serves the
// registry with promhttp.HandlerFor(reg, promhttp.HandlerOpts{}) on
// /metrics; here the registry is read directly after the pool has run.
func Example() {
	// An upstream on loopback that sends three messages per connection.
	srv, err := wspooltest.NewServer(func(c *wspooltest.Conn) {
		for i := range 3 {
			_ = c.SendText(fmt.Sprint(i))
		}
		<-c.Done()
	})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	timings := wspoolprom.NewTimings("main", wspoolprom.TimingOpts{})
	pool, err := wspool.NewPool(wspool.WithTimings(timings.Observe))
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	seen := 0
	_, err = pool.Add(srv.URL("/ticker"), func(context.Context, wspool.Message) error {
		if seen++; seen == 3 {
			cancel() // stop the pool after the third message
		}
		return nil
	}, wspool.WithName("ticker"))
	if err != nil {
		log.Fatal(err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(wspoolprom.NewCollector(pool, "main"), timings)

	if err := pool.Run(ctx); err != nil {
		log.Fatal(err)
	}
	fams, err := reg.Gather()
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			switch name := f.GetName(); name {
			case "wspool_feed_messages_delivered_total", "wspool_feed_connects_total":
				fmt.Println(name, m.GetCounter().GetValue())
			case "wspool_handler_duration_seconds":
				fmt.Println(name, "count", m.GetHistogram().GetSampleCount())
			}
		}
	}
	// Output:
	// wspool_feed_connects_total 1
	// wspool_feed_messages_delivered_total 3
	// wspool_handler_duration_seconds count 3
}

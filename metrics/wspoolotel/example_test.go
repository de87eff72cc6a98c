package wspoolotel_test

import (
	"context"
	"fmt"
	"log"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/metrics/wspoolotel"
	"github.com/wspool/wspool/wspooltest"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// A pool's Stats and timings through OpenTelemetry. A program passes its
// own MeterProvider (with an OTLP or Prometheus exporter); here the SDK's
// ManualReader reads the instruments after the pool has run.
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

	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(context.Background())
	meter := provider.Meter("wspool")

	timings, err := wspoolotel.NewTimings(meter, "main", false)
	if err != nil {
		log.Fatal(err)
	}
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
	reg, err := wspoolotel.RegisterStats(meter, pool, "main", wspoolotel.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Unregister()

	if err := pool.Run(ctx); err != nil {
		log.Fatal(err)
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		log.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				if m.Name == "wspool.feed.connects" || m.Name == "wspool.feed.messages.delivered" {
					fmt.Println(m.Name, d.DataPoints[0].Value)
				}
			case metricdata.Histogram[float64]:
				if m.Name == "wspool.handler.duration" {
					fmt.Println(m.Name, "count", d.DataPoints[0].Count, m.Unit)
				}
			}
		}
	}
	// Unordered output:
	// wspool.feed.connects 1
	// wspool.feed.messages.delivered 3
	// wspool.handler.duration count 3 s
}

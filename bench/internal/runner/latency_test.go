package runner

import (
	"runtime"
	"testing"
	"time"

	"github.com/wspool/wspool/bench/internal/firehose"
)

// TestLatencyTimesEveryClient runs a short latency window for every client
// against a stamping server: each times about every message sent in the
// window, with latencies that are positive and ordered.
func TestLatencyTimesEveryClient(t *testing.T) {
	srv := startServer(t, firehose.Config{})
	for _, mode := range []string{ModeWspool, ModeWspoolQueue, ModeRaw, ModeGws, ModeFrames} {
		t.Run(mode, func(t *testing.T) {
			ctx := testCtx(t, time.Minute)
			res, err := RunLatency(ctx, LatencyConfig{Mode: mode, URL: srv.URL(), Feeds: 3, Size: 64, Rate: 200,
				Warmup: 50 * time.Millisecond, Window: 500 * time.Millisecond, Grace: 500 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			// 3 x 200/s x 0.5 s = 300; the server's timer granularity and
			// a loaded machine move a few messages across the window's
			// edges.
			if res.Sent != 300 || res.Count < 200 || res.Count > 400 {
				t.Errorf("timed %d of %d sent", res.Count, res.Sent)
			}
			if res.P50 <= 0 || res.P50 > res.P99 || res.P99 > res.Max || res.Hist.Count() != uint64(res.Count) {
				t.Errorf("p50 %d p99 %d max %d", res.P50, res.P99, res.Max)
			}
		})
	}
}

// TestGCLoadAllocatesAtItsRate checks the GC load's allocation rate to
// within a factor of two (the machine may be loaded).
func TestGCLoadAllocatesAtItsRate(t *testing.T) {
	before := readAllocated()
	start := time.Now()
	g := StartGCLoad(50<<20, 1<<20)
	time.Sleep(500 * time.Millisecond) // the load runs for a span of time: nothing to wait for
	g.Stop()
	rate := float64(readAllocated()-before) / time.Since(start).Seconds()
	if rate < 25<<20 || rate > 100<<20 {
		t.Fatalf("allocated %.0f MB/s, want about 50", rate/(1<<20))
	}
}

// readAllocated returns the bytes the process has allocated so far.
func readAllocated() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.TotalAlloc
}

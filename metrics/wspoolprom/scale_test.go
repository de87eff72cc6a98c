package wspoolprom_test

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/metrics/wspoolprom"
)

const scaleFeeds = 10_000

// newScalePool returns a pool of n feeds that is not run: every feed is
// idle, so each exports its 33 always-present series (a connected feed adds
// RTT, smoothed RTT and connected-since, a failed one its last-error time:
// at most 36).
func newScalePool(tb testing.TB, n int) *wspool.Pool {
	tb.Helper()
	p, err := wspool.NewPool()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	for i := range n {
		name := fmt.Sprintf("feed-%05d", i)
		if _, err := p.Add("ws://127.0.0.1:1/"+name, nil, wspool.WithName(name)); err != nil {
			tb.Fatal(err)
		}
	}
	return p
}

// scrape gathers reg and encodes it in the text format, as promhttp does for
// a scrape, returning the exposition's size.
func scrape(tb testing.TB, reg *prometheus.Registry) (series, size int) {
	fams, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	var buf bytes.Buffer
	for _, f := range fams {
		series += len(f.GetMetric())
		if _, err := expfmt.MetricFamilyToText(&buf, f); err != nil {
			tb.Fatal(err)
		}
	}
	return series, buf.Len()
}

// TestScrape10000Feeds measures one scrape of a 10,000-feed pool, with the
// per-feed Collector and with the totals-only one: series, exposition size,
// time and memory allocated per scrape. The figures go to the log (go test
// -v -run TestScrape10000Feeds); the package documentation quotes them.
func TestScrape10000Feeds(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a pool of 10,000 feeds")
	}
	if raceEnabled {
		t.Skip("measures a scrape, which the race detector slows several times (ci.sh runs it without -race)")
	}
	pool := newScalePool(t, scaleFeeds)
	for _, tc := range []struct {
		name       string
		c          prometheus.Collector
		wantSeries int
	}{
		{"NewCollector", wspoolprom.NewCollector(pool, "scale"), scaleFeeds*33 + 16},
		{"NewTotalsCollector", wspoolprom.NewTotalsCollector(pool, "scale"), 16},
	} {
		reg := prometheus.NewRegistry()
		reg.MustRegister(tc.c)
		scrape(t, reg) // warm up
		const rounds = 3
		var best, bestCPU time.Duration
		var alloc uint64
		var series, size int
		for range rounds {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			cpu0 := cpuTime(t)
			start := time.Now()
			series, size = scrape(t, reg)
			took := time.Since(start)
			cpu := cpuTime(t) - cpu0
			runtime.ReadMemStats(&after)
			if best == 0 || took < best {
				best, bestCPU = took, cpu
			}
			alloc = after.TotalAlloc - before.TotalAlloc
		}
		if series != tc.wantSeries {
			t.Errorf("%s: %d series, want %d", tc.name, series, tc.wantSeries)
		}
		t.Logf("%s, %d feeds: %d series, %.1f MB of text, scrape (gather + encode) best of %d: %v wall, %v CPU (GC included), %.0f MB allocated per scrape",
			tc.name, scaleFeeds, series, float64(size)/1e6, rounds, best.Round(time.Millisecond), bestCPU.Round(time.Millisecond), float64(alloc)/1e6)
	}
}

// BenchmarkCollect10000Feeds is one scrape (gather and text encoding) of a
// 10,000-feed pool: go test -run '^$' -bench Collect10000 -benchmem.
func BenchmarkCollect10000Feeds(b *testing.B) {
	pool := newScalePool(b, scaleFeeds)
	for _, tc := range []struct {
		name string
		c    prometheus.Collector
	}{
		{"per-feed", wspoolprom.NewCollector(pool, "scale")},
		{"totals", wspoolprom.NewTotalsCollector(pool, "scale")},
	} {
		b.Run(tc.name, func(b *testing.B) {
			reg := prometheus.NewRegistry()
			reg.MustRegister(tc.c)
			b.ReportAllocs()
			for b.Loop() {
				scrape(b, reg)
			}
		})
	}
}

package runner

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/wspool/wspool/bench/internal/firehose"
	"github.com/wspool/wspool/bench/internal/hist"
	"github.com/wspool/wspool/bench/internal/sysstat"
)

// LatencyConfig is one latency run: Feeds connections to a firehose server
// that sends each Rate stamped messages of Size bytes per second (see
// firehose.Config.Stamp); every message sent in the window is timed from
// its stamp to the handler's first statement.
type LatencyConfig struct {
	Mode   string // ModeWspool, ModeWspoolQueue, ModeRaw, ModeGws or ModeFrames
	URL    string // firehose server base URL
	Feeds  int
	Size   int
	Rate   int           // messages per second per feed
	Warmup time.Duration // after every feed got its first message
	Window time.Duration // messages stamped in it are timed
	// Grace is how long after the window late messages are still awaited.
	Grace time.Duration
}

// LatencyResult is the measurement of one run; latencies in nanoseconds.
type LatencyResult struct {
	Mode              string
	Feeds, Size, Rate int
	// Sent is what the server should have sent in the window; Count what
	// was timed.
	Sent, Count                int64
	P50, P90, P99, P999, P9999 int64
	Max                        int64
	Mean                       float64
	CPUSeconds, Seconds        float64 // client process CPU and wall time of the window
	GCs                        uint32
	AllocBytesPerSec           float64 // heap bytes allocated per second (whole process)
	Hist                       *hist.Hist
}

// window is the span of send times whose messages are timed, as Unix
// nanoseconds; read by every feed on every message.
type window struct {
	from, to atomic.Int64
}

// timer is one feed's histogram.
type timer struct {
	h   hist.Hist
	win *window
}

func (t *timer) record(data []byte) {
	now := time.Now().UnixNano()
	sent, ok := firehose.ParseStamp(data)
	if !ok || sent < t.win.from.Load() || sent >= t.win.to.Load() {
		return
	}
	t.h.Record(now - sent)
}

// RunLatency connects, warms up, times one window of messages, waits out
// the grace period and disconnects.
func RunLatency(ctx context.Context, cfg LatencyConfig) (LatencyResult, error) {
	res := LatencyResult{Mode: cfg.Mode, Feeds: cfg.Feeds, Size: cfg.Size, Rate: cfg.Rate}
	if cfg.Grace <= 0 {
		cfg.Grace = 500 * time.Millisecond
	}
	u := WithQuery(cfg.URL, "mode", "firehose", "size", strconv.Itoa(cfg.Size), "count", "0",
		"rate", strconv.Itoa(cfg.Rate), "stamp", "true")
	win := new(window)
	win.from.Store(1<<63 - 1) // nothing is timed before the window
	timers := make([]timer, cfg.Feeds)
	on := func(i int) func([]byte) {
		t := &timers[i]
		t.win = win
		return t.record
	}
	r, err := startReceiver(ctx, cfg.Mode, u, cfg.Feeds, Tuning{}, on)
	if err != nil {
		return res, err
	}
	closed := false
	defer func() {
		if !closed {
			r.Close()
		}
	}()
	// Generous: at 1,000 feeds of 4 KiB the server streams to the feeds
	// already up while it answers the others' handshakes, and on a loaded
	// 2-core machine the last ones take minutes.
	if err := r.WaitAll(ctx, 3*time.Minute); err != nil {
		return res, err
	}
	if err := sleep(ctx, cfg.Warmup); err != nil {
		return res, err
	}
	s0 := sysstat.Take()
	start := time.Now()
	win.to.Store(start.Add(cfg.Window).UnixNano())
	win.from.Store(start.UnixNano())
	if err := sleep(ctx, cfg.Window); err != nil {
		return res, err
	}
	d := sysstat.Take().Sub(s0)
	if err := sleep(ctx, cfg.Grace); err != nil {
		return res, err
	}
	r.Close() // the feeds' goroutines are done: their histograms can be read
	closed = true

	h := new(hist.Hist)
	for i := range timers {
		h.Add(&timers[i].h)
	}
	res.Hist = h
	res.Sent = int64(cfg.Window.Seconds() * float64(cfg.Rate) * float64(cfg.Feeds))
	res.Count = int64(h.Count())
	if res.Count == 0 {
		return res, fmt.Errorf("runner: %s: no message timed in the window", cfg.Mode)
	}
	res.P50, res.P90, res.P99 = h.Quantile(0.5), h.Quantile(0.9), h.Quantile(0.99)
	res.P999, res.P9999, res.Max, res.Mean = h.Quantile(0.999), h.Quantile(0.9999), h.Max(), h.Mean()
	res.Seconds, res.CPUSeconds, res.GCs = d.Wall.Seconds(), d.CPU.Seconds(), d.GCs
	if res.Seconds > 0 {
		res.AllocBytesPerSec = float64(d.Bytes) / res.Seconds
	}
	return res, nil
}

// Curve returns the latency at each quantile in qs.
func Curve(h *hist.Hist, qs []float64) []int64 {
	out := make([]int64, len(qs))
	for i, q := range qs {
		out[i] = h.Quantile(q)
	}
	return out
}

package runner

import (
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"time"

	"github.com/wspool/wspool/bench/internal/sysstat"
)

// ThroughputConfig is one throughput run: Feeds connections to a firehose
// server streaming Size-byte messages as fast as the client reads them.
type ThroughputConfig struct {
	Mode   string // ModeWspool or ModeRaw
	URL    string // firehose server base URL
	Feeds  int
	Size   int
	Warmup time.Duration // after every feed got its first message
	Window time.Duration // measured
	// CPUProfile, if set, is written for the measured window.
	CPUProfile string
	Tuning
}

// ThroughputResult is the measurement of one run.
type ThroughputResult struct {
	Mode          string
	Feeds, Size   int
	Msgs          int64
	Seconds       float64 // measured wall time
	CPUSeconds    float64 // client process user+system CPU in the window
	MsgsPerSec    float64
	CPUPerMillion float64 // CPU seconds per million messages
	AllocsPerMsg  float64 // heap allocations per message (whole process)
	BytesPerMsg   float64 // heap bytes allocated per message
	GCs           uint32
	// FirstSeconds and FirstBytes run from just before the first dial to
	// every feed having a message: the time, and the bytes the process
	// allocated (dials included; for large messages, mostly the first one).
	FirstSeconds float64
	FirstBytes   uint64
}

// RunThroughput connects, warms up, measures one window and disconnects.
func RunThroughput(ctx context.Context, cfg ThroughputConfig) (ThroughputResult, error) {
	res := ThroughputResult{Mode: cfg.Mode, Feeds: cfg.Feeds, Size: cfg.Size}
	u := WithQuery(cfg.URL, "mode", "firehose", "size", strconv.Itoa(cfg.Size), "count", "0", "rate", "0")
	f0 := sysstat.Take()
	r, err := StartReceiver(ctx, cfg.Mode, u, cfg.Feeds, cfg.Tuning)
	if err != nil {
		return res, err
	}
	defer r.Close()
	if err := r.WaitAll(ctx, 10*time.Second); err != nil {
		return res, err
	}
	fd := sysstat.Take().Sub(f0)
	res.FirstSeconds, res.FirstBytes = fd.Wall.Seconds(), fd.Bytes
	if err := sleep(ctx, cfg.Warmup); err != nil {
		return res, err
	}
	if cfg.CPUProfile != "" {
		f, err := os.Create(cfg.CPUProfile)
		if err != nil {
			return res, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return res, err
		}
		defer pprof.StopCPUProfile()
	}
	n0 := r.Total()
	s0 := sysstat.Take()
	if err := sleep(ctx, cfg.Window); err != nil {
		return res, err
	}
	n1 := r.Total()
	s1 := sysstat.Take()
	if cfg.CPUProfile != "" {
		pprof.StopCPUProfile()
	}
	d := s1.Sub(s0)
	res.Msgs = n1 - n0
	res.Seconds = d.Wall.Seconds()
	res.CPUSeconds = d.CPU.Seconds()
	res.GCs = d.GCs
	if res.Msgs <= 0 {
		return res, fmt.Errorf("runner: %s: no messages in the window", cfg.Mode)
	}
	m := float64(res.Msgs)
	res.MsgsPerSec = m / res.Seconds
	res.CPUPerMillion = res.CPUSeconds / m * 1e6
	res.AllocsPerMsg = float64(d.Mallocs) / m
	res.BytesPerMsg = float64(d.Bytes) / m
	return res, nil
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

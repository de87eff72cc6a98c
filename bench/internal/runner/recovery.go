package runner

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/wspool/wspool"
)

// RecoveryConfig is the client side of the recovery benchmark: a Pool of
// Feeds feeds on an idle server that is killed and restarted by someone else
// (the wsbench orchestrator, or a test).
type RecoveryConfig struct {
	URL     string
	Feeds   int
	Poll    time.Duration // Pool.Stats polling interval
	Timeout time.Duration // for the whole run
	// Events receives one line per phase, for the process driving the
	// server: "UP <unixnano>" when every feed is connected the first time,
	// "DOWN <unixnano>" when the outage is seen.
	Events io.Writer
}

// RecoveryResult describes the reconnection after the outage. Times are Unix
// nanoseconds on this machine's wall clock (comparable across processes).
type RecoveryResult struct {
	Feeds int
	// First connection of every feed.
	InitialConnectSeconds float64
	UpAt                  int64
	// DownAt is when polling first saw fewer than Feeds connected.
	DownAt int64
	// FirstReconnectAt and LastReconnectAt come from the state callbacks
	// (exact); AllSeenAt is when polling Pool.Stats first saw every feed
	// connected again (up to one poll interval later).
	FirstReconnectAt, LastReconnectAt, AllSeenAt int64
	// Attempts during the recovery (dial attempts, failed ones included).
	AttemptsDuringOutage int64
	// Pool.Stats cost at this pool size.
	StatsCalls                  int
	StatsMeanMillis, StatsMaxMs float64
}

// RunRecovery runs the pool until it has recovered from one outage.
func RunRecovery(ctx context.Context, cfg RecoveryConfig) (RecoveryResult, error) {
	res := RecoveryResult{Feeds: cfg.Feeds}
	if cfg.Poll <= 0 {
		cfg.Poll = 50 * time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Minute
	}
	if cfg.Events == nil {
		cfg.Events = io.Discard
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()

	var down atomic.Bool // the outage was seen by polling
	var firstAt, lastAt atomic.Int64
	onState := func(sc wspool.StateChange) {
		if sc.To != wspool.StateConnected || !down.Load() {
			return
		}
		t := sc.At.UnixNano()
		firstAt.CompareAndSwap(0, t)
		for range 100 {
			old := lastAt.Load()
			if t <= old || lastAt.CompareAndSwap(old, t) {
				break
			}
		}
	}
	p, err := wspool.NewPool(wspool.WithOnStateChange(onState))
	if err != nil {
		return res, err
	}
	u := WithQuery(cfg.URL, "mode", "idle")
	for i := range cfg.Feeds {
		if _, err := p.Add(u, nil, wspool.WithName(fmt.Sprintf("f%d", i))); err != nil {
			return res, err
		}
	}
	start := time.Now()
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(ctx) }()
	defer func() { p.Close(); <-done }()

	var statsTotal, statsMax time.Duration
	poll := func() wspool.PoolStats {
		t := time.Now()
		st := p.Stats()
		d := time.Since(t)
		res.StatsCalls++
		statsTotal += d
		statsMax = max(statsMax, d)
		return st
	}
	const (
		waitUp = iota
		waitDown
		waitBack
	)
	phase := waitUp
	var attempts0 int64
	tick := time.NewTicker(cfg.Poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return res, fmt.Errorf("runner: recovery: phase %d: %w", phase, ctx.Err())
		case <-tick.C:
		}
		st := poll()
		now := time.Now()
		switch phase {
		case waitUp:
			if st.Connected == cfg.Feeds {
				res.InitialConnectSeconds = now.Sub(start).Seconds()
				res.UpAt = now.UnixNano()
				fmt.Fprintf(cfg.Events, "UP %d\n", res.UpAt)
				phase = waitDown
			}
		case waitDown:
			if st.Connected < cfg.Feeds {
				down.Store(true)
				res.DownAt = now.UnixNano()
				attempts0 = st.Attempts
				fmt.Fprintf(cfg.Events, "DOWN %d\n", res.DownAt)
				phase = waitBack
			}
		case waitBack:
			if st.Connected == cfg.Feeds {
				res.AllSeenAt = now.UnixNano()
				res.FirstReconnectAt = firstAt.Load()
				res.LastReconnectAt = lastAt.Load()
				res.AttemptsDuringOutage = st.Attempts - attempts0
				if res.StatsCalls > 0 {
					res.StatsMeanMillis = float64(statsTotal.Microseconds()) / 1e3 / float64(res.StatsCalls)
				}
				res.StatsMaxMs = float64(statsMax.Microseconds()) / 1e3
				return res, nil
			}
		}
	}
}

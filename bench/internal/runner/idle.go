package runner

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/bench/internal/sysstat"
)

// IdleConfig is one idle run: Feeds connections to a server that sends
// nothing (idle mode: it answers pings). wspool feeds run with the default
// ping interval; raw connections are one goroutine each in ReadMessage.
type IdleConfig struct {
	Mode           string
	URL            string // idle server base URL
	Feeds          int
	ConnectTimeout time.Duration
	Settle         time.Duration // after the last feed connected, before the window
	Window         time.Duration // CPU is measured over this window
	CPUProfile     string        // CPU profile of the window
	HeapProfile    string        // heap profile (in-use) after the window
	GoroutineDump  string        // goroutine profile (debug=1) after the window
	Tuning
}

// MemPoint is the process's memory at one point, measured in this order: RSS
// as it is, then a forced GC for the live heap and stacks, then RSS again
// after returning free memory to the OS.
type MemPoint struct {
	RSS        int64 // VmRSS, no GC forced
	HeapLive   int64 // HeapAlloc right after runtime.GC
	HeapInuse  int64 // HeapInuse right after runtime.GC
	StackInuse int64
	RSSAfterGC int64 // VmRSS after runtime.GC and debug.FreeOSMemory
	Sys        int64
	Goroutines int
}

func measureMem() MemPoint {
	m := sysstat.ReadMemory()
	p := MemPoint{RSS: m.RSS}
	runtime.GC()
	m = sysstat.ReadMemory()
	p.HeapLive, p.HeapInuse, p.StackInuse, p.Sys, p.Goroutines = m.HeapAlloc, m.HeapInuse, m.StackInuse, m.Sys, m.Goroutines
	debug.FreeOSMemory()
	p.RSSAfterGC, _ = sysstat.RSS()
	return p
}

// IdleResult is the measurement of one idle run. Per-feed values are
// (after - base) / feeds, where base is measured before the first dial.
type IdleResult struct {
	Mode           string
	Feeds          int
	ConnectSeconds float64
	Base, Settled  MemPoint
	After          MemPoint // after the window
	WindowSeconds  float64
	CPUSeconds     float64
	CPUPercent     float64 // of one core, over the window
	AllocsInWindow uint64
	BytesInWindow  uint64
	// Per feed, from After.
	RSSPerFeed, RSSAfterGCPerFeed, HeapPerFeed, StackPerFeed float64
	GoroutinesPerFeed                                        float64
	// Pings answered during the window (wspool only): connections whose
	// RTT is set have had at least one pong.
	FeedsWithRTT int
	Connected    int // feeds still connected after the window
}

// RunIdle connects, settles, measures a window and reports memory and CPU.
func RunIdle(ctx context.Context, cfg IdleConfig) (IdleResult, error) {
	res := IdleResult{Mode: cfg.Mode, Feeds: cfg.Feeds}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = time.Minute
	}
	u := WithQuery(cfg.URL, "mode", "idle")
	res.Base = measureMem()
	start := time.Now()

	var connected func() int
	var rtts func() int
	var closeAll func()
	switch cfg.Mode {
	case ModeWspool:
		p, err := wspool.NewPool()
		if err != nil {
			return res, err
		}
		cs := make([]*wspool.Client, cfg.Feeds)
		for i := range cs {
			if cs[i], err = p.Add(u, nil, append(cfg.options(), wspool.WithName(fmt.Sprintf("f%d", i)))...); err != nil {
				return res, err
			}
		}
		pctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = p.Run(pctx) }()
		connected = func() int {
			n := 0
			for _, c := range cs {
				if c.State() == wspool.StateConnected {
					n++
				}
			}
			return n
		}
		rtts = func() int {
			n := 0
			for _, c := range cs {
				if c.Stats().RTT > 0 {
					n++
				}
			}
			return n
		}
		closeAll = func() { cancel(); p.Close(); <-done }
	case ModeRaw, ModeRawPing:
		// Like an application would: each connection starts reading (and,
		// with raw+ping, its ping timer) as soon as it is up, so that timers
		// are spread over the connect phase as wspool's are.
		var (
			alive   sync.WaitGroup
			mu      sync.Mutex // guards live and pingers
			live    = make([]bool, cfg.Feeds)
			pingers = make([]*time.Timer, 0, cfg.Feeds)
		)
		payload := []byte("ping")
		onConn := func(i int, c *websocket.Conn) {
			mu.Lock()
			defer mu.Unlock()
			live[i] = true
			alive.Go(func() {
				defer func() { mu.Lock(); live[i] = false; mu.Unlock() }()
				for {
					if _, _, err := c.ReadMessage(); err != nil {
						return
					}
				}
			})
			if cfg.Mode == ModeRawPing {
				var t *time.Timer
				t = time.AfterFunc(wspool.DefaultPingInterval, func() {
					if c.WriteControl(websocket.PingMessage, payload, time.Now().Add(wspool.DefaultWriteTimeout)) == nil {
						mu.Lock()
						t.Reset(wspool.DefaultPingInterval)
						mu.Unlock()
					}
				})
				pingers = append(pingers, t)
			}
		}
		conns, err := dialRaw(ctx, cfg.dialer(), u, cfg.Feeds, wspool.DefaultMaxConcurrentDials, onConn)
		if err != nil {
			alive.Wait()
			return res, err
		}
		connected = func() int {
			mu.Lock()
			defer mu.Unlock()
			n := 0
			for _, l := range live {
				if l {
					n++
				}
			}
			return n
		}
		rtts = func() int { return 0 }
		closeAll = func() {
			mu.Lock()
			for _, t := range pingers {
				t.Stop()
			}
			mu.Unlock()
			for _, c := range conns {
				c.Close()
			}
			alive.Wait()
		}
	case ModeGws, ModeFrames:
		var err error
		if connected, closeAll, err = idleRefs(ctx, cfg.Mode, u, cfg.Feeds); err != nil {
			return res, err
		}
		rtts = func() int { return 0 }
	default:
		return res, fmt.Errorf("runner: unknown mode %q", cfg.Mode)
	}
	defer closeAll()

	deadline := time.Now().Add(cfg.ConnectTimeout)
	for connected() < cfg.Feeds {
		if time.Now().After(deadline) {
			return res, fmt.Errorf("runner: %d of %d feeds connected after %v: %w", connected(), cfg.Feeds, cfg.ConnectTimeout, errTimeout)
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return res, err
		}
	}
	res.ConnectSeconds = time.Since(start).Seconds()
	if err := sleep(ctx, cfg.Settle); err != nil {
		return res, err
	}
	res.Settled = measureMem()

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
	s0 := sysstat.Take()
	if err := sleep(ctx, cfg.Window); err != nil {
		return res, err
	}
	s1 := sysstat.Take()
	if cfg.CPUProfile != "" {
		pprof.StopCPUProfile()
	}
	d := s1.Sub(s0)
	res.WindowSeconds = d.Wall.Seconds()
	res.CPUSeconds = d.CPU.Seconds()
	if res.WindowSeconds > 0 {
		res.CPUPercent = 100 * res.CPUSeconds / res.WindowSeconds
	}
	res.AllocsInWindow, res.BytesInWindow = d.Mallocs, d.Bytes

	res.After = measureMem()
	res.Connected = connected()
	res.FeedsWithRTT = rtts()
	n := float64(cfg.Feeds)
	res.RSSPerFeed = float64(res.After.RSS-res.Base.RSS) / n
	res.RSSAfterGCPerFeed = float64(res.After.RSSAfterGC-res.Base.RSSAfterGC) / n
	res.HeapPerFeed = float64(res.After.HeapLive-res.Base.HeapLive) / n
	res.StackPerFeed = float64(res.After.StackInuse-res.Base.StackInuse) / n
	res.GoroutinesPerFeed = float64(res.After.Goroutines-res.Base.Goroutines) / n

	if cfg.HeapProfile != "" {
		if err := writeProfile("heap", cfg.HeapProfile, 0); err != nil {
			return res, err
		}
	}
	if cfg.GoroutineDump != "" {
		if err := writeProfile("goroutine", cfg.GoroutineDump, 1); err != nil {
			return res, err
		}
	}
	return res, nil
}

func writeProfile(name, path string, debugLevel int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup(name).WriteTo(f, debugLevel); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

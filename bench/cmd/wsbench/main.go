// Command wsbench runs wspool's benchmarks, each client and server in its own
// process, and prints a results table.
//
//	wsbench                      # everything (about 25 minutes)
//	wsbench -quick               # a shorter version (about 8 minutes)
//	wsbench -smoke               # a few seconds, 100 feeds, for CI
//	wsbench -only throughput,idle
//	wsbench -only latency -plots dir   # the latency table and one plot per cell
//
// The orchestrator starts copies of itself in roles:
//
//	wsbench serve      [firehose flags]   a firehose server (see cmd/firehose)
//	wsbench throughput [flags]            throughput client, wspool and raw alternating
//	wsbench idle       [flags]            idle feeds: memory and CPU
//	wsbench recovery   [flags]            a Pool recovering from a server outage
//	wsbench send       [flags]            Send throughput against an echo server
//	wsbench latency    [flags]            wire-to-handler latency, every client in turn
//
// Each role prints "RESULT <json>" lines on stdout. Every child is killed when
// the orchestrator exits, on a signal or on its -timeout.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/wspool/wspool/bench/internal/firehose"
	"github.com/wspool/wspool/bench/internal/runner"
	"github.com/wspool/wspool/bench/internal/sysstat"
)

func main() {
	var err error
	if len(os.Args) > 1 && len(os.Args[1]) > 0 && os.Args[1][0] != '-' {
		role, args := os.Args[1], os.Args[2:]
		switch role {
		case "serve":
			err = firehose.Main("wsbench serve", args, os.Stdout, os.Stderr)
		case "throughput":
			err = roleThroughput(args)
		case "idle":
			err = roleIdle(args)
		case "recovery":
			err = roleRecovery(args)
		case "send":
			err = roleSend(args)
		case "latency":
			err = roleLatency(args)
		default:
			err = fmt.Errorf("unknown role %q", role)
		}
	} else {
		err = orchestrate(os.Args[1:])
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "wsbench:", err)
		os.Exit(1)
	}
}

// roleContext is the context of a child role: it ends on SIGINT/SIGTERM or
// after maxTime, so that a child never outlives its purpose.
func roleContext(maxTime time.Duration) (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, maxTime)
	return ctx, func() { cancel(); stop() }
}

func raiseFDLimit() {
	if _, err := sysstat.RaiseFDLimit(); err != nil {
		fmt.Fprintln(os.Stderr, "wsbench: cannot raise fd limit:", err)
	}
}

func printResult(w io.Writer, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	fmt.Fprintf(w, "RESULT %s\n", b)
}

func roleThroughput(args []string) error {
	fs := flag.NewFlagSet("wsbench throughput", flag.ContinueOnError)
	url := fs.String("url", "", "firehose server base URL")
	feeds := fs.Int("feeds", 1, "connections")
	size := fs.Int("size", 64, "message payload bytes")
	rounds := fs.Int("rounds", 5, "rounds; each runs every client once, the order rotating by one each round")
	modes := fs.String("modes", runner.ModeWspool+","+runner.ModeRaw, "clients: wspool, raw, gws, gobwas")
	warmup := fs.Duration("warmup", 300*time.Millisecond, "warm-up before each window")
	window := fs.Duration("window", 2*time.Second, "measured window per run")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the first wspool window")
	readBuf := fs.Int("readbuf", 0, "gorilla read buffer size for both clients (0 = gorilla's default)")
	maxTime := fs.Duration("maxtime", 5*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	clients := strings.Split(*modes, ",")
	raiseFDLimit()
	ctx, cancel := roleContext(*maxTime)
	defer cancel()
	for r := range *rounds {
		for i := range clients {
			mode := clients[(i+r)%len(clients)]
			// Two collections: sync.Pools (the previous client's buffers)
			// are empty afterwards, so every run starts cold.
			runtime.GC()
			runtime.GC()
			cfg := runner.ThroughputConfig{Mode: mode, URL: *url, Feeds: *feeds, Size: *size, Warmup: *warmup, Window: *window}
			cfg.ReadBuffer = *readBuf
			if r == 0 && mode == runner.ModeWspool {
				cfg.CPUProfile = *cpuprofile
			}
			res, err := runner.RunThroughput(ctx, cfg)
			if err != nil {
				return err
			}
			printResult(os.Stdout, struct {
				Round int
				runner.ThroughputResult
			}{r, res})
		}
	}
	return nil
}

func roleIdle(args []string) error {
	fs := flag.NewFlagSet("wsbench idle", flag.ContinueOnError)
	var cfg runner.IdleConfig
	fs.StringVar(&cfg.URL, "url", "", "idle server base URL")
	fs.StringVar(&cfg.Mode, "mode", runner.ModeWspool, "wspool, raw or raw+ping")
	fs.IntVar(&cfg.ReadBuffer, "readbuf", 0, "gorilla read buffer size (0 = gorilla's default)")
	fs.IntVar(&cfg.Feeds, "feeds", 1000, "connections")
	fs.DurationVar(&cfg.ConnectTimeout, "connect-timeout", time.Minute, "bound on connecting every feed")
	fs.DurationVar(&cfg.Settle, "settle", 2*time.Second, "wait after connecting, before the window")
	fs.DurationVar(&cfg.Window, "window", 30*time.Second, "CPU measurement window")
	fs.StringVar(&cfg.CPUProfile, "cpuprofile", "", "CPU profile of the window")
	fs.StringVar(&cfg.HeapProfile, "heapprofile", "", "heap profile after the window")
	fs.StringVar(&cfg.GoroutineDump, "goroutines", "", "goroutine dump after the window")
	memRate := fs.Int("memprofilerate", 0, "runtime.MemProfileRate (0 = Go's default)")
	maxTime := fs.Duration("maxtime", 5*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *memRate > 0 {
		runtime.MemProfileRate = *memRate
	}
	raiseFDLimit()
	ctx, cancel := roleContext(*maxTime)
	defer cancel()
	res, err := runner.RunIdle(ctx, cfg)
	if err != nil {
		return err
	}
	printResult(os.Stdout, res)
	return nil
}

func roleRecovery(args []string) error {
	fs := flag.NewFlagSet("wsbench recovery", flag.ContinueOnError)
	var cfg runner.RecoveryConfig
	fs.StringVar(&cfg.URL, "url", "", "idle server base URL")
	fs.IntVar(&cfg.Feeds, "feeds", 10000, "feeds in the pool")
	fs.DurationVar(&cfg.Poll, "poll", 50*time.Millisecond, "Pool.Stats polling interval")
	maxTime := fs.Duration("maxtime", 3*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	raiseFDLimit()
	cfg.Timeout = *maxTime
	cfg.Events = os.Stdout
	ctx, cancel := roleContext(*maxTime)
	defer cancel()
	res, err := runner.RunRecovery(ctx, cfg)
	if err != nil {
		return err
	}
	printResult(os.Stdout, res)
	return nil
}

func roleSend(args []string) error {
	fs := flag.NewFlagSet("wsbench send", flag.ContinueOnError)
	url := fs.String("url", "", "echo server base URL")
	size := fs.Int("size", 64, "message payload bytes")
	rounds := fs.Int("rounds", 5, "rounds; each runs wspool and raw, alternating which goes first")
	warmup := fs.Duration("warmup", 200*time.Millisecond, "warm-up before each window")
	window := fs.Duration("window", 2*time.Second, "measured window per run")
	maxTime := fs.Duration("maxtime", 5*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	raiseFDLimit()
	ctx, cancel := roleContext(*maxTime)
	defer cancel()
	for r := range *rounds {
		order := []string{runner.ModeWspool, runner.ModeRaw}
		if r%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, mode := range order {
			runtime.GC()
			res, err := runner.RunSend(ctx, runner.SendConfig{Mode: mode, URL: *url, Size: *size, Warmup: *warmup, Window: *window})
			if err != nil {
				return err
			}
			printResult(os.Stdout, struct {
				Round int
				runner.SendResult
			}{r, res})
		}
	}
	return nil
}

// latencyRow is one latency run as the latency role reports it.
type latencyRow struct {
	Round int
	runner.LatencyResult
	// GCLoad is the garbage the process allocated per second beside the
	// feeds (0: none); GC the collector's settings.
	GCLoad int
	GC     string
}

func roleLatency(args []string) error {
	fs := flag.NewFlagSet("wsbench latency", flag.ContinueOnError)
	url := fs.String("url", "", "firehose server base URL")
	feeds := fs.Int("feeds", 1, "connections")
	size := fs.Int("size", 64, "message payload bytes (at least 16: the stamp)")
	rate := fs.Int("rate", 10000, "messages per second per feed")
	rounds := fs.Int("rounds", 2, "rounds; each runs every client once, the order rotating by one each round")
	modes := fs.String("modes", strings.Join(latencyModes, ","), "clients")
	warmup := fs.Duration("warmup", time.Second, "warm-up before each window")
	window := fs.Duration("window", 4*time.Second, "measured window per run")
	grace := fs.Duration("grace", 500*time.Millisecond, "after the window, wait this long for late messages")
	gcLoad := fs.Int("gc-load", 0, "bytes of garbage allocated per second beside the feeds (0 = none)")
	gcLive := fs.Int("gc-live", 64<<20, "with -gc-load: bytes of live pointers every collection marks")
	maxTime := fs.Duration("maxtime", 5*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	clients := strings.Split(*modes, ",")
	raiseFDLimit()
	ctx, cancel := roleContext(*maxTime)
	defer cancel()
	if *gcLoad > 0 {
		g := runner.StartGCLoad(*gcLoad, *gcLive)
		defer g.Stop()
	}
	for r := range *rounds {
		for i := range clients {
			mode := clients[(i+r)%len(clients)]
			runtime.GC()
			cfg := runner.LatencyConfig{Mode: mode, URL: *url, Feeds: *feeds, Size: *size, Rate: *rate, Warmup: *warmup, Window: *window, Grace: *grace}
			res, err := runner.RunLatency(ctx, cfg)
			if err != nil {
				return err
			}
			printResult(os.Stdout, latencyRow{Round: r, LatencyResult: res, GCLoad: *gcLoad, GC: runner.GCSettings()})
		}
	}
	return nil
}

// latencyModes are the clients of the latency benchmark.
var latencyModes = []string{runner.ModeWspool, runner.ModeWspoolQueue, runner.ModeGws, runner.ModeRaw, runner.ModeFrames}

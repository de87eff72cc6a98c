package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/bench/internal/firehose"
	"github.com/wspool/wspool/bench/internal/runner"
)

// settings are the orchestrator's parameters.
type settings struct {
	preset string

	only map[string]bool

	rounds         int
	warmup, window time.Duration
	tpFeeds        []int
	tpSizes        []int
	tpModes        []string

	bigSize, bigRounds int
	bigWindow          time.Duration

	sendRounds int
	sendWindow time.Duration

	idleFeeds              []int
	idleModes              []string
	idleSettle, idleWindow time.Duration
	idleRounds             int // at 10,000 feeds and more; smaller counts run once
	readBuf                int

	recFeeds []int
	outage   time.Duration

	latCells           []latencyCell
	latModes           []string
	latRounds          int
	latWarmup, latWind time.Duration
	latGrace           time.Duration
	gcLoad, gcLive     int
	plotDir            string
	plotFormat         string
	plotJSON           string

	timeout    time.Duration
	profileDir string
	jsonOut    string
	note       string
	verbose    bool
}

func parseInts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad number %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func parseSettings(args []string) (*settings, error) {
	fs := flag.NewFlagSet("wsbench", flag.ContinueOnError)
	quick := fs.Bool("quick", false, "shorter runs (about 1-2 minutes)")
	smoke := fs.Bool("smoke", false, "a few seconds with 100 feeds, for CI")
	only := fs.String("only", "throughput,big,send,idle,recovery,latency", "benchmarks to run")
	latModes := fs.String("lat-modes", strings.Join(latencyModes, ","), "latency: clients")
	latLoads := fs.String("lat-loads", "1x10000,1000x50", "latency: feeds x messages per second per feed")
	latSizes := fs.String("lat-sizes", "64,4096", "latency: message sizes")
	latGC := fs.String("lat-gc", "off,on", "latency: without and/or with the GC load")
	gcLoad := fs.Int("gc-load", 200<<20, "latency: bytes of garbage per second of the GC load")
	plotDir := fs.String("plots", "", "latency: write one plot per cell into this directory")
	plotFormat := fs.String("plot-format", "svg", "latency plots: svg, png or pdf")
	fromJSON := fs.String("plot-json", "", "only write the latency plots (-plots) of the results in this -json file, run nothing")
	rounds := fs.Int("rounds", 0, "throughput rounds (each runs every client once); 0 = preset")
	tpModes := fs.String("tp-modes", "wspool,raw,gws,gobwas", "throughput and big: clients (wspool, raw, gws, gobwas)")
	bigSize := fs.Int("big-size", 16<<20, "big: message size in bytes")
	window := fs.Duration("window", 0, "throughput window per run; 0 = preset")
	tpFeeds := fs.String("tp-feeds", "1,16", "throughput: feeds per run")
	tpSizes := fs.String("tp-sizes", "64,4096", "throughput: message sizes")
	idleFeeds := fs.String("idle-feeds", "", "idle: feed counts; empty = preset")
	idleWindow := fs.Duration("idle-window", 0, "idle: CPU window for 10,000 feeds or more (smaller counts: 16s, or this if shorter); 0 = preset")
	idleModes := fs.String("idle-modes", "wspool,raw,gws,raw+ping,gobwas", "idle: clients to measure")
	idleRounds := fs.Int("idle-rounds", 0, "idle: rounds at 10,000 feeds and more (raw+ping and gobwas run in the first only); 0 = preset")
	readBuf := fs.Int("readbuf", 0, "throughput and idle: gorilla read buffer size for every client (0 = gorilla's default)")
	recFeeds := fs.String("recovery-feeds", "", "recovery: feed counts; empty = preset")
	outage := fs.Duration("outage", 0, "recovery: server down this long; 0 = preset")
	timeout := fs.Duration("timeout", 0, "kill everything after this long; 0 = preset")
	profileDir := fs.String("profile", "", "write CPU/heap profiles of the wspool runs into this directory")
	jsonOut := fs.String("json", "", "also write all raw results as JSON to this file")
	note := fs.String("note", "", "a line printed with the results (e.g. the library commit)")
	verbose := fs.Bool("v", false, "show the children's stderr")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	s := &settings{
		preset: "full", rounds: 3, warmup: 300 * time.Millisecond, window: 2 * time.Second,
		bigRounds: 3, bigWindow: 2 * time.Second,
		sendRounds: 5, sendWindow: 2 * time.Second,
		idleFeeds: []int{10000}, idleSettle: 2 * time.Second, idleWindow: 30 * time.Second, idleRounds: 3,
		recFeeds: []int{10000, 200}, outage: 3 * time.Second,
		timeout: 40 * time.Minute,
	}
	s.latRounds, s.latWarmup, s.latWind, s.latGrace = 2, time.Second, 4*time.Second, 500*time.Millisecond
	switch {
	case *smoke:
		s.latRounds, s.latWarmup, s.latWind, s.latGrace = 1, 200*time.Millisecond, 300*time.Millisecond, 200*time.Millisecond
		if !explicit(fs, "lat-loads") {
			*latLoads = "20x100"
		}
		if !explicit(fs, "lat-sizes") {
			*latSizes = "64"
		}
		if !explicit(fs, "lat-gc") {
			*latGC = "on"
		}
		s.preset = "smoke"
		s.rounds, s.warmup, s.window = 1, 100*time.Millisecond, 300*time.Millisecond
		s.bigRounds, s.bigWindow, *bigSize = 1, 300*time.Millisecond, min(*bigSize, 1<<20)
		s.sendRounds, s.sendWindow = 1, 300*time.Millisecond
		s.idleFeeds, s.idleSettle, s.idleWindow, s.idleRounds = []int{100}, 200*time.Millisecond, 2*time.Second, 1
		s.recFeeds, s.outage = []int{100}, time.Second
		s.timeout = 90 * time.Second
	case *quick:
		s.latRounds, s.latWarmup, s.latWind = 1, 500*time.Millisecond, 2*time.Second
		s.preset = "quick"
		s.rounds, s.window = 3, time.Second
		s.bigRounds, s.bigWindow = 3, time.Second
		s.sendRounds, s.sendWindow = 3, time.Second
		s.idleFeeds, s.idleSettle, s.idleWindow, s.idleRounds = []int{1000, 10000}, time.Second, 5*time.Second, 1
		s.timeout = 15 * time.Minute
	}
	var err error
	if *rounds > 0 {
		s.rounds, s.sendRounds = *rounds, *rounds
	}
	if *window > 0 {
		s.window, s.sendWindow, s.bigWindow = *window, *window, *window
	}
	if *rounds > 0 {
		s.bigRounds = *rounds
	}
	s.bigSize = *bigSize
	for m := range strings.SplitSeq(*tpModes, ",") {
		switch m = strings.TrimSpace(m); m {
		case runner.ModeWspool, runner.ModeRaw, runner.ModeGws, runner.ModeFrames:
			s.tpModes = append(s.tpModes, m)
		case "":
		default:
			return nil, fmt.Errorf("unknown throughput client %q", m)
		}
	}
	if s.tpFeeds, err = parseInts(*tpFeeds); err != nil {
		return nil, err
	}
	if s.tpSizes, err = parseInts(*tpSizes); err != nil {
		return nil, err
	}
	if *idleFeeds != "" {
		if s.idleFeeds, err = parseInts(*idleFeeds); err != nil {
			return nil, err
		}
	}
	if *idleWindow > 0 {
		s.idleWindow = *idleWindow
	}
	if *recFeeds != "" {
		if s.recFeeds, err = parseInts(*recFeeds); err != nil {
			return nil, err
		}
	}
	if *outage > 0 {
		s.outage = *outage
	}
	if *idleRounds > 0 {
		s.idleRounds = *idleRounds
	}
	if *timeout > 0 {
		s.timeout = *timeout
	}
	s.only = map[string]bool{}
	for f := range strings.SplitSeq(*only, ",") {
		switch f = strings.TrimSpace(f); f {
		case "throughput", "big", "send", "idle", "recovery", "latency":
			s.only[f] = true
		case "":
		default:
			return nil, fmt.Errorf("unknown benchmark %q in -only", f)
		}
	}
	for m := range strings.SplitSeq(*idleModes, ",") {
		switch m = strings.TrimSpace(m); m {
		case runner.ModeWspool, runner.ModeRaw, runner.ModeRawPing, runner.ModeGws, runner.ModeFrames:
			s.idleModes = append(s.idleModes, m)
		case "":
		default:
			return nil, fmt.Errorf("unknown idle mode %q", m)
		}
	}
	for m := range strings.SplitSeq(*latModes, ",") {
		switch m = strings.TrimSpace(m); m {
		case runner.ModeWspool, runner.ModeWspoolQueue, runner.ModeRaw, runner.ModeGws, runner.ModeFrames:
			s.latModes = append(s.latModes, m)
		case "":
		default:
			return nil, fmt.Errorf("unknown latency client %q", m)
		}
	}
	if s.latCells, err = parseCells(*latLoads, *latSizes, *latGC); err != nil {
		return nil, err
	}
	switch *plotFormat {
	case "svg", "png", "pdf":
	default:
		return nil, fmt.Errorf("unknown plot format %q", *plotFormat)
	}
	s.gcLoad, s.gcLive, s.plotDir, s.plotFormat, s.plotJSON = *gcLoad, 64<<20, *plotDir, *plotFormat, *fromJSON
	s.readBuf = *readBuf
	s.profileDir, s.jsonOut, s.note, s.verbose = *profileDir, *jsonOut, *note, *verbose
	return s, nil
}

// orch runs the benchmarks.
type orch struct {
	s     *settings
	p     *procs
	res   *results
	start time.Time
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func orchestrate(args []string) error {
	s, err := parseSettings(args)
	if err != nil {
		return err
	}
	if s.plotJSON != "" {
		return plotsFromJSON(s)
	}
	raiseFDLimit()
	p, err := newProcs(s.verbose)
	if err != nil {
		return err
	}
	defer p.killAll()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if s.profileDir != "" {
		if s.profileDir, err = filepath.Abs(s.profileDir); err != nil {
			return err
		}
		if err := os.MkdirAll(s.profileDir, 0o755); err != nil {
			return err
		}
	}

	o := &orch{s: s, p: p, res: newResults(s), start: time.Now()}
	steps := []struct {
		name string
		run  func(context.Context) error
	}{
		{"throughput", o.throughput},
		{"big", o.big},
		{"send", o.send},
		{"idle", o.idle},
		{"recovery", o.recovery},
		{"latency", o.latency},
	}
	var errs []error
	for _, st := range steps {
		if !s.only[st.name] {
			continue
		}
		if ctx.Err() != nil {
			errs = append(errs, fmt.Errorf("%s: skipped: %w", st.name, ctx.Err()))
			continue
		}
		logf("== %s", st.name)
		if err := st.run(ctx); err != nil {
			logf("%s failed: %v", st.name, err)
			errs = append(errs, fmt.Errorf("%s: %w", st.name, err))
		}
		p.killAll() // nothing of one step survives into the next
		p.mu.Lock()
		p.children = map[*child]struct{}{}
		p.mu.Unlock()
	}
	o.res.Elapsed = time.Since(o.start)
	if s.plotDir != "" && len(o.res.Latency) > 0 {
		if err := writePlots(s.plotDir, s.plotFormat, o.res.Latency); err != nil {
			errs = append(errs, fmt.Errorf("plots: %w", err))
		}
	}
	o.res.print(os.Stdout)
	if s.jsonOut != "" {
		b, _ := json.MarshalIndent(o.res, "", "  ")
		if err := os.WriteFile(s.jsonOut, b, 0o644); err != nil {
			errs = append(errs, err)
		}
	}
	if ctx.Err() != nil && !errors.Is(ctx.Err(), context.Canceled) {
		errs = append(errs, fmt.Errorf("overall timeout %v reached", s.timeout))
	}
	return errors.Join(errs...)
}

// remaining is how long children may live: until the overall deadline.
func remaining(ctx context.Context) string {
	if d, ok := ctx.Deadline(); ok {
		return (time.Until(d) + 5*time.Second).Round(time.Second).String()
	}
	return "10m"
}

// server starts a firehose server child on addr and returns it with its
// address and when it started listening.
func (o *orch) server(ctx context.Context, mode, addr string) (*child, string, time.Time, error) {
	c, err := o.p.start("server", "serve", "-addr", addr, "-mode", mode, "-maxtime", remaining(ctx))
	if err != nil {
		return nil, "", time.Time{}, err
	}
	line, err := c.expect(ctx, "LISTENING ", 10*time.Second)
	if err != nil {
		c.kill()
		return nil, "", time.Time{}, err
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		c.kill()
		return nil, "", time.Time{}, fmt.Errorf("server: bad line %q", line)
	}
	ns, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		c.kill()
		return nil, "", time.Time{}, err
	}
	return c, f[0], time.Unix(0, ns), nil
}

// serverStats asks a server for its counters.
func serverStats(ctx context.Context, addr string) (firehose.Stats, error) {
	var st firehose.Stats
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/stats", nil)
	if err != nil {
		return st, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}

func (o *orch) profile(name string) string {
	if o.s.profileDir == "" {
		return ""
	}
	return filepath.Join(o.s.profileDir, name)
}

func (o *orch) throughput(ctx context.Context) error {
	srv, addr, _, err := o.server(ctx, firehose.ModeFirehose, "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer srv.stop()
	for _, feeds := range o.s.tpFeeds {
		for _, size := range o.s.tpSizes {
			rows, err := o.throughputRun(ctx, addr, feeds, size, o.s.rounds, o.s.window, "throughput")
			o.res.Throughput = append(o.res.Throughput, rows...)
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// big is one feed of large messages (16 MiB by default): time and bytes
// allocated per message, and for the first message of a fresh connection.
func (o *orch) big(ctx context.Context) error {
	srv, addr, _, err := o.server(ctx, firehose.ModeFirehose, "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer srv.stop()
	rows, err := o.throughputRun(ctx, addr, 1, o.s.bigSize, o.s.bigRounds, o.s.bigWindow, "big")
	o.res.Big = append(o.res.Big, rows...)
	return err
}

// throughputRun runs one throughput client process: rounds x every client.
func (o *orch) throughputRun(ctx context.Context, addr string, feeds, size, rounds int, window time.Duration, what string) ([]tpRow, error) {
	perRun := o.s.warmup + window + 5*time.Second
	args := []string{"throughput", "-url", "ws://" + addr + "/", "-feeds", fmt.Sprint(feeds), "-size", fmt.Sprint(size),
		"-rounds", fmt.Sprint(rounds), "-modes", strings.Join(o.s.tpModes, ","),
		"-warmup", o.s.warmup.String(), "-window", window.String(), "-maxtime", remaining(ctx),
		"-readbuf", fmt.Sprint(o.s.readBuf)}
	if pf := o.profile(fmt.Sprintf("%s-f%d-s%d.cpu", what, feeds, size)); pf != "" {
		args = append(args, "-cpuprofile", pf)
	}
	c, err := o.p.start(fmt.Sprintf("%s f=%d s=%d", what, feeds, size), args...)
	if err != nil {
		return nil, err
	}
	var rows []tpRow
	for range len(o.s.tpModes) * rounds {
		var r tpRow
		if err := c.result(ctx, perRun+15*time.Second, &r); err != nil {
			c.kill()
			return rows, err
		}
		logf("%s feeds=%d size=%d round %d %-6s %10.1f msgs/s  %.3f CPU s/M  %.2f allocs/msg  %.0f B/msg  first: %.3fs %d B",
			what, feeds, size, r.Round, r.Mode, r.MsgsPerSec, r.CPUPerMillion, r.AllocsPerMsg, r.BytesPerMsg, r.FirstSeconds, r.FirstBytes)
		rows = append(rows, r)
	}
	return rows, c.wait(20 * time.Second)
}

func (o *orch) send(ctx context.Context) error {
	srv, addr, _, err := o.server(ctx, firehose.ModeEcho, "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer srv.stop()
	c, err := o.p.start("send", "send", "-url", "ws://"+addr+"/", "-size", "64", "-rounds", fmt.Sprint(o.s.sendRounds),
		"-window", o.s.sendWindow.String(), "-maxtime", remaining(ctx))
	if err != nil {
		return err
	}
	for range 2 * o.s.sendRounds {
		var r sendRow
		if err := c.result(ctx, o.s.sendWindow+20*time.Second, &r); err != nil {
			c.kill()
			return err
		}
		logf("send round %d %-6s %10.0f sends/s %10.0f echoes/s  %.3f CPU s/M  %.2f allocs/send",
			r.Round, r.Mode, r.SendsPerSec, r.EchoesPerSec, r.CPUPerMillion, r.AllocsPerSend)
		o.res.Send = append(o.res.Send, r)
	}
	return c.wait(20 * time.Second)
}

func (o *orch) idle(ctx context.Context) error {
	var errs []error
	k := 0
	for _, feeds := range o.s.idleFeeds {
		rounds := 1
		if feeds >= 10000 {
			rounds = o.s.idleRounds
		}
		for round := 1; round <= rounds; round++ {
			modes := slices.Clone(o.s.idleModes)
			if round > 1 {
				modes = slices.DeleteFunc(modes, func(m string) bool { return m == runner.ModeRawPing || m == runner.ModeFrames })
			}
			if k%2 == 1 {
				slices.Reverse(modes) // alternate which client goes first
			}
			k++
			for _, mode := range modes {
				if err := o.idleOne(ctx, mode, feeds, round); err != nil {
					errs = append(errs, err)
					if ctx.Err() != nil {
						return errors.Join(errs...)
					}
				}
			}
		}
	}
	return errors.Join(errs...)
}

func (o *orch) idleOne(ctx context.Context, mode string, feeds, round int) error {
	// A fresh server (and port) per run: the previous run's sockets linger
	// in TIME_WAIT on the old port.
	srv, addr, _, err := o.server(ctx, firehose.ModeIdle, "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer srv.stop()
	// The window covers two ping intervals at 10,000 feeds and more (for
	// CPU), and at least the first ping round otherwise (for memory).
	window := o.s.idleWindow
	if feeds < 10000 {
		window = min(window, 16*time.Second)
	}
	args := []string{"idle", "-url", "ws://" + addr + "/", "-mode", mode, "-feeds", fmt.Sprint(feeds),
		"-settle", o.s.idleSettle.String(), "-window", window.String(), "-maxtime", remaining(ctx),
		"-readbuf", fmt.Sprint(o.s.readBuf)}
	if mode == runner.ModeWspool && o.s.profileDir != "" && round == 1 {
		base := fmt.Sprintf("idle-%s-%d", mode, feeds)
		args = append(args, "-cpuprofile", o.profile(base+".cpu"), "-heapprofile", o.profile(base+".heap"),
			"-goroutines", o.profile(base+".goroutines.txt"), "-memprofilerate", "4096")
	}
	c, err := o.p.start(fmt.Sprintf("idle %s %d", mode, feeds), args...)
	if err != nil {
		return err
	}
	var r runner.IdleResult
	if err := c.result(ctx, 2*time.Minute+window, &r); err != nil {
		c.kill()
		return err
	}
	logf("idle %-6s feeds=%-6d connect %.2fs  RSS/feed %.1f KiB  heap/feed %.1f KiB  stack/feed %.1f KiB  CPU %.2f%% of a core",
		mode, feeds, r.ConnectSeconds, r.RSSPerFeed/1024, r.HeapPerFeed/1024, r.StackPerFeed/1024, r.CPUPercent)
	row := idleRow{IdleResult: r, Round: round}
	if st, err := serverStats(ctx, addr); err == nil {
		row.ServerPings = st.Pings
	}
	o.res.Idle = append(o.res.Idle, row)
	return c.wait(time.Minute)
}

func (o *orch) recovery(ctx context.Context) error {
	var errs []error
	for _, feeds := range o.s.recFeeds {
		if err := o.recoveryOne(ctx, feeds); err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
		}
	}
	return errors.Join(errs...)
}

func (o *orch) recoveryOne(ctx context.Context, feeds int) error {
	srv, addr, _, err := o.server(ctx, firehose.ModeIdle, "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer func() { srv.kill() }()
	c, err := o.p.start(fmt.Sprintf("recovery %d", feeds), "recovery", "-url", "ws://"+addr+"/", "-feeds", fmt.Sprint(feeds),
		"-maxtime", remaining(ctx))
	if err != nil {
		return err
	}
	defer c.kill()
	if _, err := c.expect(ctx, "UP ", 2*time.Minute); err != nil {
		return err
	}
	first, _ := serverStats(ctx, addr)
	if err := sleepCtx(ctx, time.Second); err != nil {
		return err
	}
	// The outage: kill -9 the server, keep the port closed, start it again.
	srv.kill()
	killedAt := time.Now()
	if _, err := c.expect(ctx, "DOWN ", 30*time.Second); err != nil {
		return err
	}
	if err := sleepCtx(ctx, time.Until(killedAt.Add(o.s.outage))); err != nil {
		return err
	}
	var backAt time.Time
	for attempt := 0; ; attempt++ {
		srv, _, backAt, err = o.server(ctx, firehose.ModeIdle, addr)
		if err == nil {
			break
		}
		// The port may not be free again at once; retry briefly.
		if attempt >= 20 || ctx.Err() != nil {
			return fmt.Errorf("restarting the server on %s: %w", addr, err)
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	logf("recovery feeds=%d: server killed, back after %v", feeds, backAt.Sub(killedAt).Round(time.Millisecond))
	var r runner.RecoveryResult
	if err := c.result(ctx, 2*time.Minute, &r); err != nil {
		return err
	}
	st, err := serverStats(ctx, addr)
	if err != nil {
		return err
	}
	row := recoveryRow{
		RecoveryResult:     r,
		Outage:             backAt.Sub(killedAt),
		BackToFirst:        time.Duration(r.FirstReconnectAt - backAt.UnixNano()),
		BackToLast:         time.Duration(r.LastReconnectAt - backAt.UnixNano()),
		BackToAllSeen:      time.Duration(r.AllSeenAt - backAt.UnixNano()),
		PeakHandshakes:     st.PeakInFlight,
		InitialPeak:        first.PeakInFlight,
		ServerUpgrades:     st.Upgrades,
		ServerAccepted:     st.Accepted,
		MaxConcurrentDials: wspool.DefaultMaxConcurrentDials,
	}
	logf("recovery feeds=%d: last feed connected %v after the server was back; peak handshakes %d (initial connect %d)",
		feeds, row.BackToLast.Round(time.Millisecond), row.PeakHandshakes, row.InitialPeak)
	o.res.Recovery = append(o.res.Recovery, row)
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
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

// latencyCell is one cell of the latency table: a load, a size, with or
// without the GC load.
type latencyCell struct {
	Feeds, Rate, Size int
	GC                bool
}

func (c latencyCell) String() string {
	gc := ""
	if c.GC {
		gc = ", GC load"
	}
	return fmt.Sprintf("%s feed(s) x %s msg/s, %d B%s", rate(float64(c.Feeds)), rate(float64(c.Rate)), c.Size, gc)
}

// parseCells returns every combination of loads ("feedsxrate,..."), sizes
// and GC settings ("off,on").
func parseCells(loads, sizes, gcs string) ([]latencyCell, error) {
	szs, err := parseInts(sizes)
	if err != nil {
		return nil, err
	}
	var gcv []bool
	for g := range strings.SplitSeq(gcs, ",") {
		switch strings.TrimSpace(g) {
		case "off":
			gcv = append(gcv, false)
		case "on":
			gcv = append(gcv, true)
		case "":
		default:
			return nil, fmt.Errorf("bad -lat-gc value %q (off or on)", g)
		}
	}
	var cells []latencyCell
	for _, gc := range gcv {
		for l := range strings.SplitSeq(loads, ",") {
			l = strings.TrimSpace(l)
			if l == "" {
				continue
			}
			f, r, ok := strings.Cut(l, "x")
			feeds, err1 := strconv.Atoi(f)
			rt, err2 := strconv.Atoi(r)
			if !ok || err1 != nil || err2 != nil || feeds <= 0 || rt <= 0 {
				return nil, fmt.Errorf("bad latency load %q (want feeds x rate, e.g. 1000x50)", l)
			}
			for _, sz := range szs {
				if sz < firehose.StampLen {
					return nil, fmt.Errorf("latency size %d is below the %d-byte stamp", sz, firehose.StampLen)
				}
				cells = append(cells, latencyCell{Feeds: feeds, Rate: rt, Size: sz, GC: gc})
			}
		}
	}
	return cells, nil
}

// explicit reports whether the flag name was set on the command line.
func explicit(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// latency runs one client process per cell (every client in turn, rounds
// times) against one stamping server.
func (o *orch) latency(ctx context.Context) error {
	srv, addr, _, err := o.server(ctx, firehose.ModeFirehose, "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer srv.stop()
	// A cell that fails (an overloaded machine may not connect 1,000 feeds
	// in time) is reported; the others still run.
	var errs []error
	for _, cell := range o.s.latCells {
		if err := o.latencyCell(ctx, addr, cell); err != nil {
			logf("latency %s failed: %v", cell, err)
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
		}
	}
	return errors.Join(errs...)
}

func (o *orch) latencyCell(ctx context.Context, addr string, cell latencyCell) error {
	gc := 0
	if cell.GC {
		gc = o.s.gcLoad
	}
	args := []string{"latency", "-url", "ws://" + addr + "/", "-feeds", fmt.Sprint(cell.Feeds), "-size", fmt.Sprint(cell.Size),
		"-rate", fmt.Sprint(cell.Rate), "-rounds", fmt.Sprint(o.s.latRounds), "-modes", strings.Join(o.s.latModes, ","),
		"-warmup", o.s.latWarmup.String(), "-window", o.s.latWind.String(), "-grace", o.s.latGrace.String(), "-gc-load", fmt.Sprint(gc),
		"-gc-live", fmt.Sprint(o.s.gcLive), "-maxtime", remaining(ctx)}
	c, err := o.p.start("latency "+cell.String(), args...)
	if err != nil {
		return err
	}
	for range len(o.s.latModes) * o.s.latRounds {
		var r latencyRow
		if err := c.result(ctx, o.s.latWarmup+o.s.latWind+4*time.Minute, &r); err != nil {
			c.kill()
			return err
		}
		logf("latency %s round %d %-12s p50 %s p99 %s p99.9 %s max %s  timed %d of %d sent",
			cell, r.Round, r.Mode, us(r.P50), us(r.P99), us(r.P999), us(r.Max), r.Count, r.Sent)
		o.res.Latency = append(o.res.Latency, r)
	}
	return c.wait(20 * time.Second)
}

// us renders nanoseconds as microseconds.
func us(ns int64) string {
	switch {
	case ns >= 100_000_000:
		return fmt.Sprintf("%.0f ms", float64(ns)/1e6)
	case ns >= 10_000_000:
		return fmt.Sprintf("%.1f ms", float64(ns)/1e6)
	case ns >= 1_000_000:
		return fmt.Sprintf("%.2f ms", float64(ns)/1e6)
	}
	return fmt.Sprintf("%.0f µs", float64(ns)/1e3)
}

// plotsFromJSON writes the latency plots of an earlier run's -json file.
func plotsFromJSON(s *settings) error {
	if s.plotDir == "" {
		return errors.New("-plot-json needs -plots")
	}
	b, err := os.ReadFile(s.plotJSON)
	if err != nil {
		return err
	}
	var res results
	if err := json.Unmarshal(b, &res); err != nil {
		return err
	}
	return writePlots(s.plotDir, s.plotFormat, res.Latency)
}

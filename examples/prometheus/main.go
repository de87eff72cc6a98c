// Prometheus serves the statistics and timings of a wspool.Pool as
// Prometheus metrics with the package
// github.com/wspool/wspool/metrics/wspoolprom: its Collector takes one
// Pool.Stats snapshot per scrape (no goroutine keeps gauges up to date
// between scrapes) and its Timings turn wspool.WithTimings into histograms.
//
// An embedded server on 127.0.0.1 gives five feeds something to report:
//
//   - ticker: a steady JSON stream (20 messages a second), one in ten not
//     valid JSON, so wspool.JSON reports decode errors
//     (wspool_feed_handler_errors_total); it subscribes on every connect and
//     the program sends it an order every 250ms (messages_sent_total).
//   - flaky:  the same stream, dropped by the server every -drop-every
//     (connects_total, disconnects_total, state flipping).
//   - burst:  2,000 messages a second into a 16-message DropOldest queue in
//     front of a handler that takes 2ms each (dropped_messages_total,
//     queue_depth, queue_high_water).
//   - down:   the server answers 503 with Retry-After: 1, so the feed keeps
//     backing off (connect_attempts_total, wspool_feeds{state="backing_off"});
//     orders sent to it wait in a 4-message send buffer and fail when it is
//     full or after 2s (send_buffered, send_failures_total).
//   - prices: a numbered stream (wspooltest.Stream) that skips numbers now
//     and then, read with WithSequence and one hot standby connection
//     (sequence_gaps_total, won_messages_total, the wspool_feed_standby_
//     families).
//
// Pings go out every -ping, so rtt_seconds and smoothed_rtt_seconds appear
// after the first pong. The metrics, the Go runtime's and the process's are
// served on http://127.0.0.1:9464/metrics (-addr), for Prometheus or curl:
//
//	go run . -duration 1m &          # from examples/prometheus, a module of its own
//	curl -s 127.0.0.1:9464/metrics | grep '^wspool_'
//
// It runs until Ctrl-C, or for -duration. The wspoolprom package
// documentation lists every metric. State changes are logged to stderr.
//
// Flags:
//
//	-addr host:port   where to serve /metrics (default 127.0.0.1:9464; :0 picks a free port)
//	-duration d       stop after d (default 0: run until Ctrl-C)
//	-ping d           ping interval and pong timeout (default 2s)
//	-drop-every d     how long the server keeps a flaky connection (default 3s)
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/metrics/wspoolprom"
	"github.com/wspool/wspool/wspooltest"
)

type config struct {
	addr      string
	duration  time.Duration
	ping      time.Duration
	dropEvery time.Duration
}

func main() {
	var cfg config
	flag.StringVar(&cfg.addr, "addr", "127.0.0.1:9464", "address to serve /metrics on")
	flag.DurationVar(&cfg.duration, "duration", 0, "stop after this long (0: run until Ctrl-C)")
	flag.DurationVar(&cfg.ping, "ping", 2*time.Second, "ping interval and pong timeout")
	flag.DurationVar(&cfg.dropEvery, "drop-every", 3*time.Second, "how long the server keeps a flaky connection")
	flag.Parse()
	if cfg.duration < 0 || cfg.ping <= 0 || cfg.dropEvery <= 0 {
		fmt.Fprintln(os.Stderr, "prometheus: -duration must not be negative, -ping and -drop-every must be positive")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cfg.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.duration)
		defer cancel()
	}
	if err := run(ctx, cfg, os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "prometheus:", err)
		os.Exit(1)
	}
}

// tick is a message of the ticker and flaky feeds.
type tick struct {
	Seq   int64   `json:"seq"`
	Price float64 `json:"price"`
}

// run serves the metrics and runs the feeds until ctx ends. ready, if not
// nil, gets the URL of /metrics once it is served.
func run(ctx context.Context, cfg config, logw io.Writer, ready func(metricsURL string)) error {
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	defer ln.Close()

	srv, err := startFeedServer(cfg.dropEvery)
	if err != nil {
		return err
	}
	defer srv.Close()

	var logMu sync.Mutex
	logf := func(format string, args ...any) {
		logMu.Lock()
		defer logMu.Unlock()
		fmt.Fprintf(logw, format+"\n", args...)
	}
	// Timings as histograms: handshake, OnConnect, time to first message,
	// handler time and queue wait, for the whole pool.
	timings := wspoolprom.NewTimings("example", wspoolprom.TimingOpts{})
	pool, err := wspool.NewPool(
		wspool.WithTimings(timings.Observe),
		wspool.WithPingInterval(cfg.ping),
		wspool.WithPongTimeout(cfg.ping),
		wspool.WithBackoff(200*time.Millisecond, 2*time.Second),
		wspool.WithOnStateChange(func(sc wspool.StateChange) {
			switch {
			case sc.To == wspool.StateConnected:
				logf("%s: connected", sc.Feed)
			case sc.To == wspool.StateBackingOff && sc.From == wspool.StateConnected:
				logf("%s: disconnected: %v", sc.Feed, sc.Err)
			case sc.To == wspool.StateBackingOff && sc.Attempt == 1:
				logf("%s: connect failed: %v (retrying; not logged again until it connects)", sc.Feed, sc.Err)
			case sc.To == wspool.StateClosed && sc.Err != nil:
				logf("%s: gave up: %v", sc.Feed, sc.Err)
			}
		}),
	)
	if err != nil {
		return err
	}
	subscribe := wspool.WithOnConnect(func(ctx context.Context, cn *wspool.Conn) error {
		return cn.Send(ctx, wspool.TextMessage, []byte(`{"op":"subscribe"}`))
	})
	prices := wspool.JSON(func(context.Context, tick) error { return nil })
	slow := func(ctx context.Context, _ wspool.Message) error {
		select {
		case <-time.After(2 * time.Millisecond):
		case <-ctx.Done():
		}
		return nil
	}
	ticker, err := pool.Add(srv.URL("/ticker"), prices, wspool.WithName("ticker"), subscribe)
	if err != nil {
		return err
	}
	if _, err := pool.Add(srv.URL("/flaky"), prices, wspool.WithName("flaky"), subscribe); err != nil {
		return err
	}
	if _, err := pool.Add(srv.URL("/burst"), slow, wspool.WithName("burst"),
		wspool.WithQueue(wspool.Queue{Messages: 16, Policy: wspool.DropOldest})); err != nil {
		return err
	}
	down, err := pool.Add(srv.URL("/down"), nil, wspool.WithName("down"),
		wspool.WithSendBuffer(wspool.SendBuffer{Messages: 4, MaxAge: 2 * time.Second}))
	if err != nil {
		return err
	}

	stream := wspooltest.NewStream(20 * time.Millisecond)
	defer stream.Close()
	streamSrv, err := wspooltest.NewServer(stream.Serve)
	if err != nil {
		return err
	}
	defer streamSrv.Close()
	if _, err := pool.Add(streamSrv.URL("/prices"), func(context.Context, wspool.Message) error { return nil },
		wspool.WithName("prices"),
		wspool.WithSequence(wspool.Sequence{Extract: func(m wspool.Message) (string, uint64, bool) {
			n, err := strconv.ParseUint(string(m.Data), 10, 64)
			return "", n, err == nil
		}}),
		wspool.WithStandby(wspool.Standby{Connections: 1})); err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		wspoolprom.NewCollector(pool, "example"),
		timings,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = hs.Serve(ln)
	}()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
		<-served
	}()
	metricsURL := "http://" + ln.Addr().String() + "/metrics"
	logf("metrics on %s", metricsURL)
	if ready != nil {
		ready(metricsURL)
	}

	// Orders every 250ms: written at once on ticker, buffered (and failing)
	// on down; and a gap in the prices stream every 2s.
	sendCtx, stopSending := context.WithCancel(ctx)
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		tk := time.NewTicker(250 * time.Millisecond)
		defer tk.Stop()
		for n := 1; ; n++ {
			select {
			case <-sendCtx.Done():
				return
			case <-tk.C:
			}
			order := fmt.Appendf(nil, `{"op":"order","id":%d}`, n)
			ticker.SendAsync(wspool.TextMessage, order, nil)
			down.SendAsync(wspool.TextMessage, order, nil)
			if n%8 == 0 {
				stream.Skip("/prices", 3) // a gap every 2s
			}
		}
	}()

	err = pool.Run(ctx) // nil once ctx ends
	stopSending()
	<-sent
	return err
}

// Demo keeps three WebSocket feeds alive against an embedded server on
// 127.0.0.1 and shows, live, what wspool does for each of them:
//
//   - ticker: a steady feed (10 messages a second) that never fails.
//   - flaky:  the server drops the connection abruptly every few seconds; the
//     feed backs off briefly, reconnects, and its OnConnect hook subscribes
//     again before any message reaches the handler.
//   - late:   the server answers the upgrade with 503 Service Unavailable and
//     Retry-After for the first 8 seconds; the feed waits as told and
//     connects once the server accepts.
//
// Every second it prints a status table, one row per feed: state, messages
// per second, total messages, reconnects, failed attempts, ping round-trip
// time and the last error. On a terminal the table is redrawn in place, with
// state changes scrolling above it; when stdout is not a terminal (or with
// -plain) everything is printed as plain lines. A summary line per feed is
// printed on exit.
//
// No network is needed. Run it from the repository root:
//
//	go run ./examples/demo                  # until Ctrl-C
//	go run ./examples/demo -duration 30s    # stops by itself
//
// Flags:
//
//	-duration d     stop after d (default 0: run until Ctrl-C)
//	-drop-every d   how long the server keeps a flaky connection (default 3s)
//	-refuse-for d   how long the server refuses the late feed (default 8s)
//	-rate n         messages per second on each feed (default 10)
//	-plain          plain lines even on a terminal
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/wspool/wspool"
)

func main() {
	var (
		duration  = flag.Duration("duration", 0, "stop after this long (0: run until Ctrl-C)")
		dropEvery = flag.Duration("drop-every", 3*time.Second, "how long the server keeps a flaky connection before dropping it")
		refuseFor = flag.Duration("refuse-for", 8*time.Second, "how long the server refuses the late feed with 503")
		rate      = flag.Int("rate", 10, "messages per second on each feed")
		plain     = flag.Bool("plain", false, "print plain lines even on a terminal")
	)
	flag.Parse()
	if *rate < 1 || *dropEvery <= 0 || *refuseFor < 0 || *duration < 0 {
		fmt.Fprintln(os.Stderr, "demo: -rate must be at least 1, -drop-every positive, -refuse-for and -duration not negative")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}

	cfg := serverConfig{rate: *rate, dropEvery: *dropEvery, refuseFor: *refuseFor}
	if err := run(ctx, cfg, os.Stdout, !*plain && isTerminal(os.Stdout)); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg serverConfig, out io.Writer, ansi bool) error {
	srv, err := startServer(cfg)
	if err != nil {
		return err
	}
	defer srv.Close()

	ui := newStatusUI(out, ansi)

	pool, err := wspool.NewPool(
		// Short liveness settings so the RTT column fills at once; production
		// values are more like 15s and 10s (the defaults).
		wspool.WithPingInterval(time.Second),
		wspool.WithPongTimeout(time.Second),
		// Retry quickly, and count a connection as stable after 2s, so the
		// flaky feed (dropped every 3s) is back within a second each time. The
		// default (10s) would make its waits grow, as they should for a server
		// that keeps dropping healthy-looking connections.
		wspool.WithBackoff(250*time.Millisecond, 5*time.Second),
		wspool.WithMinUptime(2*time.Second),
		wspool.WithOnStateChange(ui.stateChanged),
	)
	if err != nil {
		return err
	}
	for _, name := range []string{"ticker", "flaky", "late"} {
		_, err := pool.Add(srv.URL("/"+name), handleTick,
			wspool.WithName(name),
			wspool.WithOnConnect(subscribe(name)),
		)
		if err != nil {
			return err
		}
	}

	uiDone := make(chan struct{})
	uiCtx, stopUI := context.WithCancel(context.Background())
	go func() {
		defer close(uiDone)
		ui.loop(uiCtx, pool)
	}()

	err = pool.Run(ctx) // until Ctrl-C or -duration; then close frames to all feeds
	stopUI()
	<-uiDone
	ui.finish(pool)
	return err
}

// subscribe returns the OnConnect hook of a channel: it runs after every
// successful handshake, before the handler sees any message of the new
// connection, so a reconnected feed is always subscribed again.
func subscribe(channel string) func(ctx context.Context, cn *wspool.Conn) error {
	req := fmt.Appendf(nil, `{"op":"subscribe","channel":%q}`, channel)
	return func(ctx context.Context, cn *wspool.Conn) error {
		if err := cn.Send(ctx, wspool.TextMessage, req); err != nil {
			return err
		}
		// Wait for the acknowledgement (ctx is bounded by the OnConnect timeout).
		msg, err := cn.ReadMessage(ctx)
		if err != nil {
			return err
		}
		var ack struct{ Type, Channel string }
		if json.Unmarshal(msg.Data, &ack) != nil || ack.Type != "subscribed" || ack.Channel != channel {
			return fmt.Errorf("subscribe %s: unexpected reply %.100q", channel, msg.Data)
		}
		return nil
	}
}

// handleTick is every feed's handler. It is called one message at a time per
// feed; the status table reads the library's Stats, so there is nothing to
// count here. A malformed message would show up as the feed's last error.
func handleTick(_ context.Context, msg wspool.Message) error {
	var t tick
	if err := json.Unmarshal(msg.Data, &t); err != nil {
		return fmt.Errorf("bad tick %.60q: %w", msg.Data, err)
	}
	return nil
}

// isTerminal reports whether f is a character device, such as a terminal
// (and not a pipe or a file); TERM=dumb turns the redrawing off too.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0 && os.Getenv("TERM") != "dumb"
}

// oneLine shortens an error for a table cell.
func oneLine(err error, max int) string {
	if err == nil {
		return "-"
	}
	s := strings.Join(strings.Fields(err.Error()), " ")
	s = strings.TrimPrefix(s, "wspool: ")
	if len(s) > max {
		s = s[:max-3] + "..."
	}
	return s
}

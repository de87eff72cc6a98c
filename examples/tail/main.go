// Tail subscribes to WebSocket feeds and prints every message on stdout, one
// line each, keeping every feed connected (reconnects with backoff, ping/pong
// liveness) until Ctrl-C.
//
// Usage:
//
//	go run ./examples/tail [flags] URL...
//
// Each message is a JSON line:
//
//	{"feed":"wss://example.com/stream","type":"text","data":"..."}
//	{"feed":"wss://example.com/stream","type":"binary","data":"AAECAw=="}
//
// with binary payloads in base64; with -raw each payload is printed as is,
// followed by a newline. Connection state changes (connected, disconnected
// with the cause and the wait before the next attempt, gave up) go to stderr,
// so stdout stays machine-readable. Feed names are the URLs without userinfo
// and with secret-looking query values redacted.
//
// Flags (they must come before the URLs; -flag and --flag both work):
//
//	-raw            print bare payloads instead of JSON lines
//	-demo           also start a local server and tail its two feeds
//	                (JSON text and binary): runs with no network at all
//	-send MSG       a text message to send after every (re)connect, such as a
//	                subscription; repeat for several, sent in order
//	-H "K: V"       a header for every handshake (repeatable)
//	-duration d     stop after d (default 0: until Ctrl-C)
//	-ping d         ping interval (default 15s; 0 disables)
//	-v              log wspool's own events (slog) to stderr
//
// Examples:
//
//	go run ./examples/tail --demo
//	go run ./examples/tail --demo --raw -duration 5s
//	go run ./examples/tail -send '{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}' wss://stream.example.com/ws
//
// It exits 0 on Ctrl-C or when -duration ends, 1 when every feed has failed
// for good (for example HTTP 404 or 401 at the handshake), 2 on bad usage.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wspool/wspool"
)

type config struct {
	urls     []string
	raw      bool
	demo     bool
	send     []string
	header   http.Header
	duration time.Duration
	ping     time.Duration
	verbose  bool
}

// listFlag collects a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ", ") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	cfg, err := parseArgs(os.Args[1:], os.Stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "tail:", err)
		}
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cfg.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.duration)
		defer cancel()
	}
	if err := run(ctx, cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "tail:", err)
		if errors.Is(err, errUsage) || errors.Is(err, wspool.ErrInvalidURL) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

func parseArgs(args []string, stderr io.Writer) (config, error) {
	var cfg config
	var send, headers listFlag
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: tail [flags] URL...   (ws:// or wss://; or -demo for local feeds)")
		fs.PrintDefaults()
	}
	fs.BoolVar(&cfg.raw, "raw", false, "print bare payloads instead of JSON lines")
	fs.BoolVar(&cfg.demo, "demo", false, "also start a local server and tail its feeds (no network needed)")
	fs.Var(&send, "send", "text message to send after every (re)connect, e.g. a subscription (repeatable)")
	fs.Var(&headers, "H", `handshake header "Name: value" (repeatable)`)
	fs.DurationVar(&cfg.duration, "duration", 0, "stop after this long (0: until Ctrl-C)")
	fs.DurationVar(&cfg.ping, "ping", wspool.DefaultPingInterval, "ping interval (0 disables pings)")
	fs.BoolVar(&cfg.verbose, "v", false, "log wspool's events to stderr")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	cfg.urls, cfg.send = fs.Args(), send
	for _, u := range cfg.urls {
		if strings.HasPrefix(u, "-") {
			return cfg, fmt.Errorf("flag %s after the URLs: flags must come first", u)
		}
	}
	if len(cfg.urls) == 0 && !cfg.demo {
		fs.Usage()
		return cfg, errors.New("no URL given (try -demo)")
	}
	if cfg.duration < 0 || cfg.ping < 0 {
		return cfg, errors.New("-duration and -ping must not be negative")
	}
	cfg.header = http.Header{}
	for _, h := range headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(k) == "" {
			return cfg, fmt.Errorf(`-H %q: want "Name: value"`, h)
		}
		cfg.header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	return cfg, nil
}

// line is one message on stdout.
type line struct {
	Feed string `json:"feed"`
	Type string `json:"type"`
	Data any    `json:"data"` // string for text, []byte (base64) for binary
}

func run(ctx context.Context, cfg config, stdout, stderr io.Writer) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	status := &statusLog{w: stderr, cancel: cancel}
	opts := []wspool.PoolOption{
		wspool.WithPingInterval(cfg.ping),
		wspool.WithOnStateChange(status.changed),
	}
	if cfg.verbose {
		opts = append(opts, wspool.WithLogger(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	}
	if len(cfg.header) > 0 {
		opts = append(opts, wspool.WithHeader(cfg.header))
	}
	if len(cfg.send) > 0 {
		opts = append(opts, wspool.WithOnConnect(func(ctx context.Context, cn *wspool.Conn) error {
			for _, m := range cfg.send {
				if err := cn.Send(ctx, wspool.TextMessage, []byte(m)); err != nil {
					return err
				}
			}
			return nil
		}))
	}
	pool, err := wspool.NewPool(opts...)
	if err != nil {
		return err
	}

	// Handlers of different feeds run concurrently: one lock keeps lines whole.
	var outMu sync.Mutex
	// One handler for every feed. Message.Feed is the feed's name, which the
	// library derives from the URL (redacted) unless WithName sets it.
	emit := func(_ context.Context, msg wspool.Message) error {
		var b []byte
		if cfg.raw {
			b = append(msg.Data[:len(msg.Data):len(msg.Data)], '\n') // a copy: Data is the library's buffer
		} else {
			l := line{Feed: msg.Feed, Type: msg.Type.String(), Data: string(msg.Data)}
			if msg.Type == wspool.BinaryMessage {
				l.Data = msg.Data
			}
			var err error
			if b, err = json.Marshal(l); err != nil {
				return err
			}
			b = append(b, '\n')
		}
		outMu.Lock()
		defer outMu.Unlock()
		_, err := stdout.Write(b)
		return err
	}

	type target struct{ url, name string }
	var targets []target
	if cfg.demo {
		srv, err := startDemoServer()
		if err != nil {
			return err
		}
		defer srv.Close()
		targets = append(targets, target{srv.URL("/trades"), "demo-trades"}, target{srv.URL("/frames"), "demo-frames"})
		fmt.Fprintf(stderr, "tail: demo server on %s: /trades (text), /frames (binary)\n", srv.URL("/"))
	}
	for _, u := range cfg.urls {
		targets = append(targets, target{url: u})
	}
	for _, t := range targets {
		var feedOpts []wspool.Option
		if t.name != "" {
			feedOpts = append(feedOpts, wspool.WithName(t.name))
		}
		_, err := pool.Add(t.url, emit, feedOpts...)
		if errors.Is(err, wspool.ErrDuplicateName) {
			// Not echoing the URL: it may carry credentials.
			return fmt.Errorf("%w: the same feed URL given twice", errUsage)
		}
		if err != nil {
			return err
		}
	}
	status.total = len(targets)

	err = pool.Run(ctx) // until Ctrl-C, -duration, or every feed failed
	if cause := context.Cause(ctx); errors.Is(cause, errAllFailed) {
		return cause
	}
	return err
}

var (
	errAllFailed = errors.New("every feed failed for good")
	errUsage     = errors.New("usage")
)

// statusLog writes state changes to stderr and ends the run when every feed
// has failed for good.
type statusLog struct {
	w      io.Writer
	cancel context.CancelCauseFunc

	mu       sync.Mutex
	total    int
	failed   int
	connects map[string]int
}

func (s *statusLog) changed(sc wspool.StateChange) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch sc.To {
	case wspool.StateConnected:
		if s.connects == nil {
			s.connects = map[string]int{}
		}
		s.connects[sc.Feed]++
		if n := s.connects[sc.Feed]; n > 1 {
			fmt.Fprintf(s.w, "tail: %s: reconnected (reconnect #%d)\n", sc.Feed, n-1)
		} else {
			fmt.Fprintf(s.w, "tail: %s: connected\n", sc.Feed)
		}
	case wspool.StateBackingOff:
		what := "connect failed"
		if sc.From == wspool.StateConnected {
			what = "disconnected"
		}
		fmt.Fprintf(s.w, "tail: %s: %s: %v; retrying in %v\n", sc.Feed, what, sc.Err, sc.Wait.Round(time.Millisecond))
	case wspool.StateClosed:
		if sc.Err == nil {
			return // shutdown
		}
		fmt.Fprintf(s.w, "tail: %s: gave up: %v\n", sc.Feed, sc.Err)
		s.failed++
		if s.failed == s.total {
			s.cancel(errAllFailed)
		}
	}
}

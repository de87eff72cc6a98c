package firehose

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/wspool/wspool/bench/internal/sysstat"
)

// Main is the command line of a firehose server process (cmd/firehose, and
// wsbench's "serve" role). It prints
//
//	LISTENING <host:port> <unix nanoseconds>
//
// once the listener is open, serves until SIGINT/SIGTERM or -maxtime, then
// prints "STATS <json>" and returns.
func Main(name string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:0", "loopback `host:port` to listen on (port 0 picks a free one)")
	mode := fs.String("mode", ModeFirehose, "firehose, idle or echo")
	size := fs.Int("size", 64, "payload `bytes` per message (firehose)")
	count := fs.Int64("count", 0, "messages per connection (firehose); 0 = until the client leaves")
	rate := fs.Int("rate", 0, "messages per second per connection (firehose); 0 = as fast as possible")
	batch := fs.Int("batch", 64<<10, "target `bytes` per write (firehose)")
	binary := fs.Bool("binary", false, "send binary frames instead of text")
	stamp := fs.Bool("stamp", false, "start every message with its send time (16 hex digits of Unix nanoseconds)")
	delay := fs.Duration("hsdelay", 0, "sleep this long inside every handshake")
	maxTime := fs.Duration("maxtime", 0, "exit after this long (0 = run until signalled)")
	statsEvery := fs.Duration("stats", 0, "print STATS lines at this interval (0 = only at exit)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if lim, err := sysstat.RaiseFDLimit(); err != nil {
		fmt.Fprintf(stderr, "%s: cannot raise fd limit: %v\n", name, err)
	} else if lim < 1024 {
		fmt.Fprintf(stderr, "%s: fd limit is only %d\n", name, lim)
	}
	cfg := Config{Mode: *mode, Size: *size, Count: *count, Rate: *rate, Batch: *batch, Binary: *binary, Stamp: *stamp, HandshakeDelay: *delay}
	s, err := Listen(*addr, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "LISTENING %s %d\n", s.Addr(), s.ListenAt().UnixNano())
	if f, ok := stdout.(*os.File); ok {
		_ = f.Sync()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *maxTime > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *maxTime)
		defer cancel()
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- s.Serve() }()

	var tick <-chan time.Time
	if *statsEvery > 0 {
		t := time.NewTicker(*statsEvery)
		defer t.Stop()
		tick = t.C
	}
	printStats := func() {
		b, _ := json.Marshal(s.Stats())
		fmt.Fprintf(stdout, "STATS %s\n", b)
	}
	for {
		select {
		case <-tick:
			printStats()
			continue
		case err = <-serveErr:
		case <-ctx.Done():
		}
		break
	}
	printStats()
	cerr := s.Close()
	if err == nil {
		err = cerr
	}
	return err
}

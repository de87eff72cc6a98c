// Backpressure shows what a bounded inbound queue (wspool.WithQueue) does
// when a feed's handler cannot keep up, under each overflow policy.
//
// An embedded server on 127.0.0.1 produces a fast stream of sequenced
// messages (10,000 a second by default) on each of three connections. One
// Pool runs three feeds against it, all with the same small queue (64
// messages) and the same deliberately slow handler (1ms per message, so
// about 1,000 a second), one feed per policy:
//
//   - block:       the reader waits for room in the queue, stops reading the
//     socket, TCP's window closes, and the server's writes block: the server
//     slows down to the handler's pace and nothing is lost.
//   - drop-oldest: the reader keeps reading at full speed and the queue
//     discards its oldest message to make room: the server keeps its full
//     rate and the handler always works on recent data (low lag).
//   - drop-newest: the queue discards the arriving message instead: full
//     rate too, but what the handler gets waited behind a full queue.
//
// One handler serves the three feeds; it tells them apart by Message.Feed.
// Every second the program prints one row per feed: the server's send rate on
// that connection, the rate wspool read it at, the handler's rate, messages
// delivered and dropped so far (Stats.Delivered, Stats.Dropped), the queue's
// depth and high-water mark (Stats.QueueDepth, Stats.QueueHighWater), and the
// lag: how old a message was when the handler got it.
//
// After -duration the server stops producing and the program waits until
// every feed has read everything the server sent and its handler has worked
// through its queue. Then it checks, per feed, that the accounting is exact:
// the feed read every message the server sent (Stats.MessagesIn), every
// message read was either delivered or dropped (Delivered + Dropped ==
// MessagesIn), the handler saw sequence numbers in increasing order with
// exactly Dropped of them missing, and the block feed dropped nothing. It
// prints one summary line per feed (key=value), OK or FAIL per check, and
// exits 1 if a check failed.
//
// No network is needed. Run it from the repository root:
//
//	go run ./examples/backpressure
//	go run ./examples/backpressure -duration 10s -work 2ms -queue 256
//
// Flags:
//
//	-duration d   how long the server produces (default 5s; 0: until Ctrl-C)
//	-rate n       messages per second the server produces per connection (default 10000)
//	-size n       bytes per message, at least 16 (default 64)
//	-work d       time the handler spends on each message (default 1ms)
//	-queue n      queue size in messages (default 64)
//
// Ctrl-C ends the producing phase early; the checks still run.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wspool/wspool"
)

type options struct {
	duration time.Duration
	rate     int
	size     int
	work     time.Duration
	queue    int
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "how long the server produces (0: until Ctrl-C)")
	flag.IntVar(&o.rate, "rate", 10000, "messages per second the server produces on each connection")
	flag.IntVar(&o.size, "size", 64, "bytes per message (at least 16)")
	flag.DurationVar(&o.work, "work", time.Millisecond, "time the handler spends on each message")
	flag.IntVar(&o.queue, "queue", 64, "queue size in messages")
	flag.Parse()
	if o.duration < 0 || o.rate < 1 || o.size < 16 || o.work < 0 || o.queue < 1 {
		fmt.Fprintln(os.Stderr, "backpressure: bad flags: need -duration >= 0, -rate >= 1, -size >= 16, -work >= 0, -queue >= 1")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := run(ctx, o, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "backpressure:", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

// feed is one feed's policy and what its handler observed. The handler
// writes the counters; the reporter reads them.
type feed struct {
	name   string
	policy wspool.OverflowPolicy

	handled  atomic.Int64  // handler calls
	lastSeq  atomic.Uint64 // highest sequence number seen
	missing  atomic.Int64  // sequence numbers skipped over
	disorder atomic.Int64  // sequence numbers not above the previous one
	lagSum   atomic.Int64  // ns from the server's write to the handler, summed
	slow     atomic.Int64  // ErrSlowConsumer reports

	// The reporter's previous sample, for rates.
	prevSent, prevRead, prevDelivered, prevLagSum, prevHandled int64
	sendRates                                                  []float64 // per second while producing
}

// observe records one message; only the feed's handler goroutine calls it.
func (f *feed) observe(seq uint64, lag time.Duration) {
	last := f.lastSeq.Load()
	if seq <= last {
		f.disorder.Add(1)
	} else {
		f.missing.Add(int64(seq - last - 1))
		f.lastSeq.Store(seq)
	}
	f.lagSum.Add(int64(lag))
	f.handled.Add(1) // last: a reader that sees it sees the rest
}

// printer serialises output lines from the reporter and the main flow.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) say(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

func run(ctx context.Context, o options, stdout io.Writer) (ok bool, err error) {
	out := &printer{w: stdout}
	srv, err := startServer(o.rate, o.size)
	if err != nil {
		return false, err
	}
	defer srv.Close()
	defer srv.StopProducing() // on early returns

	feeds := []*feed{
		{name: "block", policy: wspool.Block},
		{name: "drop-oldest", policy: wspool.DropOldest},
		{name: "drop-newest", policy: wspool.DropNewest},
	}
	byName := map[string]*feed{} // read-only once the pool runs
	for _, f := range feeds {
		byName[f.name] = f
	}

	// One handler for every feed: Message.Feed says which one.
	handle := func(ctx context.Context, msg wspool.Message) error {
		f := byName[msg.Feed]
		if f == nil || len(msg.Data) < 16 {
			return fmt.Errorf("unexpected message on feed %q (%d bytes)", msg.Feed, len(msg.Data))
		}
		seq := binary.BigEndian.Uint64(msg.Data[0:8])
		sentAt := time.Unix(0, int64(binary.BigEndian.Uint64(msg.Data[8:16])))
		f.observe(seq, time.Since(sentAt))
		time.Sleep(o.work) // the slow part: a database write, a computation
		return nil
	}

	pool, err := wspool.NewPool(
		wspool.WithOnError(func(name string, err error) {
			if f := byName[name]; f != nil && errors.Is(err, wspool.ErrSlowConsumer) {
				f.slow.Add(1)
				return
			}
			out.say("%s: %v", name, err)
		}),
		wspool.WithOnStateChange(func(sc wspool.StateChange) {
			switch {
			case sc.To == wspool.StateConnected:
				out.say("%s: connected", sc.Feed)
			case sc.Err != nil:
				out.say("%s: %v -> %v: %v", sc.Feed, sc.From, sc.To, sc.Err)
			}
		}),
	)
	if err != nil {
		return false, err
	}
	for _, f := range feeds {
		q := wspool.Queue{Messages: o.queue, Policy: f.policy}
		if _, err := pool.Add(srv.URL("/"+f.name), handle, wspool.WithName(f.name), wspool.WithQueue(q)); err != nil {
			return false, err
		}
	}
	out.say("server on %s: %d msgs/s of %d bytes per connection; handler %v per message; queue %d messages",
		srv.URL("/"), o.rate, o.size, o.work, o.queue)

	poolCtx, stopPool := context.WithCancel(context.Background())
	defer stopPool()
	runDone := make(chan error, 1)
	go func() { runDone <- pool.Run(poolCtx) }()

	// Producing phase: until -duration or Ctrl-C.
	produceCtx := ctx
	if o.duration > 0 {
		var cancel context.CancelFunc
		produceCtx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	start := time.Now()
	producing := atomic.Bool{}
	producing.Store(true)
	tableDone := make(chan struct{})
	tableStopped := make(chan struct{})
	go func() {
		defer close(tableStopped)
		tk := time.NewTicker(time.Second)
		defer tk.Stop()
		last := time.Now()
		header(out)
		for {
			select {
			case <-tableDone:
				return
			case now := <-tk.C:
				rows(out, pool, srv, feeds, now.Sub(start), now.Sub(last), producing.Load())
				last = now
			}
		}
	}()
	select {
	case <-produceCtx.Done():
	case err := <-runDone:
		return false, fmt.Errorf("pool ended early: %v", err)
	}
	produced := time.Since(start)

	// Draining phase: the server stops; every feed reads what is left in
	// flight and its handler works through the queue.
	producing.Store(false)
	out.say("[%5.1fs] server stops producing; waiting for every feed to read and handle what is in flight", time.Since(start).Seconds())
	srv.StopProducing()
	drainCtx, stopDrain := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	drainCtx, cancelDrain := context.WithTimeout(drainCtx, 60*time.Second)
	drained := waitDrained(drainCtx, pool, srv)
	cancelDrain()
	stopDrain()
	close(tableDone)
	<-tableStopped
	if drained {
		out.say("[%5.1fs] drained", time.Since(start).Seconds())
	} else {
		out.say("[%5.1fs] gave up waiting for the feeds to drain", time.Since(start).Seconds())
	}

	stopPool()
	if err := <-runDone; err != nil {
		return false, err
	}
	return report(out, pool, srv, feeds, produced), nil
}

// waitDrained waits until every feed has read all the server sent, and its
// queue is empty with every message read accounted for.
func waitDrained(ctx context.Context, pool *wspool.Pool, srv *server) bool {
	tk := time.NewTicker(10 * time.Millisecond)
	defer tk.Stop()
	for {
		done := true
		for _, st := range pool.Stats().Feeds {
			if st.MessagesIn != srv.Sent(st.Name) || st.QueueDepth != 0 || st.Delivered+st.Dropped != st.MessagesIn {
				done = false
			}
		}
		if done {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tk.C:
		}
	}
}

func header(out *printer) {
	out.say("%7s  %-11s  %13s  %7s  %11s  %9s  %9s  %5s  %10s  %8s",
		"time", "feed", "server sent/s", "read/s", "delivered/s", "delivered", "dropped", "depth", "high-water", "lag")
}

// rows prints one row per feed: rates over the last interval dt, totals,
// queue depth and high-water mark, and the mean lag over the interval.
func rows(out *printer, pool *wspool.Pool, srv *server, feeds []*feed, elapsed, dt time.Duration, producing bool) {
	stats := map[string]wspool.Stats{}
	for _, st := range pool.Stats().Feeds {
		stats[st.Name] = st
	}
	rate := func(now int64, prev *int64) float64 {
		r := float64(now-*prev) / dt.Seconds()
		*prev = now
		return r
	}
	var b strings.Builder
	for _, f := range feeds {
		st := stats[f.name]
		sendRate := rate(srv.Sent(f.name), &f.prevSent)
		if producing {
			f.sendRates = append(f.sendRates, sendRate)
		}
		handled, lagSum := f.handled.Load(), f.lagSum.Load()
		lag := "-"
		if n := handled - f.prevHandled; n > 0 {
			lag = (time.Duration((lagSum - f.prevLagSum) / n)).Round(100 * time.Microsecond).String()
		}
		f.prevHandled, f.prevLagSum = handled, lagSum
		fmt.Fprintf(&b, "%6.1fs  %-11s  %13.0f  %7.0f  %11.0f  %9d  %9d  %5d  %10d  %8s\n",
			elapsed.Seconds(), f.name, sendRate, rate(st.MessagesIn, &f.prevRead), rate(st.Delivered, &f.prevDelivered),
			st.Delivered, st.Dropped, st.QueueDepth, st.QueueHighWater, lag)
	}
	out.say("%s", strings.TrimSuffix(b.String(), "\n"))
}

// report prints the summary lines and the checks, and says whether all
// checks passed. The pool has stopped: its stats are final.
func report(out *printer, pool *wspool.Pool, srv *server, feeds []*feed, produced time.Duration) bool {
	stats := map[string]wspool.Stats{}
	for _, st := range pool.Stats().Feeds {
		stats[st.Name] = st
	}
	ok := true
	check := func(cond bool, format string, args ...any) {
		verdict := "OK:  "
		if !cond {
			verdict, ok = "FAIL:", false
		}
		out.say(verdict+" "+format, args...)
	}
	// Sequence numbers the handler never saw: the gaps, and those after the
	// last one it saw (DropNewest drops the end of the stream).
	missing := func(f *feed) int64 {
		return f.missing.Load() + srv.Sent(f.name) - int64(f.lastSeq.Load())
	}
	out.say("")
	for _, f := range feeds {
		st := stats[f.name]
		sent := srv.Sent(f.name)
		lastRate := 0.0
		if n := len(f.sendRates); n > 0 {
			lastRate = f.sendRates[n-1]
		}
		meanLag := time.Duration(0)
		if h := f.handled.Load(); h > 0 {
			meanLag = time.Duration(f.lagSum.Load() / h)
		}
		out.say("summary feed=%s policy=%v sent=%d read=%d delivered=%d dropped=%d missing=%d disorder=%d high_water=%d connects=%d slow_consumer_reports=%d send_rate=%.0f send_rate_last=%.0f mean_lag=%v",
			f.name, f.policy, sent, st.MessagesIn, st.Delivered, st.Dropped, missing(f), f.disorder.Load(),
			st.QueueHighWater, st.Connects, f.slow.Load(), float64(sent)/produced.Seconds(), lastRate, meanLag.Round(100*time.Microsecond))
	}
	out.say("")
	for _, f := range feeds {
		st := stats[f.name]
		sent := srv.Sent(f.name)
		check(st.Connects == 1, "%s: one connection for the whole run (connects=%d)", f.name, st.Connects)
		check(st.MessagesIn == sent, "%s: read every message the server sent (read %d, sent %d)", f.name, st.MessagesIn, sent)
		check(st.Delivered+st.Dropped == st.MessagesIn, "%s: delivered + dropped == read (%d + %d = %d, read %d)",
			f.name, st.Delivered, st.Dropped, st.Delivered+st.Dropped, st.MessagesIn)
		check(f.handled.Load() == st.Delivered, "%s: the handler ran once per delivered message (%d calls, delivered %d)",
			f.name, f.handled.Load(), st.Delivered)
		check(f.disorder.Load() == 0 && missing(f) == st.Dropped,
			"%s: sequence numbers in order, and exactly the dropped ones missing (missing %d, dropped %d, out of order %d)",
			f.name, missing(f), st.Dropped, f.disorder.Load())
		if f.policy == wspool.Block {
			check(st.Dropped == 0 && st.Delivered == sent, "%s: nothing dropped, every message the server sent was handled (dropped %d)", f.name, st.Dropped)
		}
	}
	if ok {
		out.say("OK: every check passed")
	} else {
		out.say("FAIL: some checks failed")
	}
	return ok
}

// Resume shows exactly-once, gap-free consumption of a sequenced feed across
// server crashes: each time wspool reconnects, the feed resumes from the last
// sequence number its handler saw, and the server replays from there.
//
// An embedded upstream produces numbered events (1000 a second by default)
// into a log that outlives its WebSocket server. The program kills that
// server (listener and connections closed abruptly, no close frame) and
// restarts it on the same port, -restarts times; events keep being produced
// while it is down. The feed's cursor is the handler's last sequence number:
//
//   - with -via query (the default) WithRequestFunc puts it in the URL of
//     every dial (?from=N);
//   - with -via message the OnConnect hook sends {"op":"subscribe","from":N}.
//
// Either way the OnConnect hook waits for the server's acknowledgement before
// any event reaches the handler. The handler checks that every sequence
// number arrives exactly once, in order. At the end the program stops the
// producer, waits for the handler to catch up with the head of the log, and
// prints the verdict: it exits 0 if there was no gap and no duplicate, 1
// otherwise.
//
// -resume=false subscribes without a cursor ("live only", as a naive
// reconnecting client would), which loses the events produced while the
// server was down: the check reports the gaps and the program exits 1.
//
// No network is needed. Run it from the repository root:
//
//	go run ./examples/resume
//	go run ./examples/resume -via message -restarts 10
//	go run ./examples/resume -resume=false      # see the gaps it catches
//
// Flags:
//
//	-restarts n     how many times to kill and restart the server (default 5)
//	-up d           how long the server stays up between restarts (default 1s)
//	-down d         how long the server stays down (default 500ms)
//	-rate n         events produced per second (default 1000)
//	-via how        query (cursor in the URL) or message (cursor in OnConnect)
//	-resume bool    resume from the cursor (default true)
//
// Ctrl-C stops early; what was received so far is still checked.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/wstest"
)

type options struct {
	restarts int
	up, down time.Duration
	rate     int
	via      string
	resume   bool
}

func main() {
	var o options
	flag.IntVar(&o.restarts, "restarts", 5, "how many times to kill and restart the server")
	flag.DurationVar(&o.up, "up", time.Second, "how long the server stays up between restarts")
	flag.DurationVar(&o.down, "down", 500*time.Millisecond, "how long the server stays down")
	flag.IntVar(&o.rate, "rate", 1000, "events produced per second")
	flag.StringVar(&o.via, "via", "query", "how the cursor is sent: query (WithRequestFunc) or message (OnConnect)")
	flag.BoolVar(&o.resume, "resume", true, "resume from the last sequence seen (false: live only, which loses events)")
	flag.Parse()
	if o.restarts < 0 || o.up <= 0 || o.down < 0 || o.rate < 1 || (o.via != "query" && o.via != "message") {
		fmt.Fprintln(os.Stderr, "resume: bad flags: need -restarts >= 0, -up > 0, -down >= 0, -rate >= 1, -via query|message")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, o, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "resume:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, stdout io.Writer) error {
	out := newPrinter(stdout)
	log := newEventLog()
	prodCtx, stopProducing := context.WithCancel(context.Background())
	prodDone := make(chan struct{})
	go func() {
		defer close(prodDone)
		log.produce(prodCtx, o.rate)
	}()
	defer func() { stopProducing(); <-prodDone }()

	srv, err := startServer(log)
	if err != nil {
		return err
	}
	defer srv.Close()

	chk := &checker{}
	feedURL := srv.URL("/events")
	opts := []wspool.Option{
		wspool.WithName("events"),
		// Come back quickly once the server is back.
		wspool.WithBackoff(100*time.Millisecond, time.Second),
		wspool.WithPingInterval(time.Second),
		wspool.WithPongTimeout(2 * time.Second),
		wspool.WithOnConnect(func(ctx context.Context, cn *wspool.Conn) error {
			want := int64(0) // live only
			if o.resume {
				want = chk.Last() + 1
			}
			if o.via == "message" {
				req := fmt.Appendf(nil, `{"op":"subscribe","from":%d}`, want)
				if err := cn.Send(ctx, wspool.TextMessage, req); err != nil {
					return err
				}
			}
			// Nothing reaches the handler before OnConnect returns, so the
			// acknowledgement is read here.
			msg, err := cn.ReadMessage(ctx)
			if err != nil {
				return err
			}
			var ack struct {
				Type       string
				From, Head int64
			}
			if json.Unmarshal(msg.Data, &ack) != nil || ack.Type != "subscribed" {
				return fmt.Errorf("unexpected reply %.100q", msg.Data)
			}
			if want != 0 && ack.From != want {
				return fmt.Errorf("asked to resume from %d, server resumes from %d", want, ack.From)
			}
			out.say("connected: server sends from seq %d (head %d, %d to replay)", ack.From, ack.Head, max(ack.Head-ack.From+1, 0))
			return nil
		}),
		wspool.WithOnStateChange(func(sc wspool.StateChange) {
			if sc.To == wspool.StateBackingOff {
				out.say("disconnected, retry in %v: %v", sc.Wait.Round(time.Millisecond), sc.Err)
			}
		}),
	}
	if o.via == "query" {
		// Called before every dial with a fresh copy of the URL.
		opts = append(opts, wspool.WithRequestFunc(func(_ context.Context, u *url.URL, _ http.Header) error {
			from := int64(0)
			if o.resume {
				from = chk.Last() + 1
			}
			q := u.Query()
			q.Set("from", strconv.FormatInt(from, 10))
			u.RawQuery = q.Encode()
			return nil
		}))
	}
	// Without WithQueue the handler runs on the reader: when a connection
	// ends, every message it delivered has been handled, so the cursor the
	// next dial reads is exact.
	client, err := wspool.NewClient(feedURL, chk.handle, opts...)
	if err != nil {
		return err
	}
	how := "?from=N in the URL (WithRequestFunc)"
	if o.via == "message" {
		how = `{"op":"subscribe","from":N} from OnConnect`
	}
	if !o.resume {
		how = "no cursor (live only)"
	}
	out.say("feed %s, %d events/s, resume with %s, %d restarts", feedURL, o.rate, how, o.restarts)

	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		_ = client.Run(context.Background()) // nil after Close; a permanent error shows in Stats
	}()
	stopClient := func() {
		client.Close() // close frame, bounded wait; idempotent
		<-runDone
	}
	defer stopClient()

	restarts, err := restartLoop(ctx, o, srv, log, chk, client, out)
	if err != nil {
		return err
	}

	// Stop producing and let the handler catch up with the head.
	stopProducing()
	<-prodDone
	head := log.Head()
	if ctx.Err() == nil {
		if err := waitUntil(ctx, 15*time.Second, func() bool { return chk.Last() >= head }); err != nil && ctx.Err() == nil {
			out.say("the handler did not catch up: saw up to %d, head %d", chk.Last(), head)
		}
	} else {
		head = chk.Last() // interrupted: check what arrived
	}
	stopClient()

	st := client.Stats()
	res := chk.result()
	if res.last != head {
		res.problems = append(res.problems, fmt.Sprintf("handler saw up to %d, the log's head is %d", res.last, head))
	}
	if len(res.problems) == 0 {
		fmt.Fprintf(stdout, "OK: the handler saw every sequence number from 1 to %d exactly once, with no gap, across %d server restarts (%d connections, %d events)\n",
			head, restarts, st.Connects, res.count)
		return nil
	}
	fmt.Fprintf(stdout, "FAIL: %d gaps (%d events missing), %d duplicates, %d corrupt, across %d server restarts (%d connections)\n",
		res.gaps, res.missing, res.dups, res.corrupt, restarts, st.Connects)
	for _, p := range res.problems {
		fmt.Fprintln(stdout, "  "+p)
	}
	return errors.New("events were lost or repeated")
}

// restartLoop kills and restarts the server o.restarts times, each time once
// the feed has caught up with everything produced while it was away. It
// returns how many restarts it did (fewer if ctx ended).
func restartLoop(ctx context.Context, o options, srv *wstest.Server, log *eventLog, chk *checker, client *wspool.Client, out *printer) (int, error) {
	for i := 1; i <= o.restarts+1; i++ {
		// Wait for the feed to be connected and to have caught up with what
		// was produced up to now, then let it run for -up.
		target := log.Head()
		err := waitUntil(ctx, 20*time.Second, func() bool {
			return client.State() == wspool.StateConnected && chk.Last() >= target
		})
		if err != nil {
			if ctx.Err() != nil {
				return i - 1, nil
			}
			return i - 1, fmt.Errorf("feed did not catch up with seq %d (saw %d, state %v)", target, chk.Last(), client.State())
		}
		if sleep(ctx, o.up) != nil || i > o.restarts {
			return i - 1, nil
		}
		srv.Stop()
		out.say("restart %d/%d: server killed at head %d; the handler had seen %d", i, o.restarts, log.Head(), chk.Last())
		if sleep(ctx, o.down) != nil {
			return i, nil
		}
		if err := srv.Start(); err != nil {
			return i, fmt.Errorf("restart server: %w", err)
		}
		out.say("restart %d/%d: server back at head %d", i, o.restarts, log.Head())
	}
	return o.restarts, nil
}

// checker is the feed's handler: it checks that sequence numbers arrive
// exactly once and in order. The handler is never called concurrently with
// itself; the mutex is for the goroutines that read the cursor.
type checker struct {
	mu                     sync.Mutex
	last, count            int64
	gaps, missing, dups    int64
	corrupt                int64
	problems               []string
	reportedProblemsCapped bool
}

func (c *checker) handle(_ context.Context, msg wspool.Message) error {
	var ev event
	if err := json.Unmarshal(msg.Data, &ev); err != nil {
		return fmt.Errorf("bad event %.100q: %w", msg.Data, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.count++
	switch {
	case ev.Data != payload(ev.Seq):
		c.corrupt++
		c.problem("seq %d carries %q", ev.Seq, ev.Data)
	case ev.Seq == c.last+1:
		c.last = ev.Seq
	case ev.Seq <= c.last:
		c.dups++
		c.problem("duplicate: seq %d again after %d", ev.Seq, c.last)
	default:
		c.gaps++
		c.missing += ev.Seq - c.last - 1
		c.problem("gap: after seq %d came %d (%d missing)", c.last, ev.Seq, ev.Seq-c.last-1)
		c.last = ev.Seq
	}
	return nil
}

func (c *checker) problem(format string, args ...any) {
	const maxProblems = 10
	if len(c.problems) < maxProblems {
		c.problems = append(c.problems, fmt.Sprintf(format, args...))
	} else if !c.reportedProblemsCapped {
		c.reportedProblemsCapped = true
		c.problems = append(c.problems, "(more problems not listed)")
	}
}

// Last is the cursor: the highest sequence number handled in order.
func (c *checker) Last() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

type result struct {
	last, count, gaps, missing, dups, corrupt int64
	problems                                  []string
}

func (c *checker) result() result {
	c.mu.Lock()
	defer c.mu.Unlock()
	return result{c.last, c.count, c.gaps, c.missing, c.dups, c.corrupt, append([]string(nil), c.problems...)}
}

// printer writes timestamped lines from any goroutine.
type printer struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
}

func newPrinter(w io.Writer) *printer { return &printer{w: w, start: time.Now()} }

func (p *printer) say(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "[%6.2fs] %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}

// waitUntil polls cond until it holds, ctx ends or timeout passes.
func waitUntil(ctx context.Context, timeout time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tk := time.NewTicker(10 * time.Millisecond)
	defer tk.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tk.C:
		}
	}
	return nil
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

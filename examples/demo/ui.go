package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/wspool/wspool"
)

// statusUI prints state changes as they happen and the status table every
// second. Only its loop goroutine (and finish, after the loop) writes to out.
type statusUI struct {
	out   io.Writer
	ansi  bool
	start time.Time

	events chan string // state-change lines, from the feeds' goroutines

	mu       sync.Mutex
	connects map[string]int // per feed, counted from state changes
	dropped  int            // events not shown because the UI fell behind

	// Owned by the loop goroutine (then by finish).
	onScreen int                // ANSI: lines of the table to redraw
	stopped  bool               // set by finish
	last     map[string]sample  // previous sample per feed, for msgs/s
	rates    map[string]float64 // msgs/s per feed over the last second
}

type sample struct {
	at       time.Time
	messages int64
}

func newStatusUI(out io.Writer, ansi bool) *statusUI {
	return &statusUI{
		out:      out,
		ansi:     ansi,
		start:    time.Now(),
		events:   make(chan string, 1024),
		connects: map[string]int{},
		last:     map[string]sample{},
		rates:    map[string]float64{},
	}
}

// stateChanged is the pool's WithOnStateChange callback. It runs on the
// feed's own goroutine, in order, and must return quickly: it only formats a
// line and hands it to the UI goroutine.
func (u *statusUI) stateChanged(sc wspool.StateChange) {
	var what string
	switch sc.To {
	case wspool.StateConnected:
		u.mu.Lock()
		u.connects[sc.Feed]++
		n := u.connects[sc.Feed]
		u.mu.Unlock()
		what = "connected"
		if n > 1 {
			what = fmt.Sprintf("connected (reconnect #%d)", n-1)
		}
	case wspool.StateBackingOff:
		what = fmt.Sprintf("backing off %v after: %s", sc.Wait.Round(time.Millisecond), oneLine(sc.Err, 200))
	case wspool.StateClosed:
		what = "closed"
		if sc.Err != nil {
			what += ": " + oneLine(sc.Err, 200)
		}
	default:
		return // connecting: the next change says how it went
	}
	line := fmt.Sprintf("%s %s: %s", u.stamp(sc.At), sc.Feed, what)
	select {
	case u.events <- line:
	default:
		u.mu.Lock()
		u.dropped++
		u.mu.Unlock()
	}
}

func (u *statusUI) stamp(t time.Time) string {
	return fmt.Sprintf("[%6.1fs]", t.Sub(u.start).Seconds())
}

// loop redraws every second, and at once on a state change, until ctx ends.
func (u *statusUI) loop(ctx context.Context, pool *wspool.Pool) {
	u.sample(pool.Stats())
	tk := time.NewTicker(time.Second)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-u.events:
			if u.ansi {
				u.redraw(pool.Stats(), u.pending(ev))
			} else {
				fmt.Fprintln(u.out, ev)
			}
		case <-tk.C:
			st := pool.Stats()
			u.sample(st)
			if u.ansi {
				u.redraw(st, u.pending(""))
			} else {
				u.printTable(st)
			}
		}
	}
}

// pending returns ev (if any) and every other queued event.
func (u *statusUI) pending(ev string) []string {
	var evs []string
	if ev != "" {
		evs = append(evs, ev)
	}
	for {
		select {
		case e := <-u.events:
			evs = append(evs, e)
		default:
			return evs
		}
	}
}

// sample updates the messages-per-second rates.
func (u *statusUI) sample(st wspool.PoolStats) {
	now := time.Now()
	for _, f := range st.Feeds {
		if prev, ok := u.last[f.Name]; ok {
			if dt := now.Sub(prev.at).Seconds(); dt > 0 {
				u.rates[f.Name] = float64(f.MessagesIn-prev.messages) / dt
			}
		}
		u.last[f.Name] = sample{at: now, messages: f.MessagesIn}
	}
}

// redraw moves the cursor up over the table, clears to the end of the
// screen, prints the new events (they scroll up) and the table below them.
func (u *statusUI) redraw(st wspool.PoolStats, events []string) {
	var b strings.Builder
	if u.onScreen > 0 {
		fmt.Fprintf(&b, "\x1b[%dA\r\x1b[J", u.onScreen)
	}
	for _, ev := range events {
		b.WriteString(ev)
		b.WriteByte('\n')
	}
	rows := u.table(st)
	hint := "(Ctrl-C to stop)"
	if u.stopped {
		hint = "(stopped)"
	}
	// Auto-wrap off while drawing the table: on a narrow terminal a long row
	// is clipped instead of taking two lines, which would throw off the
	// cursor-up count of the next redraw.
	b.WriteString("\x1b[?7l")
	fmt.Fprintf(&b, "\x1b[1mwspool demo\x1b[0m  %s  feeds %d, connected %d  %s\n",
		time.Since(u.start).Round(time.Second), st.Total, st.Connected, hint)
	for _, r := range rows {
		b.WriteString(r)
		b.WriteByte('\n')
	}
	b.WriteString("\x1b[?7h")
	u.onScreen = len(rows) + 1
	io.WriteString(u.out, b.String())
}

func (u *statusUI) printTable(st wspool.PoolStats) {
	var b strings.Builder
	stamp := u.stamp(time.Now())
	for _, r := range u.table(st) {
		b.WriteString(stamp + " " + r + "\n")
	}
	io.WriteString(u.out, b.String())
}

const rowFormat = "%-7s %-11s %6s %7s %6s %6s %8s  %s"

func (u *statusUI) table(st wspool.PoolStats) []string {
	rows := []string{fmt.Sprintf(rowFormat, "FEED", "STATE", "MSG/S", "TOTAL", "RECONN", "FAILED", "RTT", "LAST ERROR")}
	for _, f := range st.Feeds {
		rows = append(rows, fmt.Sprintf(rowFormat,
			f.Name, f.State,
			fmt.Sprintf("%.1f", u.rates[f.Name]),
			fmt.Sprint(f.MessagesIn),
			fmt.Sprint(reconnects(f)),
			fmt.Sprint(failed(f)),
			rtt(f.RTT),
			lastError(f)))
	}
	return rows
}

// finish prints what is left once the pool has stopped: the last state
// changes, the final table, and one summary line per feed (key=value, for
// scripts and the examples test).
func (u *statusUI) finish(pool *wspool.Pool) {
	u.stopped = true
	st := pool.Stats()
	events := u.pending("")
	if u.ansi {
		u.redraw(st, events)
	} else {
		for _, ev := range events {
			fmt.Fprintln(u.out, ev)
		}
		u.printTable(st)
	}
	u.mu.Lock()
	dropped := u.dropped
	u.mu.Unlock()
	if dropped > 0 {
		fmt.Fprintf(u.out, "(%d state changes not shown: output fell behind)\n", dropped)
	}
	for _, f := range st.Feeds {
		fmt.Fprintf(u.out, "summary feed=%s state=%q messages=%d connects=%d reconnects=%d failed_attempts=%d rtt=%s last_error=%q\n",
			f.Name, f.State, f.MessagesIn, f.Connects, reconnects(f), failed(f), rtt(f.RTT), oneLine(f.LastError, 200))
	}
}

// lastError is the feed's most recent failure and how long ago it was.
func lastError(f wspool.Stats) string {
	if f.LastError == nil {
		return "-"
	}
	return fmt.Sprintf("%vs ago: %s", int(time.Since(f.LastErrorAt).Seconds()), oneLine(f.LastError, 56))
}

// reconnects counts connections after the first one.
func reconnects(f wspool.Stats) int64 { return max(f.Connects-1, 0) }

// failed counts dial attempts that did not end in a connection (the attempt
// in progress, if any, is not counted yet).
func failed(f wspool.Stats) int64 {
	n := f.Attempts - f.Connects
	if f.State == wspool.StateConnecting {
		n--
	}
	return max(n, 0)
}

func rtt(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	default:
		return d.Round(100 * time.Microsecond).String()
	}
}

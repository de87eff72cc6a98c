// Heartbeats shows application-level heartbeats (wspool.WithHeartbeat): data
// messages some upstreams require every so often to keep a session open,
// sent on each feed's own timer, separate from WebSocket ping frames.
//
// Three feeds share one Pool, each with its own interval and payload:
//
//   - fast:   text "ping" every 250ms; the "pong" replies are recognised
//     (IsReply) and kept from the handler (DropReplies).
//   - medium: text "ping" every 500ms, replies dropped the same way.
//   - json:   {"op":"ping","ts":<Unix µs>} every second; the replies
//     {"op":"pong","ts":...} are recognised but delivered to the handler,
//     which measures the application-level round trip from the echoed ts.
//
// The embedded server (127.0.0.1) answers every heartbeat, counts them per
// feed, and publishes a data message every 400ms on each connection. Every
// second the program prints, per feed, how many heartbeats the server heard
// and at what measured interval, how many replies IsReply recognised, and
// what the handler got: data messages and, for json, the pongs. Replies
// recognised by IsReply still prove the connection alive, but they are not
// data for the stale-data watchdog (WithStaleTimeout).
//
// No network is needed. Run it from the repository root:
//
//	go run ./examples/heartbeats                 # until Ctrl-C
//	go run ./examples/heartbeats -duration 5s
//
// On exit it prints one summary line per feed (key=value).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wspool/wspool"
)

// feed is one upstream session with its heartbeat, and what its handler saw.
type feed struct {
	name     string
	interval time.Duration
	hb       wspool.Heartbeat

	data, pongs atomic.Int64 // seen by the handler
	replies     atomic.Int64 // recognised by IsReply, dropped or not
	appRTT      atomic.Int64 // latest, in ns (json feed)
}

// countReplies wraps the feed's IsReply to count the replies it recognises.
func (f *feed) countReplies() *feed {
	isReply := f.hb.IsReply
	f.hb.IsReply = func(m wspool.Message) bool {
		if isReply(m) {
			f.replies.Add(1)
			return true
		}
		return false
	}
	return f
}

func textPing(name string, interval time.Duration) *feed {
	return &feed{name: name, interval: interval, hb: wspool.Heartbeat{
		Interval: interval,
		Message:  func() (wspool.MessageType, []byte) { return wspool.TextMessage, []byte("ping") },
		IsReply: func(m wspool.Message) bool {
			return m.Type == wspool.TextMessage && string(m.Data) == "pong"
		},
		DropReplies: true,
	}}
}

func jsonPing(name string, interval time.Duration) *feed {
	return &feed{name: name, interval: interval, hb: wspool.Heartbeat{
		Interval: interval,
		// Called on every tick, so each heartbeat carries its own timestamp.
		Message: func() (wspool.MessageType, []byte) {
			return wspool.TextMessage, fmt.Appendf(nil, `{"op":"ping","ts":%d}`, time.Now().UnixMicro())
		},
		IsReply: func(m wspool.Message) bool {
			op, _ := decodeOp(m.Data)
			return op == "pong"
		},
		DropReplies: false, // the handler wants them, for the round trip
	}}
}

// decodeOp reads the "op" and "ts" fields of a JSON message.
func decodeOp(data []byte) (op string, ts int64) {
	var m struct {
		Op string `json:"op"`
		TS int64  `json:"ts"`
	}
	if json.Unmarshal(data, &m) != nil {
		return "", 0
	}
	return m.Op, m.TS
}

// handle is the feed's handler: data messages, and pongs if not dropped.
func (f *feed) handle(_ context.Context, msg wspool.Message) error {
	op, ts := decodeOp(msg.Data)
	switch {
	case op == "pong":
		f.pongs.Add(1)
		f.appRTT.Store(int64(time.Since(time.UnixMicro(ts))))
	case string(msg.Data) == "pong":
		f.pongs.Add(1) // would only happen without DropReplies
	default:
		f.data.Add(1)
	}
	return nil
}

func main() {
	duration := flag.Duration("duration", 0, "stop after this long (0: run until Ctrl-C)")
	dataEvery := flag.Duration("data-every", 400*time.Millisecond, "how often the server publishes a data message")
	flag.Parse()
	if *duration < 0 || *dataEvery <= 0 {
		fmt.Fprintln(os.Stderr, "heartbeats: -duration must not be negative, -data-every must be positive")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	if err := run(ctx, *dataEvery, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "heartbeats:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, dataEvery time.Duration, out io.Writer) error {
	srv, err := startServer(dataEvery)
	if err != nil {
		return err
	}
	defer srv.Close()

	feeds := []*feed{
		textPing("fast", 250*time.Millisecond).countReplies(),
		textPing("medium", 500*time.Millisecond).countReplies(),
		jsonPing("json", time.Second).countReplies(),
	}
	pool, err := wspool.NewPool()
	if err != nil {
		return err
	}
	for _, f := range feeds {
		if _, err := pool.Add(srv.URL("/"+f.name), f.handle, wspool.WithName(f.name), wspool.WithHeartbeat(f.hb)); err != nil {
			return err
		}
	}

	start := time.Now()
	report := func(final bool) {
		heard := srv.Heard()
		stats := map[string]wspool.Stats{}
		for _, st := range pool.Stats().Feeds {
			stats[st.Name] = st
		}
		for _, f := range feeds {
			h, st := heard[f.name], stats[f.name]
			data, pongs, replies := f.data.Load(), f.pongs.Load(), f.replies.Load()
			fate := "delivered"
			if f.hb.DropReplies {
				fate = "dropped"
			}
			if final {
				fmt.Fprintf(out, "summary feed=%s interval=%v heard=%d measured_interval=%v sent=%d data=%d replies=%d replies_to_handler=%d connects=%d\n",
					f.name, f.interval, h.n, h.interval().Round(time.Millisecond), st.MessagesOut, data, replies, pongs, st.Connects)
				continue
			}
			measured := "-"
			if d := h.interval(); d > 0 {
				measured = d.Round(time.Millisecond).String()
			}
			line := fmt.Sprintf("[%5.1fs] %-6s every %-5v  server heard %3d, one every %-6s  replies %3d %-9s  handler got %3d data, %3d pongs",
				time.Since(start).Seconds(), f.name, f.interval, h.n, measured, replies, fate, data, pongs)
			if rtt := time.Duration(f.appRTT.Load()); rtt > 0 {
				line += fmt.Sprintf(", app RTT %v", rtt.Round(time.Microsecond))
			}
			fmt.Fprintln(out, line)
		}
	}

	runDone := make(chan error, 1)
	go func() { runDone <- pool.Run(ctx) }()
	tk := time.NewTicker(time.Second)
	defer tk.Stop()
	for {
		select {
		case err := <-runDone:
			report(true)
			return err
		case <-tk.C:
			report(false)
		}
	}
}

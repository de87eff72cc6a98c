package wspool_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/faultproxy"
	"github.com/wspool/wspool/internal/wstest"
)

func newProxy(t *testing.T, target string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// lastCause returns the cause of the latest transition into state.
func (e *events) lastCause(state wspool.State) error {
	var err error
	for _, sc := range e.snapshot() {
		if sc.To == state {
			err = sc.Err
		}
	}
	return err
}

// blackholeDetection connects through a proxy, blackholes it and returns how
// long the feed took to notice.
func blackholeDetection(t *testing.T, ping, pong time.Duration, bound time.Duration, phase time.Duration) time.Duration {
	srv := newServer(t, ticker)
	px := newProxy(t, srv.Addr())
	ev := newEvents()
	c, err := wspool.NewClient("ws://"+px.Addr()+"/", nil,
		wspool.WithPingInterval(ping), wspool.WithPongTimeout(pong),
		wspool.WithHandshakeTimeout(time.Second),
		wspool.WithBackoff(50*time.Millisecond, 200*time.Millisecond), ev.option())
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	ev.waitCount(t, wspool.StateConnected, 1, 5*time.Second)
	time.Sleep(phase) // where in the ping cycle the peer dies (measurement only)
	px.SetMode(faultproxy.Blackhole)
	start := time.Now()
	ev.waitCount(t, wspool.StateBackingOff, 1, bound)
	detected := time.Since(start)
	if cause := ev.lastCause(wspool.StateBackingOff); !errors.Is(cause, wspool.ErrPongTimeout) {
		t.Fatalf("cause %v, want ErrPongTimeout", cause)
	}
	px.SetMode(faultproxy.PassThrough)
	ev.waitCount(t, wspool.StateConnected, 2, 10*time.Second)
	return detected
}

func TestBlackholeDetectedAndRecovered(t *testing.T) {
	d := blackholeDetection(t, time.Second, time.Second, 6*time.Second, 0)
	// Worst case: the last byte arrived just before a ping was due, then one
	// ping interval plus the pong timeout.
	t.Logf("blackhole detected after %v (ping 1s, pong timeout 1s)", d)
}

// TestSlowLargeMessageIsNotADeadPeer: a message whose single frame takes
// four times the pong timeout to arrive (pongs queue behind it) is not taken
// for a dead peer: its bytes prove the peer alive. The margin is wide so that
// it holds on a loaded machine: the feed would be declared dead only after no
// byte at all for the 4 s pong timeout, while the proxy forwards a few
// hundred bytes many times a second. (It was 8 MiB at 1 MiB/s against a 1 s
// timeout, which failed under a parallel load of 10: a stall of the proxy or
// the reader over 1 s is a dead peer by that measure.)
func TestSlowLargeMessageIsNotADeadPeer(t *testing.T) {
	if testing.Short() {
		t.Skip("1 MiB at 64 KiB/s takes 16 s")
	}
	const size = 1 << 20
	payload := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		done := make(chan struct{})
		go func() { wstest.Drain(c, nil); close(done) }() // answers pings meanwhile
		c.WriteMessage(websocket.BinaryMessage, payload)
		<-done
	})
	px := newProxy(t, srv.Addr())
	px.SetBandwidth(64 << 10)
	ev := newEvents()
	got := make(chan []byte, 1)
	c, err := wspool.NewClient("ws://"+px.Addr()+"/", func(_ context.Context, m wspool.Message) error {
		got <- m.Clone().Data
		return nil
	}, wspool.WithPingInterval(time.Second), wspool.WithPongTimeout(4*time.Second), ev.option())
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	data := recv(t, got, 2*time.Minute, "the 1 MiB message")
	if !bytes.Equal(data, payload) {
		t.Fatalf("message corrupted: %d bytes", len(data))
	}
	if n := ev.count(wspool.StateBackingOff); n != 0 {
		t.Fatalf("%d disconnects while a large message trickled in: %v", n, ev.lastCause(wspool.StateBackingOff))
	}
}

func TestSlowHandlerIsNotADeadPeer(t *testing.T) {
	n := 5
	if testing.Short() {
		n = 3 // still 2.7 s of handler work, 9 pong timeouts
	}
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		done := make(chan struct{})
		go func() { wstest.Drain(c, nil); close(done) }()
		for i := 0; i < n; i++ {
			c.WriteMessage(websocket.TextMessage, []byte{byte('0' + i)})
		}
		<-done
	})
	const pong = 300 * time.Millisecond
	for _, queued := range []bool{false, true} {
		t.Run(map[bool]string{false: "direct", true: "queue"}[queued], func(t *testing.T) {
			ev := newEvents()
			var seen []byte
			var mu sync.Mutex
			opts := []wspool.Option{wspool.WithPingInterval(pong), wspool.WithPongTimeout(pong), ev.option()}
			if queued {
				opts = append(opts, wspool.WithQueue(wspool.Queue{Messages: 1}))
			}
			c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
				time.Sleep(3 * pong) // the handler's own work, 3x the pong timeout
				mu.Lock()
				seen = append(seen, m.Data[0])
				mu.Unlock()
				return nil
			}, opts...)
			if err != nil {
				t.Fatal(err)
			}
			runClient(t, c)
			waitFor(t, 20*time.Second, "all messages handled", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(seen) == n
			})
			if string(seen) != "01234"[:n] {
				t.Fatalf("handled %q", seen)
			}
			if k := ev.count(wspool.StateBackingOff); k != 0 {
				t.Fatalf("%d disconnects with a slow handler: %v", k, ev.lastCause(wspool.StateBackingOff))
			}
		})
	}
}

func TestStaleDataWatchdog(t *testing.T) {
	srv := newServer(t, wstest.Drain) // answers pings, never publishes
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil,
		wspool.WithPingInterval(100*time.Millisecond), wspool.WithPongTimeout(100*time.Millisecond),
		wspool.WithStaleTimeout(400*time.Millisecond), ev.option())
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	ev.waitCount(t, wspool.StateBackingOff, 1, 5*time.Second)
	if cause := ev.lastCause(wspool.StateBackingOff); !errors.Is(cause, wspool.ErrStaleData) {
		t.Fatalf("cause %v, want ErrStaleData", cause)
	}
	ev.waitCount(t, wspool.StateConnected, 2, 5*time.Second)
	if s := c.Stats(); s.RTT <= 0 || s.SmoothedRTT <= 0 {
		t.Fatalf("RTT not measured: %v / %v", s.RTT, s.SmoothedRTT)
	}
}

func TestStaleWatchdogQuietWhileDataFlows(t *testing.T) {
	srv := newServer(t, ticker) // a message every 5ms
	ev := newEvents()
	// Data every 5ms against a 1s timeout: a generous margin for a loaded machine.
	c, err := wspool.NewClient(srv.URL("/"), nil, wspool.WithStaleTimeout(time.Second), ev.option())
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	ev.waitCount(t, wspool.StateConnected, 1, 5*time.Second)
	before := c.Stats().MessagesIn
	waitFor(t, 20*time.Second, "400 more messages", func() bool { return c.Stats().MessagesIn > before+400 })
	if k := ev.count(wspool.StateBackingOff); k != 0 {
		t.Fatalf("stale watchdog fired while data flowed: %v", ev.lastCause(wspool.StateBackingOff))
	}
}

func TestAppHeartbeatsPerFeed(t *testing.T) {
	var mu sync.Mutex
	counts := map[string]int{}
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		for {
			_, data, err := c.ReadMessage()
			if err != nil {
				return
			}
			if strings.HasPrefix(string(data), `{"op":"ping"`) || string(data) == "ping" {
				mu.Lock()
				counts[r.URL.Path]++
				mu.Unlock()
				c.WriteMessage(websocket.TextMessage, []byte("pong"))
			}
		}
	})
	p, err := wspool.NewPool()
	if err != nil {
		t.Fatal(err)
	}
	var delivered atomic.Int64
	isPong := func(m wspool.Message) bool { return string(m.Data) == "pong" }
	p.Add(srv.URL("/fast"), counter(&delivered), wspool.WithHeartbeat(wspool.Heartbeat{
		Interval: 40 * time.Millisecond,
		Message:  func() (wspool.MessageType, []byte) { return wspool.TextMessage, []byte(`{"op":"ping"}`) },
		IsReply:  isPong, DropReplies: true,
	}))
	p.Add(srv.URL("/slow"), counter(&delivered), wspool.WithHeartbeat(wspool.Heartbeat{
		Interval: 200 * time.Millisecond,
		Message:  func() (wspool.MessageType, []byte) { return wspool.TextMessage, []byte("ping") },
		IsReply:  isPong, DropReplies: true,
	}))
	runPool(t, p)
	waitFor(t, 10*time.Second, "5 slow heartbeats", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return counts["/slow"] >= 5
	})
	mu.Lock()
	fast, slow := counts["/fast"], counts["/slow"]
	mu.Unlock()
	// 5 slow beats span about 1s: the fast feed beats 5x as often (allow wide
	// slack for a loaded machine, but it must be clearly faster).
	if fast < 2*slow || fast > 8*slow {
		t.Fatalf("heartbeats fast=%d slow=%d, want about 5x", fast, slow)
	}
	if n := delivered.Load(); n != 0 {
		t.Fatalf("%d heartbeat replies reached handlers despite DropReplies", n)
	}
}

// TestHeartbeatDropRepliesWithoutIsReplyFails: DropReplies cannot apply
// without IsReply to recognise the replies; it is an error at construction
// (it was accepted and every reply reached the handler).
func TestHeartbeatDropRepliesWithoutIsReplyFails(t *testing.T) {
	msg := func() (wspool.MessageType, []byte) { return wspool.TextMessage, []byte("ping") }
	_, err := wspool.NewClient("ws://127.0.0.1:1/", nil, wspool.WithHeartbeat(wspool.Heartbeat{Interval: time.Second, Message: msg, DropReplies: true}))
	if !errors.Is(err, wspool.ErrInvalidOption) || !strings.Contains(err.Error(), "IsReply") {
		t.Fatalf("DropReplies without IsReply: NewClient = %v, want ErrInvalidOption naming IsReply", err)
	}
	if _, err := wspool.NewClient("ws://127.0.0.1:1/", nil, wspool.WithHeartbeat(wspool.Heartbeat{Interval: time.Second, Message: msg,
		IsReply: func(m wspool.Message) bool { return string(m.Data) == "pong" }, DropReplies: true})); err != nil {
		t.Fatalf("DropReplies with IsReply: %v", err)
	}
}

// TestMeasureBlackholeDetection measures detection times for the docs; it
// runs only with WSPOOL_MEASURE=1 (it takes minutes at the defaults):
//
//	WSPOOL_MEASURE=1 go test -run TestMeasureBlackholeDetection -v .
func TestMeasureBlackholeDetection(t *testing.T) {
	if os.Getenv("WSPOOL_MEASURE") == "" {
		t.Skip("set WSPOOL_MEASURE=1 to measure")
	}
	median := func(ds []time.Duration) time.Duration {
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	for _, tc := range []struct {
		name       string
		ping, pong time.Duration
		runs       int
	}{
		{"1s/1s", time.Second, time.Second, 9},
		{"defaults", wspool.DefaultPingInterval, wspool.DefaultPongTimeout, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ds []time.Duration
			for i := 0; i < tc.runs; i++ {
				t.Run(strconv.Itoa(i), func(t *testing.T) {
					// The peer dies at a random point of the ping cycle.
					phase := time.Duration(rand.Int64N(int64(tc.ping)))
					ds = append(ds, blackholeDetection(t, tc.ping, tc.pong, 2*(tc.ping+tc.pong), phase))
				})
			}
			slices.Sort(ds)
			t.Logf("ping %v, pong timeout %v: median %v, min %v, max %v over %d runs", tc.ping, tc.pong, median(ds), ds[0], ds[len(ds)-1], len(ds))
		})
	}
}

// TestHeartbeatMessageDoesNotHoldReconnect: Heartbeat.Message is user code
// and runs without the heartbeat's lock, so a Message func that blocks never
// holds up the end of its connection and the reconnect. Before, it ran under
// that lock, which the reader takes when its connection ends: the feed
// stayed wedged until Message returned.
func TestHeartbeatMessageDoesNotHoldReconnect(t *testing.T) {
	inMessage := make(chan struct{})
	release := make(chan struct{})
	var conns atomic.Int64
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		if conns.Add(1) == 1 {
			gone, stop := wstest.ReadInBackground(c)
			defer stop()
			select {
			case <-inMessage: // Message is blocked: drop the connection under it
			case <-gone:
			}
			return
		}
		wstest.Drain(c, r)
	})
	var calls atomic.Int64
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil, ev.option(), wspool.WithBackoff(10*time.Millisecond, 50*time.Millisecond),
		wspool.WithHeartbeat(wspool.Heartbeat{Interval: 20 * time.Millisecond, Message: func() (wspool.MessageType, []byte) {
			if calls.Add(1) == 1 {
				close(inMessage)
				<-release
			}
			return wspool.TextMessage, []byte("hb")
		}}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	recv(t, inMessage, 10*time.Second, "Heartbeat.Message")
	ev.waitCount(t, wspool.StateConnected, 2, 10*time.Second) // reconnected while Message still blocks
	close(release)
}

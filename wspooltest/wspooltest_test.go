package wspooltest_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/leakcheck"
	"github.com/wspool/wspool/wspooltest"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

func newServer(t *testing.T, script func(*wspooltest.Conn)) *wspooltest.Server {
	t.Helper()
	s, err := wspooltest.NewServer(script)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func newProxy(t *testing.T, target string) *wspooltest.Proxy {
	t.Helper()
	p, err := wspooltest.NewProxy(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// runClient runs a client until the test ends; changes receives every state
// change (the channel is large enough for any test here).
func runClient(t *testing.T, url string, h wspool.Handler, opts ...wspool.Option) (*wspool.Client, <-chan wspool.StateChange) {
	t.Helper()
	changes := make(chan wspool.StateChange, 1000)
	opts = append([]wspool.Option{
		wspool.WithBackoff(10*time.Millisecond, 50*time.Millisecond),
		wspool.WithOnStateChange(func(sc wspool.StateChange) {
			select {
			case changes <- sc:
			default:
			}
		}),
	}, opts...)
	c, err := wspool.NewClient(url, h, opts...)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); c.Run(context.Background()) }()
	t.Cleanup(func() { c.Close(); <-done })
	return c, changes
}

// waitState waits for a change to state to, returning it.
func waitState(t *testing.T, changes <-chan wspool.StateChange, to wspool.State) wspool.StateChange {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case sc := <-changes:
			if sc.To == to {
				return sc
			}
		case <-timeout:
			t.Fatalf("no change to %v within 10s", to)
		}
	}
}

// eventually waits up to 10s for cond.
func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ctx10(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// The script reads what OnConnect sent, answers, and closes with 1008: the
// client sees the answer and the close code.
func TestServerReadSendClose(t *testing.T) {
	srv := newServer(t, func(c *wspooltest.Conn) {
		_, sub, err := c.Read(context.Background())
		if err != nil {
			return
		}
		c.SendText("ack " + string(sub))
		c.Close(1008, "too many requests")
	})
	got := make(chan string, 10)
	_, changes := runClient(t, srv.URL("/x"), func(_ context.Context, m wspool.Message) error {
		got <- string(m.Data)
		return nil
	}, wspool.WithOnConnect(func(ctx context.Context, c *wspool.Conn) error {
		return c.Send(ctx, wspool.TextMessage, []byte("sub:a"))
	}))
	select {
	case m := <-got:
		if m != "ack sub:a" {
			t.Fatalf("got %q", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no answer")
	}
	sc := waitState(t, changes, wspool.StateBackingOff)
	if code := wspool.CloseStatus(sc.Err); code != 1008 {
		t.Fatalf("close status %d (%v), want 1008", code, sc.Err)
	}
}

// A frozen connection answers no ping: the client declares the peer dead.
// Messages the client sends meanwhile are still read; Read reports ErrClosed
// once the connection is gone.
func TestConnFreeze(t *testing.T) {
	srv := newServer(t, nil)
	c, changes := runClient(t, srv.URL("/x"), nil,
		wspool.WithPingInterval(50*time.Millisecond), wspool.WithPongTimeout(100*time.Millisecond))
	conn, err := srv.Accept(ctx10(t))
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, changes, wspool.StateConnected)
	conn.Freeze(true)
	if err := c.Send(ctx10(t), wspool.TextMessage, []byte("still read")); err != nil {
		t.Fatal(err)
	}
	sc := waitState(t, changes, wspool.StateBackingOff)
	if !errors.Is(sc.Err, wspool.ErrPongTimeout) {
		t.Fatalf("cause %v, want ErrPongTimeout", sc.Err)
	}
	if _, data, err := conn.Read(ctx10(t)); err != nil || string(data) != "still read" {
		t.Fatalf("Read = %q, %v", data, err)
	}
	<-conn.Done()
	if _, _, err := conn.Read(ctx10(t)); !errors.Is(err, wspooltest.ErrClosed) {
		t.Fatalf("Read after the end: %v, want ErrClosed", err)
	}
	if err := conn.SendText("late"); !errors.Is(err, wspooltest.ErrClosed) {
		t.Fatalf("Send after the end: %v, want ErrClosed", err)
	}
	if _, err := srv.Accept(ctx10(t)); err != nil { // the client came back
		t.Fatal(err)
	}
}

// LimitUpgrades answers upgrades over the limit with 429 and a Retry-After;
// Refuse answers every upgrade with its status.
func TestServerLimitAndRefuse(t *testing.T) {
	srv := newServer(t, nil)
	srv.LimitUpgrades(2, time.Minute)
	for i := 0; i < 3; i++ {
		ws, resp, err := websocket.DefaultDialer.Dial(srv.URL("/x"), nil)
		if i < 2 {
			if err != nil {
				t.Fatalf("dial %d: %v", i, err)
			}
			ws.Close()
			continue
		}
		if err == nil || resp == nil || resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "60" {
			t.Fatalf("dial over the limit: %v %+v", err, resp)
		}
	}
	srv.LimitUpgrades(0, 0)
	srv.Refuse(503, 1500*time.Millisecond)
	_, resp, err := websocket.DefaultDialer.Dial(srv.URL("/x"), nil)
	if err == nil || resp == nil || resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "2" {
		t.Fatalf("refused dial: %v %+v", err, resp)
	}
	srv.Refuse(0, 0)
	ws, _, err := websocket.DefaultDialer.Dial(srv.URL("/x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ws.Close()
	eventually(t, func() bool { return srv.Accepted() == 3 }) // counted just after the 101
	if srv.Handshakes() != 5 || srv.Accepted() != 3 {
		t.Fatalf("handshakes %d accepted %d, want 5 and 3", srv.Handshakes(), srv.Accepted())
	}
}

// Stop drops every connection and refuses new ones; Start on the same port
// lets the client back in.
func TestServerStopStart(t *testing.T) {
	srv := newServer(t, nil)
	_, changes := runClient(t, srv.URL("/x"), nil)
	waitState(t, changes, wspool.StateConnected)
	srv.Stop()
	waitState(t, changes, wspool.StateBackingOff)
	waitState(t, changes, wspool.StateBackingOff) // a refused dial
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	waitState(t, changes, wspool.StateConnected)
	// One open connection: the first may have been dropped while still being
	// registered (then it never counted as accepted).
	eventually(t, func() bool { return len(srv.Conns()) == 1 && srv.Handshakes() >= 2 })
}

// Skip leaves numbers out of the live stream; a connection resuming from
// before them gets them.
func TestStreamSkipAndResume(t *testing.T) {
	st := wspooltest.NewStream(2 * time.Millisecond)
	t.Cleanup(st.Close)
	srv := newServer(t, st.Serve)
	ws, _, err := websocket.DefaultDialer.Dial(srv.URL("/s"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	next := func(ws *websocket.Conn) uint64 {
		_, data, err := ws.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.ParseUint(string(data), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	last := next(ws)
	st.Skip("/s", 3)
	var gapAt uint64
	for i := 0; i < 100 && gapAt == 0; i++ {
		n := next(ws)
		if n != last+1 {
			if n != last+4 {
				t.Fatalf("after %d came %d, want a gap of 3", last, n)
			}
			gapAt = last + 1
		}
		last = n
	}
	if gapAt == 0 {
		t.Fatal("no gap in 100 messages")
	}
	ws2, _, err := websocket.DefaultDialer.Dial(srv.URL("/s?from="+strconv.FormatUint(gapAt-1, 10)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws2.Close()
	ws2.SetReadDeadline(time.Now().Add(10 * time.Second))
	for want := gapAt - 1; want < gapAt+5; want++ {
		if n := next(ws2); n != want {
			t.Fatalf("resumed stream: got %d, want %d", n, want)
		}
	}
	if st.Head("/s") < gapAt+4 {
		t.Fatalf("head %d", st.Head("/s"))
	}
}

// Reset breaks every proxied connection (the client redials); Refuse resets
// new ones at once.
func TestProxyResetRefuse(t *testing.T) {
	srv := newServer(t, func(c *wspooltest.Conn) { c.SendText("hi"); <-c.Done() })
	proxy := newProxy(t, srv.Addr())
	_, changes := runClient(t, "ws://"+proxy.Addr()+"/x", nil)
	waitState(t, changes, wspool.StateConnected)
	if proxy.Conns() != 1 {
		t.Fatalf("proxy has %d connections", proxy.Conns())
	}
	proxy.Refuse(true)
	proxy.Reset()
	waitState(t, changes, wspool.StateBackingOff)
	waitState(t, changes, wspool.StateBackingOff) // refused
	proxy.Refuse(false)
	waitState(t, changes, wspool.StateConnected)
	eventually(t, func() bool { return srv.Accepted() == 2 })
}

// Latency delays a round trip by at least twice the one-way delay; Throttle
// makes a 12,000-byte message take at least about half a second at 20,000
// bytes per second. (Lower bounds only: the proxy cannot be faster than its
// settings, whatever the machine's load.)
func TestProxyLatencyThrottle(t *testing.T) {
	srv := newServer(t, func(c *wspooltest.Conn) {
		for {
			_, data, err := c.Read(context.Background())
			if err != nil {
				return
			}
			if string(data) == "big" {
				data = make([]byte, 12000)
			}
			c.Send(websocket.BinaryMessage, data)
		}
	})
	proxy := newProxy(t, srv.Addr())
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+proxy.Addr()+"/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.SetReadDeadline(time.Now().Add(20 * time.Second))
	roundTrip := func(msg string) time.Duration {
		start := time.Now()
		if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := ws.ReadMessage(); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	proxy.Latency(100 * time.Millisecond)
	if d := roundTrip("x"); d < 200*time.Millisecond {
		t.Fatalf("round trip with 100ms latency took %v", d)
	}
	proxy.Latency(0)
	proxy.Throttle(20000)
	if d := roundTrip("big"); d < 400*time.Millisecond {
		t.Fatalf("12,000 bytes at 20,000 B/s took %v", d)
	}
	proxy.Throttle(0)
}

// dialStream dials a Stream's server with a raw gorilla client.
func dialStream(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	return ws
}

func readUpdate(t *testing.T, ws *websocket.Conn) wspooltest.Update {
	t.Helper()
	var u wspooltest.Update
	if err := ws.ReadJSON(&u); err != nil {
		t.Fatal(err)
	}
	return u
}

// waitConns waits until the stream of path has n connections.
func waitConns(t *testing.T, st *wspooltest.Stream, path string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(st.Conns(path)) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections, want %d", len(st.Conns(path)), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// With Subscribe, data flows only after the client subscribed and was
// acknowledged, live from then on, and stops after unsubscribe's ack.
func TestStreamSubscribeAndAck(t *testing.T) {
	st := wspooltest.NewStream(0, wspooltest.Updates(wspool.SingleNumber, 5, 1), wspooltest.Subscribe())
	t.Cleanup(st.Close)
	srv := newServer(t, st.Serve)
	ws := dialStream(t, srv.URL("/s"))
	waitConns(t, st, "/s", 1)
	st.Publish("/s", 3) // before the subscription: not sent
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"op":"subscribe","id":7}`)); err != nil {
		t.Fatal(err)
	}
	_, ack, err := ws.ReadMessage()
	if err != nil || string(ack) != `{"op":"ack","id":7}` {
		t.Fatalf("ack %q, %v", ack, err)
	}
	st.Publish("/s", 2)
	if u := readUpdate(t, ws); u.Last != 4 {
		t.Fatalf("first update after subscribing: %d, want 4", u.Last)
	}
	readUpdate(t, ws)
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"op":"unsubscribe","id":8}`)); err != nil {
		t.Fatal(err)
	}
	if _, ack, err := ws.ReadMessage(); err != nil || string(ack) != `{"op":"ack","id":8}` {
		t.Fatalf("ack %q, %v", ack, err)
	}
	st.Publish("/s", 2)
	ws.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, data, err := ws.ReadMessage(); err == nil {
		t.Fatalf("after unsubscribing: %q", data)
	}
}

// With MessageLimit a client that sends too fast is closed with 1008.
func TestStreamMessageLimitCloses1008(t *testing.T) {
	st := wspooltest.NewStream(0, wspooltest.MessageLimit(5, time.Minute))
	t.Cleanup(st.Close)
	srv := newServer(t, st.Serve)
	ws := dialStream(t, srv.URL("/s"))
	for i := range 6 {
		if err := ws.WriteMessage(websocket.TextMessage, []byte("hello")); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	_, _, err := ws.ReadMessage()
	if !websocket.IsCloseError(err, websocket.ClosePolicyViolation) {
		t.Fatalf("read after 6 messages: %v, want a 1008 close", err)
	}
}

// Updates in each shape number and link correctly; Restart starts a new
// epoch at 1; a lagging snapshot is older than the head; the snapshot's
// checksum is the state's.
func TestStreamUpdatesShapesRestartAndSnapshot(t *testing.T) {
	for _, shape := range []wspool.SequenceShape{wspool.SingleNumber, wspool.NumberRange, wspool.LinkedIDs} {
		t.Run(shape.String(), func(t *testing.T) {
			st := wspooltest.NewStream(0, wspooltest.Updates(shape, 8, 3))
			t.Cleanup(st.Close)
			srv := newServer(t, st.Serve)
			ws := dialStream(t, srv.URL("/s?from=1"))
			st.Publish("/s", 10)
			var prev wspooltest.Update
			for prev.Last != st.Head("/s") {
				u := readUpdate(t, ws)
				switch shape {
				case wspool.LinkedIDs:
					if u.Prev != prev.Last || u.Last <= u.Prev+1 {
						t.Fatalf("id %d links to %d after %d (ids should skip)", u.Last, u.Prev, prev.Last)
					}
				default:
					if u.First != prev.Last+1 || u.Last < u.First {
						t.Fatalf("update %d..%d after %d", u.First, u.Last, prev.Last)
					}
				}
				prev = u
			}
			if prev.Checksum != wspooltest.Checksum(st.State("/s")) {
				t.Fatal("the last update's checksum is not the state's")
			}
			st.SnapshotLag("/s", 4)
			if s := st.Snapshot("/s"); s.Last >= st.Head("/s") || s.Checksum != wspooltest.Checksum(s.State) {
				t.Fatalf("lagging snapshot at %d, head %d", s.Last, st.Head("/s"))
			}
			st.Restart("/s")
			st.Publish("/s", 1)
			if u := readUpdate(t, ws); u.Epoch != 2 || u.Last != st.Head("/s") {
				t.Fatalf("after Restart: update %d of epoch %d", u.Last, u.Epoch)
			}
		})
	}
}

// LimitMessages sets one stream's limit in place of MessageLimit's; the
// connection closed for it is recorded in LimitCloses, and Sent counts the
// data written (acks not included).
func TestStreamLimitMessagesPerStreamRecorded(t *testing.T) {
	st := wspooltest.NewStream(0, wspooltest.MessageLimit(100, time.Minute))
	t.Cleanup(st.Close)
	srv := newServer(t, st.Serve)
	st.LimitMessages("/tight", 3, time.Minute)
	loose := dialStream(t, srv.URL("/loose"))
	tight := dialStream(t, srv.URL("/tight"))
	for i := range 4 {
		for _, ws := range []*websocket.Conn{loose, tight} {
			if err := ws.WriteMessage(websocket.TextMessage, []byte("x")); err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
		}
	}
	if _, _, err := tight.ReadMessage(); !websocket.IsCloseError(err, websocket.ClosePolicyViolation) {
		t.Fatalf("/tight after 4 messages: %v, want a 1008 close", err)
	}
	cuts := st.LimitCloses()
	if len(cuts) != 1 || cuts[0].Path != "/tight" || cuts[0].Count != 4 || cuts[0].Limit != 3 || cuts[0].Per != time.Minute {
		t.Fatalf("LimitCloses %+v, want one for /tight: 4 over 3 per minute", cuts)
	}
	waitConns(t, st, "/loose", 1)
	st.Publish("/loose", 2)
	for want := 1; want <= 2; want++ {
		if _, data, err := loose.ReadMessage(); err != nil || string(data) != strconv.Itoa(want) {
			t.Fatalf("/loose got %q, %v; want %d", data, err, want)
		}
	}
	if n := st.Sent("/loose"); n != 2 {
		t.Fatalf("Sent(/loose) = %d, want 2", n)
	}
}

// A resume point in an epoch that is over (?from=N&epoch=E after a Restart)
// starts at the current epoch's first update; one in the current epoch
// resumes as usual.
func TestStreamResumeFromAnOldEpoch(t *testing.T) {
	st := wspooltest.NewStream(0, wspooltest.Updates(wspool.SingleNumber, 4, 2))
	t.Cleanup(st.Close)
	srv := newServer(t, st.Serve)
	st.Publish("/s", 20)
	st.Restart("/s")
	st.Publish("/s", 5)
	old := dialStream(t, srv.URL("/s?from=21&epoch=1"))
	if u := readUpdate(t, old); u.Epoch != 2 || u.Last != 1 {
		t.Fatalf("resuming from epoch 1 after a restart: update %d of epoch %d, want 1 of 2", u.Last, u.Epoch)
	}
	cur := dialStream(t, srv.URL("/s?from=4&epoch=2"))
	if u := readUpdate(t, cur); u.Epoch != 2 || u.Last != 4 {
		t.Fatalf("resuming in the current epoch: update %d of epoch %d, want 4 of 2", u.Last, u.Epoch)
	}
}

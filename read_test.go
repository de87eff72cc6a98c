package wspool_test

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/exchange"
	"github.com/wspool/wspool/internal/wstest"
)

// Every connection is read from the moment its handshake completes, OnConnect
// included (read.go). These tests cover what that changes: a close while
// OnConnect runs, the messages held meanwhile, the rotation's replacement
// and standby connections.

// A close 1008 that arrives while a paced OnConnect is still sending is read
// at once: OnConnect's context ends (no more writes), the attempt fails with
// the server's CloseError, and the key's admission penalty holds the redial.
// Before, nothing read during OnConnect: the feed wrote on for about two
// seconds until the server gave up, failed with "broken pipe", applied no
// penalty and redialled at once.
func TestCloseDuringOnConnectIsRead(t *testing.T) {
	const (
		penalty = 600 * time.Millisecond
		sends   = 200 // paced at one per 20 ms: 4 s if nothing stops them
	)
	ex := startExchange(t, exchange.Config{MsgLimit: 3, MsgWindow: time.Second})
	ev := newEvents()
	pool, err := wspool.NewPool(wspool.WithAdmission(wspool.Admission{Penalty: penalty}), wspool.WithBackoff(10*time.Millisecond, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	var (
		conns     atomic.Int64
		sent      atomic.Int64
		sendErr   = make(chan error, 1)
		secondDue = make(chan time.Time, 1)
	)
	_, err = pool.Add(ex.URL("/"), nil, ev.option(),
		wspool.WithSendPacing(wspool.SendPacing{Messages: 1, Per: 20 * time.Millisecond}),
		wspool.WithOnConnectTimeout(30*time.Second),
		wspool.WithOnConnect(func(ctx context.Context, cn *wspool.Conn) error {
			if conns.Add(1) > 1 {
				secondDue <- time.Now()
				return nil
			}
			for i := range sends { // too fast for the exchange: it closes with 1008
				if err := cn.Send(ctx, wspool.TextMessage, []byte(fmt.Sprint("m", i))); err != nil {
					sendErr <- err
					return err
				}
				sent.Add(1)
			}
			sendErr <- nil
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	runPoolBG(t, pool)
	if err := recv(t, sendErr, 20*time.Second, "the first OnConnect's end"); err == nil {
		t.Fatalf("OnConnect sent all %d messages: the 1008 was not read while it ran", sends)
	}
	// One per 20 ms: the exchange closes after the 4th; a few more may be
	// on their way by then, but not seconds' worth.
	if n := sent.Load(); n > 50 {
		t.Errorf("OnConnect sent %d messages before it stopped: the 1008 was read late", n)
	}
	second := recv(t, secondDue, 20*time.Second, "the redial")
	var failed *wspool.StateChange
	for _, sc := range ev.snapshot() {
		if sc.To == wspool.StateBackingOff {
			failed = &sc
			break
		}
	}
	if failed == nil {
		t.Fatalf("no failed attempt: %v", ev.snapshot())
	}
	if code := wspool.CloseStatus(failed.Err); code != wspool.CloseCodePolicyViolation {
		t.Fatalf("the attempt failed with %v (close status %d), want the server's 1008", failed.Err, code)
	}
	// The penalty starts as the failure is handled, just before the state
	// change is reported.
	if wait := second.Sub(failed.At); wait < penalty*9/10 {
		t.Fatalf("the redial came %v after the 1008, want at least the key's penalty %v", wait, penalty)
	}
	if ex.Closed1008.Load() != 1 {
		t.Fatalf("the exchange closed %d connections with 1008, want 1", ex.Closed1008.Load())
	}
}

// Messages the server sends right after the upgrade are read while
// OnConnect runs and held (at most 256 messages or 1 MiB; past that the
// connection is not read): Conn.ReadMessage takes the first, and the
// handler gets every other one once OnConnect returns, in order, none lost
// or doubled. Before, nothing read during OnConnect.
func TestHeldMessagesDeliveredInOrder(t *testing.T) {
	const total = 300 // more than the hold buffer's 256
	wrote := make(chan struct{})
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		pad := strings.Repeat("x", 500)
		for i := range total {
			if err := c.WriteMessage(websocket.TextMessage, []byte(strconv.Itoa(i)+" "+pad)); err != nil {
				return
			}
		}
		close(wrote)
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	})
	var (
		mu   sync.Mutex
		got  []int
		read atomic.Int64 // messages read (Stats.MessagesIn) when OnConnect returned
		cl   atomic.Pointer[wspool.Client]
	)
	onConnect := func(ctx context.Context, cn *wspool.Conn) error {
		m, err := cn.ReadMessage(ctx)
		if err != nil {
			return err
		}
		if n, _, _ := strings.Cut(string(m.Data), " "); n != "0" {
			return fmt.Errorf("ReadMessage returned %q, want message 0", n)
		}
		select {
		case <-wrote:
		case <-ctx.Done():
			return ctx.Err()
		}
		// The reader holds 256 and has one more in hand, then stops
		// reading until OnConnect returns.
		c := cl.Load()
		if err := waitForCtx(ctx, func() bool { return c.Stats().MessagesIn >= 1+256+1 }); err != nil {
			return fmt.Errorf("the reader did not fill the hold buffer during OnConnect (read %d): %w", c.Stats().MessagesIn, err)
		}
		read.Store(c.Stats().MessagesIn)
		return nil
	}
	c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
		n, _, _ := strings.Cut(string(m.Data), " ")
		i, _ := strconv.Atoi(n)
		mu.Lock()
		got = append(got, i)
		mu.Unlock()
		return nil
	}, wspool.WithOnConnect(onConnect), wspool.WithMaxAttempts(1))
	if err != nil {
		t.Fatal(err)
	}
	cl.Store(c)
	runClient(t, c)
	waitFor(t, 20*time.Second, "every message", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= total-1
	})
	if n := read.Load(); n != 1+256+1 {
		t.Errorf("%d messages read while OnConnect ran, want 258: 1 taken, 256 held, 1 in hand (the bound)", n)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, n := range got {
		if n != i+1 {
			t.Fatalf("message %d delivered at position %d (want %d): %v", n, i, i+1, got[:i+1])
		}
	}
	if len(got) != total-1 {
		t.Fatalf("%d messages delivered, want %d", len(got), total-1)
	}
	if s := c.Stats(); s.MessagesIn != total || s.Connects != 1 {
		t.Fatalf("stats %+v: want %d messages in on one connection", s, total)
	}
}

// waitForCtx polls cond until it holds or ctx ends.
func waitForCtx(ctx context.Context, cond func() bool) error {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// A rotation whose replacement receives data while its OnConnect runs keeps
// the stream in order with no gap: what the new connection read meanwhile is
// held until the old one has been drained to its end, then delivered before
// the new one's later messages.
func TestRotationHeldMessagesKeepOrder(t *testing.T) {
	// Every connection gets the same numbered stream, one message per
	// millisecond, from its upgrade on; the test's OnConnect waits on every
	// connection after the first until it has been sent 50 messages.
	var (
		seq    atomic.Uint64
		smu    sync.Mutex
		subs   = map[int]chan uint64{}
		nextID int
		sentTo = map[int]*atomic.Int64{}
	)
	tick := time.NewTicker(time.Millisecond)
	stopTick := make(chan struct{})
	var tickDone sync.WaitGroup
	tickDone.Add(1)
	go func() {
		defer tickDone.Done()
		for {
			select {
			case <-stopTick:
				return
			case <-tick.C:
			}
			n := seq.Add(1)
			smu.Lock()
			for _, ch := range subs {
				select {
				case ch <- n:
				default: // a connection that stopped reading misses nothing it could use: the test fails on the gap
				}
			}
			smu.Unlock()
		}
	}()
	t.Cleanup(func() { close(stopTick); tick.Stop(); tickDone.Wait() })
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		ch := make(chan uint64, 4096)
		smu.Lock()
		nextID++
		id := nextID
		subs[id] = ch
		cnt := &atomic.Int64{}
		sentTo[id] = cnt
		smu.Unlock()
		defer func() {
			smu.Lock()
			delete(subs, id)
			smu.Unlock()
		}()
		_ = c.WriteMessage(websocket.TextMessage, []byte("conn "+strconv.Itoa(id)))
		gone, release := wstest.ReadInBackground(c)
		defer release()
		for {
			select {
			case <-gone:
				return
			case n := <-ch:
				if err := c.WriteMessage(websocket.TextMessage, []byte(strconv.FormatUint(n, 10))); err != nil {
					return
				}
				cnt.Add(1)
			}
		}
	})
	var (
		mu   sync.Mutex
		seqs []uint64
		held atomic.Int64 // connections whose OnConnect saw 50 messages sent to it
	)
	last := func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		if len(seqs) == 0 {
			return 0
		}
		return seqs[len(seqs)-1]
	}
	c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
		s, _ := strconv.ParseUint(string(m.Data), 10, 64)
		mu.Lock()
		seqs = append(seqs, s)
		mu.Unlock()
		return nil
	},
		wspool.WithOnConnect(func(ctx context.Context, cn *wspool.Conn) error {
			m, err := cn.ReadMessage(ctx)
			if err != nil {
				return err
			}
			id, err := strconv.Atoi(strings.TrimPrefix(string(m.Data), "conn "))
			if err != nil {
				return fmt.Errorf("unexpected %q", m.Data)
			}
			if id == 1 {
				return nil
			}
			smu.Lock()
			cnt := sentTo[id]
			smu.Unlock()
			if err := waitForCtx(ctx, func() bool { return cnt.Load() >= 50 }); err != nil {
				return err
			}
			held.Add(1)
			return nil
		}),
		wspool.WithMaxConnectionAge(400*time.Millisecond),
		wspool.WithDuplicateFilter(func(m wspool.Message) bool {
			s, _ := strconv.ParseUint(string(m.Data), 10, 64)
			return s <= last()
		}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	waitFor(t, 30*time.Second, "3 rotations", func() bool { return c.Stats().Rotations >= 3 })
	target := last() + 50
	waitFor(t, 10*time.Second, "more messages after the last rotation", func() bool { return last() > target })
	s := c.Stats()
	mu.Lock()
	defer mu.Unlock()
	checkConsecutive(t, seqs, s.Rotations)
	if s.Disconnects != s.Rotations || s.State != wspool.StateConnected || held.Load() < 3 {
		t.Fatalf("stats %+v, %d replacements with held data: every disconnect should be a rotation", s, held.Load())
	}
	t.Logf("%d rotations, %d messages in sequence, %d duplicates dropped", s.Rotations, len(seqs), s.Duplicates)
}

// A standby connection closed with 1008 while its paced OnConnect is still
// sending reads the close at once: its OnConnect's context ends and its
// attempt fails with the server's CloseError (Stats.Standby's LastError).
// Before, the standby connection wrote on until the server gave up and
// failed with a write error.
func TestStandbyCloseDuringOnConnectIsRead(t *testing.T) {
	primary := newServer(t, func(c *websocket.Conn, r *http.Request) {
		_ = c.WriteMessage(websocket.TextMessage, []byte("primary"))
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	})
	var closed atomic.Int64
	standby := newServer(t, func(c *websocket.Conn, r *http.Request) {
		_ = c.WriteMessage(websocket.TextMessage, []byte("standby"))
		for n := 0; ; n++ {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
			if n == 3 && closed.Add(1) == 1 {
				_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.ClosePolicyViolation, "too many requests"), time.Now().Add(time.Second))
				// A close handshake: read until the client answers (or
				// two seconds pass), as an exchange does.
				_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
				for {
					if _, _, err := c.ReadMessage(); err != nil {
						return
					}
				}
			}
		}
	})
	var sent atomic.Int64
	sendErr := make(chan error, 1)
	c, err := wspool.NewClient(primary.URL("/"), nil,
		wspool.WithSequence(wspool.Sequence{Extract: func(m wspool.Message) (string, uint64, bool) { return "", 0, false }}),
		wspool.WithStandby(wspool.Standby{Connections: 1, URLs: []string{standby.URL("/")}}),
		wspool.WithSendPacing(wspool.SendPacing{Messages: 1, Per: 20 * time.Millisecond}),
		wspool.WithOnConnectTimeout(30*time.Second),
		wspool.WithBackoff(time.Second, 2*time.Second),
		wspool.WithOnConnect(func(ctx context.Context, cn *wspool.Conn) error {
			m, err := cn.ReadMessage(ctx)
			if err != nil || string(m.Data) != "standby" {
				return err
			}
			if closed.Load() > 0 {
				return nil // the redial
			}
			for i := range 200 {
				if err := cn.Send(ctx, wspool.TextMessage, []byte(fmt.Sprint("m", i))); err != nil {
					sendErr <- err
					return err
				}
				sent.Add(1)
			}
			sendErr <- nil
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	if err := recv(t, sendErr, 20*time.Second, "the standby OnConnect's end"); err == nil {
		t.Fatal("the standby's OnConnect sent all 200 messages: the 1008 was not read while it ran")
	}
	if n := sent.Load(); n > 50 {
		t.Errorf("the standby's OnConnect sent %d messages before it stopped: the 1008 was read late", n)
	}
	var last error
	waitFor(t, 10*time.Second, "the standby's failure", func() bool {
		st := c.Stats().Standby
		last = st[0].LastError
		return last != nil
	})
	if code := wspool.CloseStatus(last); code != wspool.CloseCodePolicyViolation {
		t.Fatalf("the standby attempt failed with %v (close status %d), want the server's 1008", last, code)
	}
}

// TestFailedOnConnectReportsHeldMessages: messages a connection read while
// its OnConnect ran are never delivered when that OnConnect fails, and they
// are reported: counted in Stats.DiscardedAtConnect, so that every message
// read is delivered or counted (the soak's inbound accounting found 13-68 such
// messages per feed read and neither delivered nor counted).
func TestFailedOnConnectReportsHeldMessages(t *testing.T) {
	const n = 20
	var conns atomic.Int64
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		if conns.Add(1) == 1 {
			for i := range n {
				if c.WriteMessage(websocket.TextMessage, []byte(strconv.Itoa(i))) != nil {
					return
				}
			}
		}
		wstest.Drain(c, r)
	})
	var delivered atomic.Int64
	var c *wspool.Client
	c, err := wspool.NewClient(srv.URL("/"), func(context.Context, wspool.Message) error {
		delivered.Add(1)
		return nil
	}, wspool.WithBackoff(10*time.Millisecond, 20*time.Millisecond),
		wspool.WithOnConnect(func(ctx context.Context, _ *wspool.Conn) error {
			if conns.Load() > 1 {
				return nil
			}
			// The first attempt fails once its connection has read all n
			// (waitForCtx: t.Fatal must not run on the library's goroutine).
			if err := waitForCtx(ctx, func() bool { return c.Stats().MessagesIn >= n }); err != nil {
				return err
			}
			return fmt.Errorf("login refused")
		}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	waitFor(t, 10*time.Second, "the second connection", func() bool { return c.State() == wspool.StateConnected })
	st := c.Stats()
	if delivered.Load() != 0 || st.MessagesIn != n || st.DiscardedAtConnect != n || st.Dropped != 0 {
		t.Fatalf("read %d, delivered %d, discarded %d, dropped %d: want the %d messages of the failed attempt read and counted as discarded", st.MessagesIn, delivered.Load(), st.DiscardedAtConnect, st.Dropped, n)
	}
}

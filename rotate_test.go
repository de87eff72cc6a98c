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
	"github.com/wspool/wspool/internal/wstest"
)

// TestRotateOfAConnectionNotYetReadEndsWithIt: a Rotate called on the
// connection a rotation has just switched to, before the reader reaches it,
// ends when that connection dies; it never switches Send to a connection of
// its own after the feed has reconnected.
//
// Found by the all-features soak
// (WSPOOL_SOAK_SEED=666048389: "f074: connection 4275 after 4297", two
// OnConnects of one feed overlapping). With WithMaxConnectionAge, a Rotate
// called on the connection a rotation has just switched to, while the
// reader still drains the old one, started a rotator on it; when the reader
// reached the new connection it armed the timed rotation over it, so the
// connection's end stopped only the timed one. The orphan rotation went on
// while the feed reconnected, and on success published its connection as
// the one Send writes on: a connection nobody reads, never closed, with the
// feed's sends going into it.
func TestRotateOfAConnectionNotYetReadEndsWithIt(t *testing.T) {
	var (
		mu     sync.Mutex
		conns  []*websocket.Conn
		holdUp = make(chan struct{}) // the first connection ignores our close frame until the end
	)
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		mu.Lock()
		conns = append(conns, c)
		n := len(conns)
		mu.Unlock()
		if n == 1 {
			<-holdUp // never reads: the client's close handshake waits its close timeout
			return
		}
		// "hi N": N is the order this handler registered in, which under
		// load need not be the client's dial order.
		if err := c.WriteMessage(websocket.TextMessage, []byte("hi "+strconv.Itoa(n))); err != nil {
			return
		}
		for { // echo
			typ, m, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(typ, m); err != nil {
				return
			}
		}
	})
	t.Cleanup(func() { close(holdUp) }) // before the server's Close, which waits for its handlers
	serverConn := func(i int) *websocket.Conn {
		mu.Lock()
		defer mu.Unlock()
		return conns[i-1]
	}
	var dials atomic.Int64
	inThird, releaseThird := make(chan struct{}), make(chan struct{})
	got := make(chan wspool.Message, 64)
	c, err := wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
		m.Data = append([]byte(nil), m.Data...)
		got <- m
		return nil
	},
		wspool.WithMaxConnectionAge(time.Hour),
		wspool.WithCloseTimeout(2*time.Second),
		wspool.WithOnConnectTimeout(time.Minute), // longer than the test
		wspool.WithOnConnect(func(ctx context.Context, _ *wspool.Conn) error {
			if dials.Add(1) == 3 { // the second rotation's connection
				close(inThird)
				select {
				case <-releaseThird:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	waitFor(t, 10*time.Second, "connected", func() bool { return c.State() == wspool.StateConnected })

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Rotate(ctx); err != nil { // to connection 2; connection 1 drains for its close timeout
		t.Fatalf("first Rotate: %v", err)
	}
	second := make(chan error, 1)
	go func() { second <- c.Rotate(ctx) }() // on connection 2, before its reader started
	recv(t, inThird, 10*time.Second, "the second rotation's OnConnect")
	// Connection 1 ends after its close timeout; the reader goes on with 2.
	// waitConn waits for a message of the client's connection id and
	// returns the server's registration number for it (from its "hi N").
	waitConn := func(id uint64) int {
		t.Helper()
		deadline := time.After(15 * time.Second)
		var seen []uint64
		for {
			select {
			case m := <-got:
				if m.ConnID == id {
					n, err := strconv.Atoi(strings.TrimPrefix(string(m.Data), "hi "))
					if err != nil {
						t.Fatalf("first message of connection %d: %q, want hi N", id, m.Data)
					}
					return n
				}
				seen = append(seen, m.ConnID)
			case <-deadline:
				t.Fatalf("no message from connection %d within 15s (messages from %v; %d OnConnects; stats %+v)", id, seen, dials.Load(), c.Stats())
			}
		}
	}
	n2 := waitConn(2)
	// Connection 2 dies: the feed reconnects (connection 4), and the
	// rotation that was replacing 2 must end with it.
	serverConn(n2).NetConn().Close()
	waitConn(4)
	close(releaseThird) // the second rotation's OnConnect would now succeed
	if err := recv(t, second, 10*time.Second, "the second Rotate to return"); err == nil {
		t.Fatal("the second Rotate switched after the connection it was replacing had died and the feed had reconnected")
	}
	// Send writes on the connection the feed reads: the echo comes back.
	if err := c.Send(ctx, wspool.TextMessage, []byte("probe")); err != nil {
		t.Fatalf("Send: %v", err)
	}
	for {
		m := recv(t, got, 10*time.Second, "the echo of a Send after the reconnect (written on a connection nobody reads?)")
		if string(m.Data) == "probe" {
			if m.ConnID != 4 {
				t.Fatalf("echo on connection %d, want 4", m.ConnID)
			}
			break
		}
	}
}

// publisher is an upstream that publishes one global sequence to every
// subscribed connection, like a real market-data feed.
type publisher struct {
	mu   sync.Mutex
	subs map[chan uint64]struct{}
	seq  uint64
}

func newPublisher(t *testing.T) *publisher {
	p := &publisher{subs: map[chan uint64]struct{}{}}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
			}
			p.mu.Lock()
			p.seq++
			for ch := range p.subs {
				select {
				case ch <- p.seq:
				default:
					t.Error("subscriber too slow; the test would see a gap")
				}
			}
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return p
}

func (p *publisher) handler(c *websocket.Conn, _ *http.Request) {
	if _, _, err := c.ReadMessage(); err != nil { // "sub"
		return
	}
	ch := make(chan uint64, 100000)
	p.mu.Lock()
	p.subs[ch] = struct{}{}
	p.mu.Unlock()
	// Acknowledge only once subscribed: what is published from now on reaches this connection.
	if err := c.WriteMessage(websocket.TextMessage, []byte("subscribed")); err != nil {
		return
	}
	defer func() { p.mu.Lock(); delete(p.subs, ch); p.mu.Unlock() }()
	readerDone := make(chan struct{})
	go func() { wstest.Drain(c, nil); close(readerDone) }()
	for {
		select {
		case <-readerDone:
			return
		case s := <-ch:
			if err := c.WriteMessage(websocket.TextMessage, strconv.AppendUint(nil, s, 10)); err != nil {
				return
			}
		}
	}
}

func TestRotationWithoutGap(t *testing.T) {
	pub := newPublisher(t)
	srv := newServer(t, pub.handler)
	var mu sync.Mutex
	var seqs []uint64
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
		// Gap-free rotation needs OnConnect to return only once the upstream
		// confirmed the subscription.
		wspool.WithOnConnect(func(ctx context.Context, cn *wspool.Conn) error {
			if err := cn.Send(ctx, wspool.TextMessage, []byte("sub")); err != nil {
				return err
			}
			m, err := cn.ReadMessage(ctx)
			if err != nil {
				return err
			}
			if string(m.Data) != "subscribed" {
				return fmt.Errorf("unexpected %q", m.Data)
			}
			return nil
		}),
		wspool.WithMaxConnectionAge(300*time.Millisecond),
		wspool.WithDuplicateFilter(func(m wspool.Message) bool {
			s, _ := strconv.ParseUint(string(m.Data), 10, 64)
			return s <= last()
		}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	waitFor(t, 20*time.Second, "3 rotations", func() bool { return c.Stats().Rotations >= 3 })
	target := last() + 50
	waitFor(t, 5*time.Second, "more messages after the last rotation", func() bool { return last() > target })
	s := c.Stats()
	mu.Lock()
	defer mu.Unlock()
	checkConsecutive(t, seqs, s.Rotations)
	if s.Disconnects != s.Rotations || s.State != wspool.StateConnected {
		t.Fatalf("stats %+v: every disconnect should be a rotation", s)
	}
	t.Logf("%d rotations, %d messages in sequence, %d duplicates dropped", s.Rotations, len(seqs), s.Duplicates)
}

// checkConsecutive fails t unless every number in seqs is one above the
// previous: no gap, duplicate or reorder across the rotations.
func checkConsecutive(t *testing.T, seqs []uint64, rotations int64) {
	t.Helper()
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			t.Fatalf("sequence broken at %d: %d after %d (rotations %d)", i, seqs[i], seqs[i-1], rotations)
		}
	}
}

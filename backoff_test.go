package wspool_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/wstest"
)

// Failure accounting (the table in doc.go): what counts as a failed attempt,
// what resets the backoff and what stops retrying, for the feed's own loop
// and for standby connections alike.

// backoffWaits returns the waits of every transition into BackingOff.
func backoffWaits(ev *events) []time.Duration {
	var waits []time.Duration
	for _, sc := range ev.snapshot() {
		if sc.To == wspool.StateBackingOff {
			waits = append(waits, sc.Wait)
		}
	}
	return waits
}

// TestRequestedReconnectIsNotAFailure: reconnects asked for on a healthy
// connection (Client.Reconnect, a handler's ErrReconnect) are not failed
// attempts: they neither count against WithMaxAttempts nor grow the backoff.
// Before, three Reconnect calls with every dial accepted ended a feed with
// WithMaxAttempts(3) ("too many failed attempts"), and the waits grew towards
// the 30 s cap while the connections were fine.
func TestRequestedReconnectIsNotAFailure(t *testing.T) {
	srv := newServer(t, wstest.Drain)
	ev := newEvents()
	const initial = 200 * time.Millisecond
	c, err := wspool.NewClient(srv.URL("/"), nil,
		wspool.WithMaxAttempts(2), wspool.WithBackoff(initial, 10*time.Second), ev.option())
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	for i := 1; i <= 5; i++ {
		ev.waitCount(t, wspool.StateConnected, i, 20*time.Second)
		if err := c.Reconnect(errors.New("resync")); err != nil {
			t.Fatalf("Reconnect %d: %v", i, err)
		}
	}
	ev.waitCount(t, wspool.StateConnected, 6, 20*time.Second)
	if st := c.State(); st == wspool.StateClosed {
		t.Fatalf("the feed ended after requested reconnects: %v", ev.lastCause(wspool.StateClosed))
	}
	for _, w := range backoffWaits(ev) {
		if w > initial*3/2 {
			t.Fatalf("a requested reconnect waited %v, want the reset backoff (at most 1.5 x %v): %v", w, initial, backoffWaits(ev))
		}
	}
}

// TestConnectionWithDataResetsBackoff: a connection that delivered data is
// not a failure, so a stream whose connection breaks every few moments is
// redialled after the initial backoff each time instead of waiting up to the
// cap (before: the backoff reset only after WithMinUptime, 10 s by default,
// and one five-message resync waited 35.7 s).
func TestConnectionWithDataResetsBackoff(t *testing.T) {
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		_ = c.WriteMessage(websocket.TextMessage, []byte("data"))
		// Then the connection breaks without a close frame.
		_ = c.UnderlyingConn().Close()
	})
	ev := newEvents()
	const initial = 100 * time.Millisecond
	c, err := wspool.NewClient(srv.URL("/"), nil,
		wspool.WithBackoff(initial, 10*time.Second), wspool.WithMaxAttempts(3), ev.option())
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	ev.waitCount(t, wspool.StateBackingOff, 7, 20*time.Second)
	waits := backoffWaits(ev)
	// Growing, the 7th wait would average 100ms x 1.5^6 = 1.1s, at least 570ms.
	for _, w := range waits {
		if w > initial*3/2 {
			t.Fatalf("a connection that delivered data was followed by a %v wait, want the reset backoff (at most 1.5 x %v): %v", w, initial, waits)
		}
	}
	if c.State() == wspool.StateClosed {
		t.Fatalf("connections that delivered data counted against WithMaxAttempts: %v", ev.lastCause(wspool.StateClosed))
	}
}

// TestEmptyConnectionsStillBackOff: a server that accepts and drops before
// sending anything still sees the waits grow (no hot loop), and such
// connections count against WithMaxAttempts.
func TestEmptyConnectionsStillBackOff(t *testing.T) {
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) { _ = c.UnderlyingConn().Close() })
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil,
		wspool.WithBackoff(20*time.Millisecond, 10*time.Second), wspool.WithMaxAttempts(6), ev.option())
	if err != nil {
		t.Fatal(err)
	}
	stop := runClient(t, c)
	select {
	case <-c.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the feed did not give up after 6 empty connections")
	}
	if err := stop(); !errors.Is(err, wspool.ErrMaxAttempts) {
		t.Fatalf("Run: %v, want ErrMaxAttempts after 6 empty connections", err)
	}
	waits := backoffWaits(ev)
	// Mean 20ms x 1.5^k ±50%: the 5th (k=4, mean 101ms) is at least 50ms,
	// more than the first can be (30ms).
	if len(waits) < 5 || waits[4] <= waits[0] {
		t.Fatalf("the backoff did not grow against empty connections: %v", waits)
	}
}

// TestPolicyCloseIsAFailure: a connection the upstream closed with 1008 is a
// failure even though it delivered data: the waits grow.
func TestPolicyCloseIsAFailure(t *testing.T) {
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		_ = c.WriteMessage(websocket.TextMessage, []byte("data"))
		_ = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.ClosePolicyViolation, "too many requests"))
	})
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil, wspool.WithBackoff(20*time.Millisecond, 10*time.Second), ev.option())
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	ev.waitCount(t, wspool.StateBackingOff, 6, 20*time.Second)
	waits := backoffWaits(ev)
	if waits[5] < 2*waits[0] || waits[5] < 60*time.Millisecond {
		t.Fatalf("the backoff did not grow after 1008 closes: %v", waits)
	}
}

// TestStandbyStopsWhenRetriesExhausted: a standby connection whose retries
// are exhausted (WithMaxAttempts) stops, reported, while the feed goes on;
// before, it redialled in a hot loop (about 1,000 dials a second against a
// refusing endpoint).
func TestStandbyStopsWhenRetriesExhausted(t *testing.T) {
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		gone, release := wstest.ReadInBackground(c) // answers the close frame: Close need not wait its timeout
		defer release()
		for {
			if c.WriteMessage(websocket.TextMessage, []byte("x")) != nil {
				return
			}
			select {
			case <-gone:
				return
			case <-time.After(20 * time.Millisecond): // the stream's pace
			}
		}
	})
	// The standby endpoint accepts TCP and closes at once: every handshake fails.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var accepted atomic.Int64
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			conn.Close()
		}
	}()
	errs := make(chan error, 8)
	c, err := wspool.NewClient(srv.URL("/"), nil,
		wspool.WithSequence(wspool.Sequence{Extract: func(wspool.Message) (string, uint64, bool) { return "", 0, false }}),
		wspool.WithStandby(wspool.Standby{Connections: 1, URLs: []string{"ws://" + ln.Addr().String() + "/"}}),
		wspool.WithMaxAttempts(3), wspool.WithBackoff(time.Millisecond, 2*time.Millisecond),
		wspool.WithOnError(func(_ string, err error) {
			if errors.Is(err, wspool.ErrMaxAttempts) {
				select {
				case errs <- err:
				default:
				}
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	recv(t, errs, 20*time.Second, "the standby connection's ErrMaxAttempts report")
	st := c.Stats()
	if len(st.Standby) != 1 || !errors.Is(st.Standby[0].LastError, wspool.ErrMaxAttempts) {
		t.Fatalf("standby stats: %+v", st.Standby)
	}
	n := accepted.Load()
	// A bounded look for dials that must not come: a hot loop made hundreds.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	<-ctx.Done()
	if extra := accepted.Load() - n; extra > 0 || n > 3 {
		t.Fatalf("the standby endpoint saw %d dials, %d of them after the standby stopped; want at most 3 and none after", n+extra, extra)
	}
	if c.State() != wspool.StateConnected {
		t.Fatalf("the feed is %v; the standby's stop must not end it", c.State())
	}
}

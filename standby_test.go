package wspool_test

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/wstest"
)

// TestStandbyWonCountsOnlyData: with standby connections, Stats.Won (and a
// standby's Won) counts data messages only, not heartbeat replies or server
// pings delivered to the handler.
//
// Found by the all-features soak
// (WSPOOL_SOAK_SEED=2 -short, before the soak's bound was loosened: "f016
// (... heartbeat=416ms ... standby ...): the connections won 248 (primary
// 118, standby 130), 241 data messages handled, 0 dropped"). Stats.Won is
// documented as "the data messages the primary connection delivered first",
// but with WithStandby the primary's reader counts every message
// deliverMerged delivers (read.go: `if c.deliverMerged(...) { won++ }` for
// data=false too): heartbeat replies kept for the handler, and server pings
// with ServerPing.Deliver. A standby connection counts only data (standby.go).
// Here the server sends no data at all, only heartbeat replies: Won must
// stay 0.
func TestStandbyWonCountsOnlyData(t *testing.T) {
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		for {
			_, m, err := c.ReadMessage()
			if err != nil {
				return
			}
			if k, ok := strings.CutPrefix(string(m), "hb "); ok {
				if err := c.WriteMessage(websocket.TextMessage, []byte("hbr "+k)); err != nil {
					return
				}
			}
		}
	})
	var n atomic.Int64
	c, err := wspool.NewClient(srv.URL("/"), func(context.Context, wspool.Message) error { return nil },
		wspool.WithSequence(wspool.Sequence{Extract: func(m wspool.Message) (string, uint64, bool) {
			v, err := strconv.ParseUint(string(m.Data), 10, 64)
			return "", v, err == nil
		}}),
		wspool.WithStandby(wspool.Standby{Connections: 1}),
		wspool.WithHeartbeat(wspool.Heartbeat{
			Interval: 20 * time.Millisecond,
			Message: func() (wspool.MessageType, []byte) {
				return wspool.TextMessage, []byte("hb " + strconv.FormatInt(n.Add(1), 10))
			},
			IsReply: func(m wspool.Message) bool { return strings.HasPrefix(string(m.Data), "hbr ") },
		}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	waitFor(t, 10*time.Second, "heartbeat replies on the primary", func() bool { return c.Stats().HeartbeatReplies >= 5 })
	s := c.Stats()
	var laneWon int64
	for _, l := range s.Standby {
		laneWon += l.Won
	}
	if s.Won != 0 || laneWon != 0 {
		t.Fatalf("no data message was sent, but Stats.Won is %d and the standby won %d (%d heartbeat replies delivered, %d delivered in all)",
			s.Won, laneWon, s.HeartbeatReplies, s.Delivered)
	}
}

// TestStandbyGateWaitIsNotTheFeedsState: a standby connection waiting at the
// pool's gate is not reported as the feed's state change (nor does its dial
// change the host the pool's wake keys the feed by).
//
// Found by the all-features soak under -race
// (a data race between a standby connection's dial, waiting at the pool's
// gate, and the feed's loop): a standby connection's wait at the gate was
// reported as the feed's state change while the feed was connecting,
// reading the loop's attempt count unsynchronised, and its dial set the
// host the pool's wake keys the feed by. Here the primary and a standby
// connection keep failing against a server that rejects every handshake
// after a delay, sharing one handshake slot, so the standby waits at the
// gate while the feed is connecting, again and again. Under -race the read
// was reported; the state changes must come from the feed's own dials only.
func TestStandbyGateWaitIsNotTheFeedsState(t *testing.T) {
	srv := newServer(t, func(*websocket.Conn, *http.Request) {})
	srv.SetReject(func(*http.Request) (int, http.Header) { return http.StatusServiceUnavailable, nil })
	srv.SetHandshakeDelay(5 * time.Millisecond)
	ev := newEvents()
	p, err := wspool.NewPool(wspool.WithMaxConcurrentDials(1), wspool.WithBackoff(time.Millisecond, 5*time.Millisecond), ev.option())
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Add(srv.URL("/"), func(context.Context, wspool.Message) error { return nil },
		wspool.WithSequence(wspool.Sequence{Extract: func(wspool.Message) (string, uint64, bool) { return "", 0, false }}),
		wspool.WithStandby(wspool.Standby{Connections: 2}))
	if err != nil {
		t.Fatal(err)
	}
	runPool(t, p)
	waitFor(t, 20*time.Second, "40 attempts of the feed", func() bool { return c.Stats().Attempts >= 40 })
	s := c.Stats()
	waits := 0
	for _, sc := range ev.snapshot() {
		if errors.Is(sc.Err, wspool.ErrAdmissionWait) {
			waits++
		}
	}
	if int64(waits) > s.Attempts+1 { // at most one per dial of the feed's own (one may be under way)
		t.Fatalf("%d admission-wait state changes for %d dials of the feed itself (the standby connections' waits are not the feed's state)", waits, s.Attempts)
	}
	if s.AdmissionWaits == 0 {
		t.Fatal("no dial ever waited at the gate: the test did not test")
	}
}

// TestStandbyPingsDoNotHoldOffPrimaryStaleCheck: server pings a standby
// connection answers are not the primary connection's data. Before, every
// answered ping (on any connection) came off the primary's data count, so a
// standby's pings moved it and the primary's stale-data watchdog never fired
// on a primary that sent nothing.
func TestStandbyPingsDoNotHoldOffPrimaryStaleCheck(t *testing.T) {
	silent := newServer(t, func(c *websocket.Conn, r *http.Request) {
		gone, stop := wstest.ReadInBackground(c)
		defer stop()
		<-gone
	})
	pinging := newServer(t, func(c *websocket.Conn, r *http.Request) {
		gone, stop := wstest.ReadInBackground(c)
		defer stop()
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for n := 1; ; n++ {
			select {
			case <-gone:
				return
			case <-tk.C:
			}
			if c.WriteMessage(websocket.TextMessage, []byte(`{"ping":`+strconv.Itoa(n)+`}`)) != nil {
				return
			}
		}
	})
	ev := newEvents()
	c, err := wspool.NewClient(silent.URL("/"), nil, ev.option(),
		wspool.WithSequence(wspool.Sequence{Extract: func(wspool.Message) (string, uint64, bool) { return "", 0, false }}),
		wspool.WithStandby(wspool.Standby{Connections: 1, URLs: []string{pinging.URL("/")}}),
		wspool.WithServerPing(wspool.ServerPing{Reply: func(m wspool.Message) (wspool.MessageType, []byte, bool) {
			n, ok := strings.CutPrefix(string(m.Data), `{"ping":`)
			return wspool.TextMessage, []byte(`{"pong":` + n), ok
		}}),
		wspool.WithStaleTimeout(300*time.Millisecond), wspool.WithBackoff(10*time.Millisecond, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	waitFor(t, 20*time.Second, "the silent primary cut for stale data", func() bool {
		return errors.Is(ev.lastCause(wspool.StateBackingOff), wspool.ErrStaleData)
	})
}

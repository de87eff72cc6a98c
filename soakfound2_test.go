package wspool_test

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
)

// TestSoakFound2WonCountsReplies: found by the all-features soak
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
func TestSoakFound2WonCountsReplies(t *testing.T) {
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

// TestSoakFound2DrainLosesPendingPush: found by the all-features soak
// (WSPOOL_SOAK_SEED=9 -short, now and then: "f002 (queue=block-2 ... sequence
// resume server-skips): after Drain the reader accepted number 246, the
// handler got 245"). With WithSequence and a full Block queue, the reader
// has accepted the next message (checkSequence advanced the stream) and
// waits for room; Drain (or Close) cancels the feed's context and push gives
// the message up: it is neither delivered nor counted in Stats.Dropped, and
// LastSequence is past it, so a resume from LastSequence (e.g. by the next
// process) skips it. Drain's doc: "what arrives after [our close frame] is
// read but not delivered" — this message arrived before it.
func TestSoakFound2DrainLosesPendingPush(t *testing.T) {
	closed := make(chan struct{}, 4)
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		for i := 1; i <= 3; i++ {
			if err := c.WriteMessage(websocket.TextMessage, []byte(strconv.Itoa(i))); err != nil {
				return
			}
		}
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				closed <- struct{}{}
				return
			}
		}
	})
	release := make(chan struct{})
	var last atomic.Int64
	c, err := wspool.NewClient(srv.URL("/"), func(ctx context.Context, m wspool.Message) error {
		n, _ := strconv.ParseInt(string(m.Data), 10, 64)
		if n == 1 {
			<-release
		}
		last.Store(n)
		return nil
	},
		wspool.WithQueue(wspool.Queue{Messages: 1, Policy: wspool.Block}),
		wspool.WithSequence(wspool.Sequence{Extract: func(m wspool.Message) (string, uint64, bool) {
			v, err := strconv.ParseUint(string(m.Data), 10, 64)
			return "", v, err == nil
		}}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	// 1 in the handler, 2 queued, 3 accepted and waiting for room.
	waitFor(t, 10*time.Second, "message 3 accepted", func() bool { n, _ := c.LastSequence(""); return n == 3 })
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := c.Drain(ctx)
		<-c.Done()
		done <- err
	}()
	select { // the server read our close frame: the drain is under way
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("no close frame 10s after Drain")
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Drain: %v", err)
	}
	s := c.Stats()
	if n, _ := c.LastSequence(""); int64(n) != last.Load() {
		t.Fatalf("after Drain: LastSequence %d, the handler got up to %d, Dropped %d (delivered %d of %d read)", n, last.Load(), s.Dropped, s.Delivered, s.MessagesIn)
	}
}

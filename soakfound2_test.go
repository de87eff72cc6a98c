package wspool_test

import (
	"context"
	"net/http"
	"os"
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
//
// Skipped until the library is fixed (WSPOOL_SOAKFOUND=1 runs it).
func TestSoakFound2WonCountsReplies(t *testing.T) {
	if os.Getenv("WSPOOL_SOAKFOUND") == "" {
		t.Skip("library bug pending a fix: Stats.Won counts heartbeat replies and delivered pings (WSPOOL_SOAKFOUND=1 runs it)")
	}
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

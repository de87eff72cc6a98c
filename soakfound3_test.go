package wspool_test

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
)

// TestSoakFound3QueueStrandsLatePush: found by the all-features soak in CI
// (WSPOOL_SOAK_SEED=706433758 WSPOOL_SOAK=60s: "f045 (queue=block-2 ...
// standby ...): the connections won 272, 271 data messages handled, 0
// dropped; Stats: delivered 271, queue depth 1, state closed"). At shutdown
// the queue's handler goroutine saw its context end, discarded what was
// queued and exited, but the queue stayed open: a reader that had accepted a
// message just before (the sequence check, the duplicate filter or the merge
// of standby connections run between the reader's shutdown check and the
// push) then pushed it into a queue nobody pops. The message was neither
// delivered nor counted in Stats.Dropped, and QueueDepth stayed 1 after Run
// returned. Here the sequence's Extract holds the reader between the two
// until the queue's handler is gone.
func TestSoakFound3QueueStrandsLatePush(t *testing.T) {
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		for i := 1; i <= 2; i++ {
			if err := c.WriteMessage(websocket.TextMessage, []byte(strconv.Itoa(i))); err != nil {
				return
			}
		}
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	})
	inExtract, release := make(chan struct{}), make(chan struct{})
	handled := make(chan int, 2)
	c, err := wspool.NewClient(srv.URL("/"), func(ctx context.Context, m wspool.Message) error {
		n, _ := strconv.Atoi(string(m.Data))
		handled <- n
		return nil
	},
		wspool.WithQueue(wspool.Queue{Messages: 2, Policy: wspool.Block}),
		wspool.WithSequence(wspool.Sequence{Extract: func(m wspool.Message) (string, uint64, bool) {
			v, err := strconv.ParseUint(string(m.Data), 10, 64)
			if v == 2 {
				close(inExtract)
				<-release
			}
			return "", v, err == nil
		}}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	if n := recv(t, handled, 10*time.Second, "message 1"); n != 1 {
		t.Fatalf("handler got %d first", n)
	}
	recv(t, inExtract, 10*time.Second, "the reader in Extract for message 2")
	closed := make(chan error, 1)
	go func() {
		err := c.Close()
		<-c.Done()
		closed <- err
	}()
	// Close has cancelled the feed: the queue's handler goroutine exits.
	waitFor(t, 10*time.Second, "the queue's handler goroutine to exit", func() bool {
		return !strings.Contains(allStacks(), "wspool.(*Client).deliverQueued")
	})
	close(release)
	recv(t, closed, 10*time.Second, "Close to return")
	s := c.Stats()
	if s.QueueDepth != 0 || s.Delivered+s.Dropped != 2 {
		t.Fatalf("after Close: queue depth %d, delivered %d, dropped %d; want every one of the 2 messages delivered or dropped, none left queued", s.QueueDepth, s.Delivered, s.Dropped)
	}
}

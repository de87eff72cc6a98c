package wspool_test

import (
	"context"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/wstest"
)

// TestBlockQueueHoldsNoUncountedCopy: with 4 MiB messages and a Block queue
// of one message, a stalled handler holds one message, the queue one, and
// the reader, waiting for room, only its read buffer: three messages' worth
// of live heap (the documented bound), not a fourth copy made before the
// wait.
func TestBlockQueueHoldsNoUncountedCopy(t *testing.T) {
	const size, n = 4 << 20, 6
	payload := seqMessage(0, size) // one buffer, allocated before the baseline
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		for i := 0; i < n; i++ {
			if err := c.WriteMessage(websocket.BinaryMessage, payload); err != nil {
				return
			}
		}
		wstest.Drain(c, nil)
	})
	runtime.GC()
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)

	entered := make(chan struct{}, n)
	release := make(chan struct{})
	c, err := wspool.NewClient(srv.URL("/"), func(ctx context.Context, m wspool.Message) error {
		entered <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		runtime.KeepAlive(m.Data) // the handler's message is live while it works
		return nil
	}, wspool.WithQueue(wspool.Queue{Messages: 1, Bytes: 64 << 10, Policy: wspool.Block}))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	recv(t, entered, 10*time.Second, "the handler to get the first message")
	waitFor(t, 10*time.Second, "one message queued", func() bool { return c.Stats().QueueDepth == 1 })
	// The reader now reads the third message and waits for room. Sample the
	// live heap until it settles (the reader's buffer grows while it reads).
	var live, prev int64
	var ms runtime.MemStats
	settled := false
	for i := 0; i < 100 && !settled; i++ {
		// Two collections: free buffers waiting in sync.Pools (the read
		// buffer's size classes) survive one, and are not held by anyone.
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		live = int64(ms.HeapAlloc) - int64(base.HeapAlloc)
		settled = i > 0 && live-prev < 256<<10 && prev-live < 256<<10
		prev = live
		time.Sleep(50 * time.Millisecond) // sampling interval, not a wait for an event
	}
	close(release)
	runtime.KeepAlive(payload)
	waitFor(t, 20*time.Second, "every message delivered", func() bool { return c.Stats().Delivered == n })
	t.Logf("live heap while blocked: +%.1f MiB (messages of %d MiB, settled %v)", float64(live)/(1<<20), size>>20, settled)
	if !settled {
		t.Fatal("the live heap did not settle")
	}
	if limit := int64(3*size + 1<<20); live > limit {
		t.Fatalf("live heap grew by %.1f MiB while the reader waited for room, want at most %.1f MiB (handler's, queued and reader's message)",
			float64(live)/(1<<20), float64(limit)/(1<<20))
	}
}

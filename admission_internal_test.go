package wspool

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// TestAdmissionForgetsIdleKeys: a pool whose admission keys come and go
// (a Key func by API key or local address, hosts that change) keeps state
// only for the keys dialled within the last window. Before the sweep every
// key ever dialled stayed in the gate's map for the life of the pool.
func TestAdmissionForgetsIdleKeys(t *testing.T) {
	const per = 50 * time.Millisecond
	g := newDialGate(4, &Admission{Rate: 2, Per: per, Burst: 1, Penalty: -1})
	dial := func(key string) {
		tk, err := g.enter(context.Background(), "h", key, func(string, time.Duration) {})
		if err != nil {
			t.Fatal(err)
		}
		tk.leave()
	}
	const n = 500
	for i := range n {
		dial("old-" + strconv.Itoa(i))
	}
	// Every old key's only dial leaves its window after per.
	time.Sleep(per + 10*time.Millisecond) // the window itself: time is what must pass
	for i := range n {
		dial("new-" + strconv.Itoa(i))
	}
	g.mu.Lock()
	kept, old := len(g.keys), 0
	for k := range g.keys {
		if k[:4] == "old-" {
			old++
		}
	}
	g.mu.Unlock()
	if old > 0 || kept > n {
		t.Fatalf("after %d keys idle past the window and %d new ones: %d keys kept, %d of them idle old ones", n, n, kept, old)
	}

	// A key still in its window (or held by a penalty) is kept, and keeps
	// its limits: its next dial waits.
	g.penalize("new-0", time.Hour)
	for i := range 200 {
		dial("more-" + strconv.Itoa(i))
	}
	g.mu.Lock()
	k := g.keys["new-0"]
	g.mu.Unlock()
	if k == nil || time.Until(k.penalty) < 50*time.Minute {
		t.Fatalf("a penalized key was forgotten or lost its penalty: %+v", k)
	}
}

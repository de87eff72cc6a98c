package ratewindow_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/wspool/wspool/internal/ratewindow"
)

var t0 = time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

// An event at t counts while now-t < Per, and leaves exactly at Per.
func TestEventLeavesTheWindowAtPer(t *testing.T) {
	w := ratewindow.New(2, time.Second)
	w.Add(at(0))
	if n := w.Count(at(999 * time.Millisecond)); n != 1 {
		t.Fatalf("count just inside the window = %d, want 1", n)
	}
	if n := w.Count(at(time.Second)); n != 0 {
		t.Fatalf("count at Per = %d, want 0", n)
	}
}

// Wait says when one more event fits: at once under the limit, else when
// the oldest event leaves; with pending events the ones that must leave
// first are counted from the oldest.
func TestWaitUntilTheOldestLeaves(t *testing.T) {
	w := ratewindow.New(3, time.Second)
	w.Add(at(0))
	w.Add(at(100 * time.Millisecond))
	if d := w.Wait(at(200*time.Millisecond), 0); d != 0 {
		t.Fatalf("Wait under the limit = %v, want 0", d)
	}
	w.Add(at(200 * time.Millisecond))
	if d := w.Wait(at(300*time.Millisecond), 0); d != 700*time.Millisecond {
		t.Fatalf("Wait at the limit = %v, want 700ms (the first event leaves at 1s)", d)
	}
	// One pending event: two must leave, the second at 1.1 s.
	if d := w.Wait(at(300*time.Millisecond), 1); d != 800*time.Millisecond {
		t.Fatalf("Wait with one pending = %v, want 800ms", d)
	}
	if d := w.Wait(at(300*time.Millisecond), 3); d != -1 {
		t.Fatalf("Wait with the limit pending = %v, want -1 (an end must come first)", d)
	}
	if d := w.Wait(at(2*time.Second), 2); d != 0 {
		t.Fatalf("Wait after every event left, two pending = %v, want 0", d)
	}
}

// Admitting whenever Wait says 0 never puts more than Limit events in any
// window of Per, checked the way a receiver checks: for every event, the
// events within the Per before it. Random gaps, bursts, and times that go
// back (treated as the latest time).
func TestNeverOverTheLimitInAnyWindow(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct {
		limit int
		per   time.Duration
	}{{1, time.Millisecond}, {4, 500 * time.Millisecond}, {10, time.Second}, {5000, time.Minute}} {
		w := ratewindow.New(c.limit, c.per)
		now := t0
		var got []time.Time
		for len(got) < 20*c.limit+50 {
			switch r.IntN(4) {
			case 0:
				now = now.Add(time.Duration(r.Int64N(int64(c.per))))
			case 1:
				now = now.Add(time.Duration(r.Int64N(int64(c.per / 50))))
			}
			if d := w.Wait(now, 0); d > 0 {
				now = now.Add(d)
			} else if d < 0 {
				t.Fatalf("Wait = %v with nothing pending", d)
			}
			w.Add(now)
			got = append(got, now)
		}
		lo := 0
		for i, e := range got {
			for e.Sub(got[lo]) >= c.per {
				lo++
			}
			if n := i - lo + 1; n > c.limit {
				t.Fatalf("limit %d per %v: %d events in the window ending at event %d", c.limit, c.per, n, i)
			}
		}
	}
}

// Saturated (every event as soon as Wait allows), the window lets through
// at least Limit per Per plus one grain: the grains cost at most 0.1 %.
func TestSaturatedThroughput(t *testing.T) {
	for _, c := range []struct {
		limit int
		per   time.Duration
	}{{1, time.Millisecond}, {10, time.Second}, {5000, time.Minute}} {
		w := ratewindow.New(c.limit, c.per)
		now := t0
		const windows = 20
		n := 0
		for now.Sub(t0) < windows*c.per {
			if d := w.Wait(now, 0); d > 0 {
				now = now.Add(d)
				continue
			}
			w.Add(now)
			n++
		}
		if min := windows * c.limit * ratewindow.Grains / (ratewindow.Grains + 1); n < min {
			t.Errorf("limit %d per %v: %d events in %d windows, want at least %d", c.limit, c.per, n, windows, min)
		}
	}
}

// A limit of 10 million per hour holds one entry per grain in use, not one
// per allowed event, and nothing once the window is empty.
func TestMemoryFollowsUse(t *testing.T) {
	w := ratewindow.New(10_000_000, time.Hour)
	w.Add(at(0))
	if n := w.Entries(); n != 1 {
		t.Fatalf("one event: %d entries", n)
	}
	// 100,000 events in one second share one or two grains (a grain is
	// Per/1024, 3.5 s).
	for i := range 100_000 {
		w.Add(at(time.Duration(i) * 10 * time.Microsecond))
	}
	if n, c := w.Entries(), w.Count(at(time.Second)); n > 2 || c != 100_001 {
		t.Fatalf("100,001 events within a second: %d entries, count %d", n, c)
	}
	// Busy for three hours at one event a second: never more than
	// Grains+1 entries.
	for s := range 3 * 3600 {
		w.Add(at(time.Duration(s) * time.Second))
		if n := w.Entries(); n > ratewindow.Grains+1 {
			t.Fatalf("%d entries after %d s", n, s)
		}
	}
	if !w.Empty(at(5 * time.Hour)) {
		t.Fatal("not empty an hour after the last event")
	}
	if n := w.Entries(); n != 0 {
		t.Fatalf("%d entries left in an empty window", n)
	}
}

// Events sharing a grain leave together, with the latest of them: never
// earlier than exactly, at most one grain later.
func TestSharedGrainLeavesWithItsLatestEvent(t *testing.T) {
	per := 1024 * time.Millisecond // a grain is 1 ms
	w := ratewindow.New(2, per)
	w.Add(at(0))
	w.Add(at(900 * time.Microsecond)) // the same grain
	if d := w.Wait(at(time.Millisecond), 0); d != per-100*time.Microsecond {
		t.Fatalf("Wait = %v, want %v (the grain leaves with its latest event)", d, per-100*time.Microsecond)
	}
	if n := w.Count(at(per)); n != 2 {
		t.Fatalf("count when the first event would have left exactly = %d, want 2 (held to its grain's latest)", n)
	}
	if n := w.Count(at(per + 900*time.Microsecond)); n != 0 {
		t.Fatalf("count after the latest left = %d", n)
	}
}

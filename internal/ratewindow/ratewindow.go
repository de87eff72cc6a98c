// Package ratewindow counts events in a sliding window of time, for limits
// of the form "at most Limit events within any window of length Per": wspool
// admits dials per upstream key and paces writes per connection with it.
//
// An event at t is in the window at now while now-t < Per, the way a
// receiver that keeps the times of what it got counts them.
//
// Memory follows use, not the limit. Time is cut into grains of Per/Grains;
// the events of one grain share one entry (a count and the time of the
// latest of them), so a window holds at most min(events in it, Grains+1)
// entries of 16 bytes, however large the limit: 10 million events per hour
// take at most 16 KiB while busy and nothing once the window is empty. The
// sharing is conservative: every event of an entry leaves the window when
// the latest of them does, so an event may be counted up to Per/Grains longer
// than an exact count would, never shorter. The count is never below the
// exact one, so a limit checked against it is never exceeded at the times
// given; what it costs is at most one grain (0.1 % of Per) of throughput.
//
// A Window is not safe for concurrent use; its owner locks it. Times must
// come from one clock with monotonic readings (time.Now, or a test's fake);
// a time earlier than one already added counts as that later time.
package ratewindow

import "time"

// Grains is how many entries a full window holds at most, less one.
const Grains = 1024

// entry is the events of one grain: n of them, the latest at at (relative to
// the window's base).
type entry struct {
	at time.Duration
	n  int
}

// Window counts events within the last Per. The zero value is not usable;
// call New.
type Window struct {
	limit int
	per   time.Duration
	grain time.Duration

	base    time.Time // the time of the first event; at is relative to it
	entries []entry   // oldest first, from start
	start   int
	count   int // events in entries[start:]
}

// New returns a window for at most limit events per window of length per.
// It panics unless both are positive.
func New(limit int, per time.Duration) *Window {
	if limit <= 0 || per <= 0 {
		panic("ratewindow: limit and per must be positive")
	}
	return &Window{limit: limit, per: per, grain: max(per/Grains, 1)}
}

// Limit returns the window's limit.
func (w *Window) Limit() int { return w.limit }

// Per returns the window's length.
func (w *Window) Per() time.Duration { return w.per }

// rel returns now relative to the base.
func (w *Window) rel(now time.Time) time.Duration {
	if w.base.IsZero() {
		w.base = now
	}
	return now.Sub(w.base)
}

// Add records one event at now.
func (w *Window) Add(now time.Time) {
	t := w.rel(now)
	w.expire(t)
	if n := len(w.entries); n > w.start {
		last := &w.entries[n-1]
		if t <= last.at || t/w.grain == last.at/w.grain {
			last.at = max(last.at, t)
			last.n++
			w.count++
			return
		}
	}
	w.entries = append(w.entries, entry{at: t, n: 1})
	w.count++
}

// Count returns the events in the window at now.
func (w *Window) Count(now time.Time) int {
	if w.count == 0 {
		return 0
	}
	w.expire(w.rel(now))
	return w.count
}

// Wait returns how long after now one more event fits beside pending ones
// (events under way that will be added when they end, such as dials in
// flight): 0 if it fits now, -1 if it fits only once some of the pending
// ones have ended and been added.
func (w *Window) Wait(now time.Time, pending int) time.Duration {
	if w.Count(now)+pending < w.limit {
		return 0
	}
	if pending >= w.limit {
		return -1
	}
	// The oldest count+pending-limit+1 events must leave first.
	k := w.count + pending - w.limit + 1
	t := w.rel(now)
	for _, e := range w.entries[w.start:] {
		if k -= e.n; k <= 0 {
			return e.at + w.per - t
		}
	}
	return -1 // not reached: k <= count
}

// Empty reports whether no event is in the window at now: nothing about the
// past is left to enforce.
func (w *Window) Empty(now time.Time) bool { return w.Count(now) == 0 }

// Entries returns how many entries the window holds (its memory is about
// 16 bytes each), for tests and measurements.
func (w *Window) Entries() int { return len(w.entries) - w.start }

// expire drops the entries whose events have all left the window at t, and
// gives memory back once most of the entries' array is unused.
func (w *Window) expire(t time.Duration) {
	for w.start < len(w.entries) && t-w.entries[w.start].at >= w.per {
		w.count -= w.entries[w.start].n
		w.start++
	}
	live := len(w.entries) - w.start
	switch {
	case live == 0:
		if cap(w.entries) > 16 {
			w.entries = nil
		} else {
			w.entries = w.entries[:0]
		}
		w.start = 0
	case w.start >= live && (w.start >= 16 || cap(w.entries) > 4*live):
		// Half or more of the array is dead: move the live entries down,
		// into a smaller array if most of it is unused.
		dst := w.entries[:0]
		if cap(w.entries) > 4*live && cap(w.entries) > 16 {
			dst = make([]entry, 0, 2*live)
		}
		w.entries = append(dst, w.entries[w.start:]...)
		w.start = 0
	}
}

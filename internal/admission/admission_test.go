package admission_test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/wspool/wspool/internal/admission"
)

// fakeClock is a clock that moves only when the test says so; due timers
// fire, in order, on the goroutine that calls Advance.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c    *fakeClock
	at   time.Time
	f    func()
	done bool // fired or stopped
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) admission.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.done
	t.done = true
	return was
}

// Advance moves the clock by d, firing every timer due on the way.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		var due []*fakeTimer
		keep := c.timers[:0]
		for _, t := range c.timers {
			switch {
			case t.done:
			case !t.at.After(end):
				due = append(due, t)
			default:
				keep = append(keep, t)
			}
		}
		c.timers = keep
		if len(due) == 0 {
			c.now = end
			c.mu.Unlock()
			return
		}
		sort.SliceStable(due, func(i, j int) bool { return due[i].at.Before(due[j].at) })
		first := due[0]
		c.now = first.at
		first.done = true
		c.timers = append(c.timers, due[1:]...)
		c.mu.Unlock()
		first.f()
	}
}

// dial is one Enter running on its own goroutine.
type dial struct {
	reason chan string // the wait reason, if it waited
	ticket chan *admission.Ticket
	err    chan error
	cancel context.CancelFunc
}

// start enters the gate and returns once the dial is through or in line.
func start(t *testing.T, g *admission.Gate, host, key string) *dial {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d := &dial{reason: make(chan string, 1), ticket: make(chan *admission.Ticket, 1), err: make(chan error, 1), cancel: cancel}
	t.Cleanup(cancel)
	ready := make(chan struct{}, 2)
	go func() {
		tk, err := g.Enter(ctx, host, key, func(reason string, _ time.Duration) {
			d.reason <- reason
			ready <- struct{}{}
		})
		if err != nil {
			d.err <- err
		} else {
			d.ticket <- tk
		}
		ready <- struct{}{}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("Enter neither returned nor waited")
	}
	return d
}

// through waits for the dial to be let through.
func (d *dial) through(t *testing.T, what string) *admission.Ticket {
	t.Helper()
	select {
	case tk := <-d.ticket:
		return tk
	case err := <-d.err:
		t.Fatalf("%s: %v", what, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: still waiting", what)
	}
	return nil
}

// waiting checks that the dial has not been let through.
func (d *dial) waiting(t *testing.T, what string) {
	t.Helper()
	select {
	case <-d.ticket:
		t.Fatalf("%s: let through", what)
	case err := <-d.err:
		t.Fatalf("%s: %v", what, err)
	default:
	}
}

func (d *dial) waitReason(t *testing.T) string {
	t.Helper()
	select {
	case r := <-d.reason:
		return r
	default:
		return ""
	}
}

func limitsOf(m map[string]admission.Limits) func(string) (admission.Limits, bool) {
	return func(k string) (admission.Limits, bool) {
		l, ok := m[k]
		return l, ok
	}
}

func newGate(slots int, m map[string]admission.Limits) (*admission.Gate, *fakeClock) {
	c := newFakeClock()
	return admission.New(admission.Config{Slots: slots, Limits: limitsOf(m), Clock: c}), c
}

// The rate counts each dial from its end: Rate dials, then the next one
// only Per after the first of them ended.
func TestRateCountsFromTheDialsEnd(t *testing.T) {
	g, clk := newGate(8, map[string]admission.Limits{"k": {Rate: 2, Per: time.Second}})
	a := start(t, g, "h", "k").through(t, "first")
	b := start(t, g, "h", "k").through(t, "second")
	third := start(t, g, "h", "k")
	third.waiting(t, "third with two in flight")
	if r := third.waitReason(t); r != "rate" {
		t.Fatalf("wait reason %q, want rate", r)
	}
	clk.Advance(300 * time.Millisecond)
	a.Leave()
	clk.Advance(200 * time.Millisecond)
	b.Leave()
	clk.Advance(999 * time.Millisecond) // 1.299 s after start: a ended 0.999 s ago
	third.waiting(t, "third within Per of the first end")
	clk.Advance(time.Millisecond)
	third.through(t, "third at Per after the first end").Leave()
}

// MaxConcurrent holds the next dial until one in flight ends.
func TestConcurrencyWaitsForAnEnd(t *testing.T) {
	g, _ := newGate(8, map[string]admission.Limits{"k": {MaxConcurrent: 1}})
	a := start(t, g, "h", "k").through(t, "first")
	b := start(t, g, "h", "k")
	b.waiting(t, "second while the first is in flight")
	if r := b.waitReason(t); r != "concurrency" {
		t.Fatalf("wait reason %q", r)
	}
	a.Leave()
	b.through(t, "second after the first ended").Leave()
}

// Burst below Rate spaces dials out: Burst at once, then one per Per/Rate.
func TestBurstSpacesDials(t *testing.T) {
	g, clk := newGate(8, map[string]admission.Limits{"k": {Rate: 10, Per: time.Second, Burst: 2}})
	for i := range 2 {
		start(t, g, "h", "k").through(t, fmt.Sprint("burst dial ", i)).Leave()
	}
	c := start(t, g, "h", "k")
	c.waiting(t, "third dial with the burst spent")
	clk.Advance(99 * time.Millisecond)
	c.waiting(t, "third dial before a token refilled")
	clk.Advance(2 * time.Millisecond)
	c.through(t, "third dial after Per/Rate").Leave()
}

// A penalty holds every dial of its key, and only that key.
func TestPenaltyHoldsOnlyItsKey(t *testing.T) {
	g, clk := newGate(8, map[string]admission.Limits{"a": {}, "b": {}})
	g.Penalize("a", time.Minute)
	held := start(t, g, "h", "a")
	held.waiting(t, "a dial of the penalized key")
	if r := held.waitReason(t); r != "penalty" {
		t.Fatalf("wait reason %q", r)
	}
	start(t, g, "h", "b").through(t, "another key's dial").Leave()
	g.Penalize("a", time.Second) // shorter: the minute stays
	clk.Advance(59 * time.Second)
	held.waiting(t, "before the penalty ends")
	clk.Advance(time.Second)
	held.through(t, "at the penalty's end").Leave()
}

// Each key has its own limits; a key without limits is not admitted at all
// (no wait, no penalty).
func TestLimitsChosenPerKey(t *testing.T) {
	g, clk := newGate(8, map[string]admission.Limits{
		"slow": {Rate: 1, Per: time.Second},
		"fast": {Rate: 3, Per: time.Second},
	})
	for i := range 3 {
		start(t, g, "f", "fast").through(t, fmt.Sprint("fast dial ", i)).Leave()
	}
	start(t, g, "s", "slow").through(t, "slow dial 0").Leave()
	fast, slow := start(t, g, "f", "fast"), start(t, g, "s", "slow")
	fast.waiting(t, "fourth fast dial")
	slow.waiting(t, "second slow dial")
	g.Penalize("free", time.Hour)
	for i := range 10 {
		start(t, g, "x", "free").through(t, fmt.Sprint("dial of a key without limits ", i)).Leave()
	}
	clk.Advance(time.Second)
	fast.through(t, "fast after Per").Leave()
	slow.through(t, "slow after Per").Leave()
}

// Dials of one key are let through in the order they asked.
func TestOneKeysLineIsFIFO(t *testing.T) {
	g, clk := newGate(8, map[string]admission.Limits{"k": {Rate: 1, Per: time.Second}})
	start(t, g, "h", "k").through(t, "first").Leave()
	var line []*dial
	for range 5 {
		line = append(line, start(t, g, "h", "k"))
	}
	for i, d := range line {
		clk.Advance(time.Second)
		d.through(t, fmt.Sprint("dial ", i, " in line")).Leave()
		for _, later := range line[i+1:] {
			later.waiting(t, "a later dial")
		}
	}
}

// A wait that ends with its context holds nothing: the key's next dial is
// not held by it, and the slot is free.
func TestCancelledWaitHoldsNothing(t *testing.T) {
	g, clk := newGate(1, map[string]admission.Limits{"k": {Rate: 1, Per: time.Second}})
	first := start(t, g, "h", "k").through(t, "first")
	gone := start(t, g, "h", "k")
	next := start(t, g, "h", "k")
	gone.cancel()
	select {
	case err := <-gone.err:
		if err != context.Canceled {
			t.Fatalf("cancelled Enter = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancelled Enter did not return")
	}
	first.Leave()
	clk.Advance(time.Second)
	next.through(t, "the dial behind the cancelled one").Leave()
	start(t, g, "other", "").through(t, "a slot after all left").Leave()
}

// A host that stalls every handshake leaves the reserve (a eighth of the
// slots) to hosts with no handshake in flight, so a dial to another host
// finds a slot at once; with 32 slots that holds until five hosts stall at
// once.
func TestStalledHostLeavesSlotsForOtherHosts(t *testing.T) {
	g, _ := newGate(32, nil)
	var held []*admission.Ticket
	var stuck []*dial
	for i, want := range []int{28, 1, 1, 1, 1} {
		h := fmt.Sprint("stalled-", i)
		for range want {
			held = append(held, start(t, g, h, "").through(t, h+" within its share"))
		}
		d := start(t, g, h, "")
		d.waiting(t, h+" beyond its share")
		stuck = append(stuck, d)
	}
	late := start(t, g, "healthy", "")
	late.waiting(t, "a sixth host with every slot held by five stalled ones")
	// One stalled handshake times out: the slot goes to the host with none
	// in flight.
	held[0].Leave()
	late.through(t, "the host with none in flight").Leave()
	for _, tk := range held[1:] {
		tk.Leave()
	}
	for _, d := range stuck {
		d.through(t, "a stalled host's waiting dial once slots freed").Leave()
	}
}

// A healthy host's first dial is let through at once while one host stalls
// every handshake, even with two slots.
func TestFirstDialOfAnotherHostNeverWaitsForAStalledOne(t *testing.T) {
	g, _ := newGate(2, nil)
	a := start(t, g, "stalled", "").through(t, "stalled host's first dial")
	more := start(t, g, "stalled", "")
	more.waiting(t, "stalled host's second dial")
	start(t, g, "healthy", "").through(t, "healthy host's first dial").Leave()
	a.Leave()
	more.through(t, "stalled host's second dial after its first ended").Leave()
}

// The gate forgets keys that have nothing left to enforce, and keeps those
// still in their window or penalty.
func TestForgetsIdleKeys(t *testing.T) {
	clk := newFakeClock()
	g := admission.New(admission.Config{Slots: 4, Clock: clk, Limits: func(string) (admission.Limits, bool) {
		return admission.Limits{Rate: 2, Per: time.Second, Burst: 1}, true
	}})
	const n = 500
	for i := range n {
		start(t, g, "h", fmt.Sprint("old-", i)).through(t, "old key").Leave()
	}
	g.Penalize("old-0", time.Hour)
	clk.Advance(2 * time.Second)
	for i := range n {
		start(t, g, "h", fmt.Sprint("new-", i)).through(t, "new key").Leave()
	}
	if k := g.Keys(); k > n+1 {
		t.Fatalf("%d keys held after %d went idle and %d new ones came", k, n, n)
	}
	d := start(t, g, "h", "old-0")
	d.waiting(t, "the penalized key, remembered")
	clk.Advance(time.Hour)
	d.through(t, "the penalized key after its penalty").Leave()
}

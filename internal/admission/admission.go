// Package admission is the gate every dial of a wspool pool passes before
// its handshake, in this order: admission for the dial's upstream key, then
// one of the pool's handshake slots, shared by host.
//
// # Admission
//
// Each key (an upstream: a host, an API key, an account) has its own limits
// (Limits, chosen per key) and one FIFO line. The head of the line goes
// through while the key is under Rate dials per Per, under MaxConcurrent
// dials in flight, has a Burst token, and is not held by a penalty
// (Gate.Penalize). A dial counts in the rate from the moment it ended
// (Ticket.Leave), not from when it started: the upstream counted the dial
// before the dialler saw its answer, so counting from the end means Rate+1
// dials never reach the upstream within one window however their latencies
// vary. The rate window's memory follows use (internal/ratewindow), and the
// gate forgets a key once nothing about it is left to enforce.
//
// # Handshake slots
//
// The pool has Slots handshake slots, of which the last Reserve(Slots) =
// max(1, Slots/8) are kept for hosts with no handshake in flight: a host
// takes a slot beyond its first only while more than Reserve stay free. So a
// host alone may have Slots-Reserve handshakes in flight (28 of 32), a host
// that stalls every handshake holds at most that many, and each other host
// finds a slot for its first dial at once until Reserve+1 hosts stall at
// the same time (5 of 32): a dial to another host waits for no stalled
// handshake, only (if every slot is busy) for a handshake to a host that
// answers. A freed slot goes to the waiting host with the fewest handshakes
// in flight (oldest first between equals; FIFO within a host).
//
// Waits end with the dial's context. Times come from a Clock, so the gate
// is tested on a fake one.
package admission

import (
	"context"
	"sync"
	"time"

	"github.com/wspool/wspool/internal/ratewindow"
)

// Limits are one key's admission limits; a zero field means no limit.
type Limits struct {
	// Rate is the most dials within any window of Per, each counted from
	// its end.
	Rate int
	Per  time.Duration
	// Burst, if below Rate, also spaces dials out: at most Burst in quick
	// succession, then one every Per/Rate (a token bucket).
	Burst int
	// MaxConcurrent caps the key's dials in flight.
	MaxConcurrent int
}

// Clock is the gate's time source.
type Clock interface {
	Now() time.Time
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc call.
type Timer interface{ Stop() bool }

type realClock struct{}

func (realClock) Now() time.Time                            { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// Config configures a Gate.
type Config struct {
	// Slots is how many handshakes may be in flight at once, pool-wide
	// (at least 1).
	Slots int
	// Limits returns a key's limits, and false for a key that is not
	// admitted at all (no limits, no penalties). It is called, under the
	// gate's lock, when the gate first sees the key (and again after it
	// forgot it); it must be fast and must not call the gate. Nil: no key
	// is admitted.
	Limits func(key string) (Limits, bool)
	// Clock is the time source; nil means real time.
	Clock Clock
}

// Gate is one pool's admission and handshake-slot gate. Its methods are
// safe for concurrent use.
type Gate struct {
	slots  int
	limits func(string) (Limits, bool)
	clock  Clock

	mu          sync.Mutex
	used        int // slots in flight
	slotWaiting int
	seq         uint64
	hosts       map[string]*host
	keys        map[string]*key
	sweepAt     int // len(keys) at which adding a key first forgets idle ones
}

type host struct {
	inflight int
	waiting  []*waiter
}

type waiter struct {
	ch      chan struct{}
	seq     uint64
	granted bool
}

// key is one admission key's line and history.
type key struct {
	lim      Limits
	queue    []*waiter
	window   *ratewindow.Window // the end times of its dials; nil without Rate
	tokens   float64
	refilled time.Time
	inflight int
	penalty  time.Time
	lastEnd  time.Time
	timer    Timer  // pumps the line when its head may go
	gen      uint64 // of the latest timer
}

// New returns a gate.
func New(cfg Config) *Gate {
	g := &Gate{slots: max(cfg.Slots, 1), limits: cfg.Limits, clock: cfg.Clock,
		hosts: map[string]*host{}, keys: map[string]*key{}}
	if g.clock == nil {
		g.clock = realClock{}
	}
	if g.limits == nil {
		g.limits = func(string) (Limits, bool) { return Limits{}, false }
	}
	return g
}

// Ticket is what a dial holds between the gate and its end.
type Ticket struct {
	g    *Gate
	host string
	key  *key
}

// Enter waits for admission under key and then for a handshake slot for
// host. wait is called once, outside the gate's lock, if the dial has to
// wait, with the reason ("penalty", "rate", "burst", "concurrency" or
// "handshake slots") and how long the wait is known to last (0: until
// something ends). When ctx ends first, Enter returns ctx.Err() and leaves
// nothing held.
func (g *Gate) Enter(ctx context.Context, hostName, keyName string, wait func(reason string, d time.Duration)) (*Ticket, error) {
	t := &Ticket{g: g, host: hostName}
	waited := false
	note := func(reason string, d time.Duration) {
		if !waited {
			waited = true
			wait(reason, d)
		}
	}
	k, err := g.admit(ctx, keyName, note)
	if err != nil {
		return nil, err
	}
	t.key = k
	if err := g.acquireSlot(ctx, hostName, note); err != nil {
		t.leaveKey()
		return nil, err
	}
	return t, nil
}

// Leave ends the dial: it frees its slot and counts it in its key's rate
// from now. Nil-safe; call it once.
func (t *Ticket) Leave() {
	if t == nil {
		return
	}
	t.g.releaseSlot(t.host)
	t.leaveKey()
}

func (t *Ticket) leaveKey() {
	k := t.key
	if k == nil {
		return
	}
	t.key = nil
	g := t.g
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.clock.Now()
	if k.window != nil {
		k.window.Add(now)
	}
	k.lastEnd = now
	k.inflight--
	g.pumpLocked(k)
}

// admit waits in key's line until the key lets the dial through; nil for a
// key that is not admitted.
func (g *Gate) admit(ctx context.Context, name string, note func(string, time.Duration)) (*key, error) {
	g.mu.Lock()
	k := g.keyLocked(name)
	if k == nil {
		g.mu.Unlock()
		return nil, nil
	}
	w := &waiter{ch: make(chan struct{})}
	k.queue = append(k.queue, w)
	g.pumpLocked(k)
	if w.granted {
		g.mu.Unlock()
		return k, nil
	}
	d, reason := g.delayLocked(k, g.clock.Now())
	g.mu.Unlock()
	note(reason, max(d, 0))
	select {
	case <-w.ch:
		return k, nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	if w.granted {
		g.mu.Unlock()
		(&Ticket{g: g, key: k}).leaveKey() // admitted meanwhile: a dial that ended now
		return nil, ctx.Err()
	}
	for i, q := range k.queue {
		if q == w {
			k.queue = append(k.queue[:i], k.queue[i+1:]...)
			break
		}
	}
	g.pumpLocked(k)
	g.mu.Unlock()
	return nil, ctx.Err()
}

// keyLocked returns key's state, new if the key has none; nil if the key
// is not admitted. Before it adds one it now and then (each time the map
// has doubled since the last sweep) forgets the keys that have nothing left
// to remember, so that a pool whose keys come and go holds state only for
// the keys in recent use.
func (g *Gate) keyLocked(name string) *key {
	if k := g.keys[name]; k != nil {
		return k
	}
	lim, ok := g.limits(name)
	if !ok {
		return nil
	}
	now := g.clock.Now()
	if len(g.keys) >= g.sweepAt {
		for n, k := range g.keys {
			if g.idleLocked(k, now) {
				delete(g.keys, n)
			}
		}
		g.sweepAt = max(64, 2*len(g.keys))
	}
	k := &key{lim: lim}
	if lim.Rate > 0 && lim.Per > 0 {
		k.window = ratewindow.New(lim.Rate, lim.Per)
	}
	if k.bursty() {
		k.tokens = float64(lim.Burst)
		k.refilled = now
	}
	g.keys[name] = k
	return k
}

func (k *key) bursty() bool { return k.lim.Burst > 0 && k.lim.Burst < k.lim.Rate && k.lim.Per > 0 }

// idleLocked reports whether k is as good as new: nobody waits or dials,
// no penalty holds it, its window is empty and its burst has refilled.
func (g *Gate) idleLocked(k *key, now time.Time) bool {
	if len(k.queue) > 0 || k.inflight > 0 || k.timer != nil || now.Before(k.penalty) {
		return false
	}
	if k.window != nil && !k.window.Empty(now) {
		return false
	}
	if k.bursty() {
		k.refill(now)
		if k.tokens < float64(k.lim.Burst) {
			return false
		}
	}
	return true
}

// delayLocked returns how long the head of k's line must still wait (-1:
// until a dial of the key ends) and why.
func (g *Gate) delayLocked(k *key, now time.Time) (time.Duration, string) {
	var d time.Duration
	reason := ""
	if now.Before(k.penalty) {
		d, reason = k.penalty.Sub(now), "penalty"
	}
	if k.lim.MaxConcurrent > 0 && k.inflight >= k.lim.MaxConcurrent {
		return -1, "concurrency"
	}
	if k.window != nil {
		w := k.window.Wait(now, k.inflight)
		if w < 0 {
			return -1, "rate"
		}
		if w > d {
			d, reason = w, "rate"
		}
	}
	if k.bursty() {
		k.refill(now)
		if k.tokens < 1 {
			w := time.Duration((1-k.tokens)*float64(k.lim.Per)/float64(k.lim.Rate)) + time.Microsecond
			if w > d {
				d, reason = w, "burst"
			}
		}
	}
	return d, reason
}

func (k *key) refill(now time.Time) {
	el := now.Sub(k.refilled)
	if el <= 0 {
		return
	}
	k.tokens = min(float64(k.lim.Burst), k.tokens+float64(el)*float64(k.lim.Rate)/float64(k.lim.Per))
	k.refilled = now
}

// pumpLocked admits the head of k's line while the key allows it, and arms
// a timer for when the next one may go.
func (g *Gate) pumpLocked(k *key) {
	if k.timer != nil {
		k.timer.Stop()
		k.timer = nil
	}
	for len(k.queue) > 0 {
		d, _ := g.delayLocked(k, g.clock.Now())
		if d < 0 {
			return // a dial's end pumps again
		}
		if d > 0 {
			k.gen++
			gen := k.gen
			k.timer = g.clock.AfterFunc(d, func() {
				g.mu.Lock()
				defer g.mu.Unlock()
				if k.gen == gen { // not a timer stopped while it fired
					k.timer = nil
					g.pumpLocked(k)
				}
			})
			return
		}
		w := k.queue[0]
		k.queue[0] = nil
		k.queue = k.queue[1:]
		if k.bursty() {
			k.tokens--
		}
		k.inflight++
		w.granted = true
		close(w.ch)
	}
}

// Penalize holds every dial of key until d from now (a longer penalty
// already in force stays). A key that is not admitted is not held.
func (g *Gate) Penalize(name string, d time.Duration) {
	if d <= 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	k := g.keyLocked(name)
	if k == nil {
		return
	}
	if until := g.clock.Now().Add(d); until.After(k.penalty) {
		k.penalty = until
	}
	g.pumpLocked(k)
}

// acquireSlot takes a handshake slot for host (see the package doc).
func (g *Gate) acquireSlot(ctx context.Context, name string, note func(string, time.Duration)) error {
	g.mu.Lock()
	h := g.hosts[name]
	if h == nil {
		h = &host{}
		g.hosts[name] = h
	}
	g.seq++
	w := &waiter{ch: make(chan struct{}), seq: g.seq}
	h.waiting = append(h.waiting, w)
	g.slotWaiting++
	g.grantLocked()
	if w.granted {
		g.mu.Unlock()
		return nil
	}
	g.mu.Unlock()
	note("handshake slots", 0)
	select {
	case <-w.ch:
		return nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	if w.granted {
		g.mu.Unlock()
		g.releaseSlot(name)
		return ctx.Err()
	}
	for i, q := range h.waiting {
		if q == w {
			h.waiting = append(h.waiting[:i], h.waiting[i+1:]...)
			g.slotWaiting--
			break
		}
	}
	g.forgetHostLocked(name, h)
	g.mu.Unlock()
	return ctx.Err()
}

// Reserve returns how many of slots are kept for hosts with no handshake
// in flight.
func Reserve(slots int) int { return max(1, slots/8) }

// mayTake reports whether h may take one of free slots: its first, or one
// that leaves more than the reserve free.
func (h *host) mayTake(free, reserve int) bool {
	return free > 0 && (h.inflight == 0 || free-1 >= reserve)
}

// grantLocked hands free slots to waiting hosts that may take them, the
// host with the fewest in flight first (oldest waiter between equals).
func (g *Gate) grantLocked() {
	for g.slotWaiting > 0 {
		free := g.slots - g.used
		var best *host
		for _, h := range g.hosts {
			if len(h.waiting) == 0 || !h.mayTake(free, Reserve(g.slots)) {
				continue
			}
			if best == nil || h.inflight < best.inflight || (h.inflight == best.inflight && h.waiting[0].seq < best.waiting[0].seq) {
				best = h
			}
		}
		if best == nil {
			return
		}
		w := best.waiting[0]
		best.waiting[0] = nil
		best.waiting = best.waiting[1:]
		g.slotWaiting--
		best.inflight++
		g.used++
		w.granted = true
		close(w.ch)
	}
}

// releaseSlot frees host's slot and hands free slots on.
func (g *Gate) releaseSlot(name string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.used--
	h := g.hosts[name]
	h.inflight--
	g.forgetHostLocked(name, h)
	g.grantLocked()
}

func (g *Gate) forgetHostLocked(name string, h *host) {
	if h.inflight == 0 && len(h.waiting) == 0 {
		delete(g.hosts, name)
	}
}

// Keys returns how many keys the gate holds state for (for tests).
func (g *Gate) Keys() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.keys)
}

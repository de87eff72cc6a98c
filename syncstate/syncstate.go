// Package syncstate keeps state that an upstream serves as a snapshot plus
// numbered updates (an order book, a "list then watch" resource set) in
// sync, resyncing from a fresh snapshot, without dropping the connection,
// whenever the updates say it went wrong.
//
// A [State] takes every update the feed delivers ([State.Push], typically
// from a wspool handler). Until it has a snapshot, and again after any
// break, it buffers updates (bounded), fetches a snapshot on a goroutine of
// its own (the user's Fetch: an HTTP request, or a request on the feed
// itself), drops the buffered updates the snapshot already covers, and
// applies the rest in order. In sync, each update is applied as it comes.
// A gap in the numbers, a new epoch (the upstream started numbering again),
// a checksum mismatch or an update that fails to apply puts it out of sync
// and starts a new fetch, while updates keep being buffered. Every resync
// is reported with its cause ([Resync], Config.OnResync) and counted
// ([State.Stats]); [State.InSync] says whether the state is current.
//
// A resync never touches the connection: no reconnect, and no failed
// attempt for the feed's backoff. Numbers are read in wspool's shapes
// (wspool.SequenceShape, wspool.Position): single numbers, ranges
// First..Last (the update that overlaps the snapshot's number is applied
// whole, so Apply must be idempotent for what the snapshot already
// includes, as for Binance's depth diffs), or ids linked to the previous one.
package syncstate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/wspool/wspool"
)

// Snapshot is a state as fetched, and where it stands in the stream: the
// number (with wspool.LinkedIDs, the id) of the last update it includes, and
// its epoch (0 if the upstream does not say).
type Snapshot[S any] struct {
	State S
	Last  uint64
	Epoch uint64
}

// Config configures a State. Fetch, Apply and Position are required.
type Config[S, U any] struct {
	// Fetch gets a snapshot. It runs on a goroutine of the State's, never
	// concurrently with itself; ctx ends with Close. An error is reported
	// (Resync.Err) and the fetch retried after RetryWait.
	Fetch func(ctx context.Context) (Snapshot[S], error)
	// Apply applies one update to the state. An error puts the state out of
	// sync (cause ApplyFailed).
	Apply func(state *S, u U) error
	// Position reads an update's place in the stream (Key is ignored: one
	// State is one stream), in Shape.
	Position func(u U) wspool.Position
	Shape    wspool.SequenceShape
	// Check, if set, verifies the state after each update is applied (the
	// upstream's checksum); an error puts the state out of sync (cause
	// ChecksumMismatch).
	Check func(state *S, u U) error
	// MaxBuffered bounds the updates kept while out of sync; default 10,000.
	// It must exceed the updates that arrive during a fetch plus how far
	// the snapshots lag the stream, or no snapshot ever lines up.
	// Past it the oldest buffered update is dropped (and counted): the
	// snapshot then has to cover it, and if it does not, the alignment finds
	// the break and fetches again (cause SnapshotBehind). Nothing wrong is
	// ever applied; a bound too small for the fetch time only costs fetches.
	MaxBuffered int
	// Restart bounds how far back a number may go, from the update pushed
	// before it, and still be a duplicate (an overlapping replay, ignored):
	// one more than Restart below it is a restart of the upstream's
	// numbering (cause NewEpoch). Zero: any number below the one pushed
	// before it is a restart. Updates that rise to the snapshot's number
	// (those in flight while it was fetched) are duplicates, not restarts.
	Restart uint64
	// RetryWait is the wait before fetching again after a fetch failed or
	// returned a snapshot older than the buffered updates; default 1s.
	RetryWait time.Duration
	// OnResync, if set, is called for every resync as it starts, and again
	// when it ends (Resync.Done), outside the State's lock, never
	// concurrently with itself.
	OnResync func(Resync)
}

// Cause is why a State resynced.
type Cause uint8

const (
	Start            Cause = iota // the first snapshot
	Gap                           // numbers skipped, or a broken link
	NewEpoch                      // the upstream started numbering again
	ChecksumMismatch              // Check rejected the state
	ApplyFailed                   // Apply returned an error
	SnapshotBehind                // the snapshot was older than the first update buffered
	Requested                     // State.Resync was called
	numCauses
)

var causeNames = [numCauses]string{"start", "gap", "new epoch", "checksum mismatch", "apply failed", "snapshot behind", "requested"}

// String returns the cause's name.
func (c Cause) String() string {
	if c < numCauses {
		return causeNames[c]
	}
	return fmt.Sprintf("Cause(%d)", int(c))
}

// Resync reports one resync: its cause, the last number applied before it
// and the update that revealed it (At, Next). When Done is true it has ended:
// Took is how long the state was out of sync. Err is a failed fetch's error
// (the fetch is retried; Done is false).
type Resync struct {
	Cause Cause
	At    uint64 // the last number applied (0 at Start)
	Next  uint64 // the number of the update that revealed it, if any
	Done  bool
	Took  time.Duration
	Err   error
}

// Stats is a snapshot of a State's counters.
type Stats struct {
	InSync bool
	// Resyncs counts resyncs started, by cause (index by Cause).
	Resyncs [numCauses]int64
	// Fetches counts snapshots fetched, FetchErrors the fetches that failed.
	Fetches, FetchErrors int64
	// Applied counts updates applied, Duplicates those ignored as already
	// applied (or covered by the snapshot, or of an epoch a snapshot of a
	// newer one replaced), Overflowed those dropped from a full buffer.
	Applied, Duplicates, Overflowed int64
	// InSyncTime is the total time in sync, OutOfSyncTime the total time out
	// of sync (the wait for the first snapshot included); LastResyncTook the latest resync's
	// duration, MaxResyncTook the longest.
	InSyncTime, OutOfSyncTime     time.Duration
	LastResyncTook, MaxResyncTook time.Duration
}

// ErrClosed is returned by Push after Close.
var ErrClosed = errors.New("syncstate: closed")

// State is a state kept in sync from a snapshot plus numbered updates. Its
// methods are safe for concurrent use; Apply, Check and Position run under
// its lock and must not call its methods.
type State[S, U any] struct {
	cfg Config[S, U]
	now func() time.Time

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	state  S
	have   bool   // a snapshot was installed
	synced bool   // state is current: updates apply as they come
	last   uint64 // last number applied (or the snapshot's)
	seen   uint64 // number of the update pushed last
	epoch  uint64
	// epochs are the epochs seen so far (updates pushed, snapshots
	// installed), at most maxEpochs, oldest first: epochs have no order, but
	// one never seen is newer than all of them (see installLocked).
	epochs   []uint64
	buf      []U // updates waiting for a snapshot
	fetching bool
	closed   bool
	cause    Cause     // of the resync in progress
	since    time.Time // when the current sync state began
	st       Stats
	reports  []Resync // to deliver, in order, outside the lock

	cbMu sync.Mutex // OnResync, one call at a time, in order
}

// New returns a State; the first Push starts its first fetch. Close stops it.
func New[S, U any](cfg Config[S, U]) (*State[S, U], error) {
	if cfg.Fetch == nil || cfg.Apply == nil || cfg.Position == nil {
		return nil, errors.New("syncstate: Fetch, Apply and Position are required")
	}
	if cfg.Shape > wspool.LinkedIDs {
		return nil, fmt.Errorf("syncstate: unknown shape %v", cfg.Shape)
	}
	if cfg.MaxBuffered < 0 || cfg.RetryWait < 0 {
		return nil, errors.New("syncstate: MaxBuffered and RetryWait must not be negative")
	}
	if cfg.MaxBuffered == 0 {
		cfg.MaxBuffered = 10000
	}
	if cfg.RetryWait == 0 {
		cfg.RetryWait = time.Second
	}
	s := &State[S, U]{cfg: cfg, now: time.Now}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Push hands the State the feed's next update. In sync it is applied now
// (or starts a resync); out of sync it is buffered. It returns ErrClosed
// after Close.
func (s *State[S, U]) Push(u U) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	p := s.position(u)
	prev := s.seen
	s.seen = p.Last
	s.noteEpoch(p.Epoch)
	switch {
	case !s.have && !s.fetching:
		s.buffer(u)
		s.startLocked(Start, 0)
	case !s.synced:
		s.buffer(u)
	default:
		s.stepLocked(u, p, prev)
	}
	s.mu.Unlock()
	s.report()
	return nil
}

// Resync fetches a new snapshot now (cause Requested), unless a fetch is
// already under way.
func (s *State[S, U]) Resync() {
	s.mu.Lock()
	if !s.closed && !s.fetching {
		s.outLocked(Requested, s.last, 0)
	}
	s.mu.Unlock()
	s.report()
}

// InSync reports whether the state is current: a snapshot was applied and
// every update since, with no break.
func (s *State[S, U]) InSync() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

// Read runs f on the state (under the State's lock: f must not keep the
// pointer, nor call the State's methods) and returns the last number
// applied and whether the state is in sync.
func (s *State[S, U]) Read(f func(state *S)) (last uint64, inSync bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f != nil {
		f(&s.state)
	}
	return s.last, s.synced
}

// Stats returns a snapshot of the counters.
func (s *State[S, U]) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	st.InSync = s.synced
	if !s.since.IsZero() {
		if d := s.now().Sub(s.since); s.synced {
			st.InSyncTime += d
		} else {
			st.OutOfSyncTime += d
		}
	}
	return st
}

// Close stops the State: a fetch under way is cancelled and waited for.
func (s *State[S, U]) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}

func (s *State[S, U]) position(u U) wspool.Position {
	p := s.cfg.Position(u)
	if s.cfg.Shape != wspool.NumberRange || p.First > p.Last {
		p.First = p.Last
	}
	return p
}

// maxEpochs bounds the epochs remembered (an upstream that restarts more
// often than that between two snapshots is not told apart from its past).
const maxEpochs = 16

// noteEpoch remembers e as seen.
func (s *State[S, U]) noteEpoch(e uint64) {
	if slices.Contains(s.epochs, e) {
		return
	}
	if len(s.epochs) == maxEpochs {
		s.epochs = append(s.epochs[:0], s.epochs[1:]...)
	}
	s.epochs = append(s.epochs, e)
}

// buffer keeps u for the next snapshot, dropping the oldest past the bound.
func (s *State[S, U]) buffer(u U) {
	if len(s.buf) >= s.cfg.MaxBuffered {
		var zero U
		s.buf[0] = zero
		s.buf = s.buf[1:]
		s.st.Overflowed++
	}
	s.buf = append(s.buf, u)
}

// stepLocked applies u, in sync, or starts a resync; prev is the number of
// the update pushed before it.
func (s *State[S, U]) stepLocked(u U, p wspool.Position, prev uint64) {
	if p.Epoch != s.epoch {
		s.buf = append(s.buf[:0], u)
		s.outLocked(NewEpoch, s.last, p.Last)
		return
	}
	if p.Last <= s.last {
		if p.Last < prev && prev-p.Last > s.cfg.Restart {
			s.buf = append(s.buf[:0], u)
			s.outLocked(NewEpoch, s.last, p.Last)
			return
		}
		s.st.Duplicates++
		return
	}
	if s.broken(p) {
		s.buf = append(s.buf[:0], u)
		s.outLocked(Gap, s.last, p.Last)
		return
	}
	at := s.last
	if c, ok := s.applyLocked(u, p); !ok {
		s.buf = s.buf[:0] // the update is what broke it: the snapshot will include it
		s.outLocked(c, at, p.Last)
	}
}

// broken reports whether p does not follow the last number applied.
func (s *State[S, U]) broken(p wspool.Position) bool {
	switch s.cfg.Shape {
	case wspool.LinkedIDs:
		return p.Prev != s.last
	case wspool.NumberRange:
		return p.First > s.last+1
	}
	return p.Last != s.last+1
}

// applyLocked applies u and checks the result; on failure it returns the
// cause.
func (s *State[S, U]) applyLocked(u U, p wspool.Position) (Cause, bool) {
	if err := s.cfg.Apply(&s.state, u); err != nil {
		return ApplyFailed, false
	}
	s.last = p.Last
	s.st.Applied++
	if s.cfg.Check != nil {
		if err := s.cfg.Check(&s.state, u); err != nil {
			return ChecksumMismatch, false
		}
	}
	return 0, true
}

// outLocked puts the state out of sync for cause and starts a fetch.
func (s *State[S, U]) outLocked(c Cause, at, next uint64) {
	now := s.now()
	if s.synced {
		s.st.InSyncTime += now.Sub(s.since)
		s.since = now
	}
	s.synced = false
	s.startLocked(c, at)
	s.reports[len(s.reports)-1].Next = next
}

// startLocked starts a fetch for cause.
func (s *State[S, U]) startLocked(c Cause, at uint64) {
	if !s.have {
		s.since = s.now()
	}
	s.cause = c
	s.st.Resyncs[c]++
	s.reports = append(s.reports, Resync{Cause: c, At: at})
	if s.fetching {
		return
	}
	s.fetching = true
	s.wg.Add(1)
	go s.fetchLoop()
}

// fetchLoop fetches snapshots until one lines up with the buffered updates.
func (s *State[S, U]) fetchLoop() {
	defer s.wg.Done()
	for {
		snap, err := s.cfg.Fetch(s.ctx)
		if s.ctx.Err() != nil {
			s.mu.Lock()
			s.fetching = false
			s.mu.Unlock()
			return
		}
		s.mu.Lock()
		if err != nil {
			s.st.FetchErrors++
			s.reports = append(s.reports, Resync{Cause: s.cause, At: s.last, Err: err})
			s.mu.Unlock()
			s.report()
			s.pause()
			continue
		}
		s.st.Fetches++
		done := s.installLocked(snap)
		if done {
			s.fetching = false
		}
		s.mu.Unlock()
		s.report()
		if done {
			return
		}
		s.pause()
	}
}

// pause waits RetryWait, or until Close.
func (s *State[S, U]) pause() {
	t := time.NewTimer(s.cfg.RetryWait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.ctx.Done():
	}
}

// installLocked takes snap as the state and applies the buffered updates
// that follow it. It reports whether the state is now in sync; if not, the
// next fetch is due (the cause recorded).
func (s *State[S, U]) installLocked(snap Snapshot[S]) bool {
	s.state, s.last, s.epoch = snap.State, snap.Last, snap.Epoch
	s.have = true
	// The stream is in the epoch of the newest update: a snapshot of an
	// epoch seen before is behind it (taken before the upstream restarted).
	// A snapshot of an epoch never seen is ahead of every buffered update
	// (the upstream restarted after they were sent): they are dropped, and
	// the snapshot is the state.
	newEpoch := !slices.Contains(s.epochs, snap.Epoch)
	s.noteEpoch(snap.Epoch)
	if n := len(s.buf); n > 0 && newEpoch {
		s.st.Duplicates += int64(n)
		clear(s.buf)
		s.buf = s.buf[:0]
	}
	if n := len(s.buf); n > 0 {
		if cur := s.position(s.buf[n-1]); cur.Epoch != snap.Epoch {
			s.buf = slices.DeleteFunc(s.buf, func(u U) bool { return s.position(u).Epoch != cur.Epoch })
			s.cause = SnapshotBehind
			s.st.Resyncs[SnapshotBehind]++
			s.reports = append(s.reports, Resync{Cause: SnapshotBehind, At: s.last, Next: cur.Last})
			return false
		}
	}
	// Updates that the snapshot covers are dropped; the first one kept must
	// follow the snapshot.
	var keep []U
	var rest []wspool.Position
	for _, u := range s.buf {
		p := s.position(u)
		if p.Last <= snap.Last {
			s.st.Duplicates++
			continue
		}
		keep = append(keep, u)
		rest = append(rest, p)
	}
	clear(s.buf)
	s.buf = s.buf[:0]
	for i, u := range keep {
		p := rest[i]
		if s.broken(p) {
			// The snapshot is older than what follows it (i == 0), or the
			// buffered updates have a gap: keep them, fetch again.
			c := Gap
			if i == 0 {
				c = SnapshotBehind
			}
			s.buf = append(s.buf, keep[i:]...)
			s.cause = c
			s.st.Resyncs[c]++
			s.reports = append(s.reports, Resync{Cause: c, At: s.last, Next: p.Last})
			return false
		}
		if c, ok := s.applyLocked(u, p); !ok {
			s.buf = append(s.buf, keep[i+1:]...) // the snapshot to come includes u
			s.cause = c
			s.st.Resyncs[c]++
			s.reports = append(s.reports, Resync{Cause: c, At: s.last, Next: p.Last})
			return false
		}
	}
	now := s.now()
	took := now.Sub(s.since)
	s.st.OutOfSyncTime += took
	s.st.LastResyncTook = took
	s.st.MaxResyncTook = max(s.st.MaxResyncTook, took)
	s.synced, s.since = true, now
	s.reports = append(s.reports, Resync{Cause: s.cause, At: s.last, Done: true, Took: took})
	return true
}

// report delivers the pending reports, in order, outside the lock.
func (s *State[S, U]) report() {
	if s.cfg.OnResync == nil {
		s.mu.Lock()
		s.reports = s.reports[:0]
		s.mu.Unlock()
		return
	}
	s.cbMu.Lock()
	defer s.cbMu.Unlock()
	for {
		s.mu.Lock()
		rs := s.reports
		s.reports = nil
		s.mu.Unlock()
		if len(rs) == 0 {
			return
		}
		for _, r := range rs {
			s.cfg.OnResync(r)
		}
	}
}

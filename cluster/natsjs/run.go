package natsjs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wspool/wspool"
)

// ErrAlreadyRunning is returned by a second call of Member.Run.
var ErrAlreadyRunning = errors.New("natsjs: member already running")

// entry is what a member knows of one key of the leases bucket.
type entry struct {
	val  string
	rev  uint64
	seen time.Duration // member's monotonic time when rev was first seen
	gone bool          // deleted or purged
}

// shardRun is a slot lease this member holds and the feeds it runs for it.
type shardRun struct {
	shard, slot int
	key         string
	rev         atomic.Uint64 // the fencing token
	deadline    atomic.Int64  // member monotonic ns until which the lease is proven
	stopped     atomic.Bool   // lease lost, fenced or released: publish nothing
	handing     atomic.Bool   // being handed over: messages are left to the next owner
	quit        chan struct{} // closed when publishing stops (lost, fenced, handed over)
	quitOnce    sync.Once
	releasing   bool // loop-owned: a hand-over is under way

	mu    sync.Mutex
	feeds map[string]*feedRun
}

// halt wakes publishers waiting to retry: publishing has stopped.
func (s *shardRun) halt() { s.quitOnce.Do(func() { close(s.quit) }) }

// proven reports whether the lease may still be acted on.
func (s *shardRun) proven(now time.Duration) bool {
	return !s.stopped.Load() && int64(now) < s.deadline.Load()
}

// run is the state of one Member.Run. The loop goroutine owns view,
// desired, keyNames and held; the renewer goroutine renews what is in renew.
type run struct {
	m        *Member
	pool     *wspool.Pool
	view     map[string]*entry // leases bucket
	desired  map[string]Feed   // feed name -> feed
	byShard  map[int][]string  // shard -> names of its desired feeds
	keyNames map[string]string // feeds bucket key -> feed name
	held     map[int]*shardRun

	mu    sync.Mutex
	renew map[*shardRun]struct{}

	lw, fw     jetstream.KeyWatcher // loop-owned, replaced when the connection comes back
	stopWatch  context.CancelFunc   // ends lw and fw
	rewatch    bool                 // the watchers are to be started again
	down       bool                 // the NATS connection was seen down
	blind      bool                 // reconnected, but the watchers are not back yet
	reconnects uint64               // the connection's reconnect count last seen
	// Claims back off while they fail for other reasons than a race
	// (NATS unavailable): claimAfter is the member time before which none
	// is sent, claimBackoff the current pause (TTL/10 doubling to TTL/2).
	claimAfter, claimBackoff time.Duration

	registered     atomic.Bool
	memberDeadline atomic.Int64
	renewEvery     time.Duration
	released       chan *shardRun // hand-overs done in the background
	bg             sync.WaitGroup // background feed stops and hand-overs
}

func (r *run) memberKey() string     { return "m." + r.m.cfg.Member }
func slotKey(shard, slot int) string { return "s." + strconv.Itoa(shard) + "." + strconv.Itoa(slot) }

// Run takes part in the cluster until ctx ends: it registers the member,
// renews its leases, claims the shards it ranks for and runs their feeds,
// and publishes their messages. When ctx ends it stops its feeds and deletes
// its member key and leases, so that the other members take over at once;
// then it returns nil. It returns an error if the buckets or the stream
// cannot be set up, or a watcher of the buckets fails.
func (m *Member) Run(ctx context.Context) error {
	if m.cfg.Member == "" {
		return errors.New("natsjs: Config.Member is required to run")
	}
	if !m.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	if err := m.setup(ctx); err != nil {
		return err
	}
	pool, err := wspool.NewPool(m.cfg.PoolOptions...)
	if err != nil {
		return fmt.Errorf("natsjs: %w", err)
	}
	poolCtx, poolCancel := context.WithCancel(context.Background())
	poolDone := make(chan error, 1)
	go func() { poolDone <- pool.Run(poolCtx) }()
	defer func() {
		poolCancel()
		<-poolDone
	}()

	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	r := &run{
		m: m, pool: pool,
		view: map[string]*entry{}, desired: map[string]Feed{}, byShard: map[int][]string{}, keyNames: map[string]string{},
		held:       map[int]*shardRun{},
		renew:      map[*shardRun]struct{}{},
		renewEvery: m.cfg.TTL / 4,
		released:   make(chan *shardRun),
		reconnects: m.nc.Stats().Reconnects,
	}
	if err := r.watch(wctx); err != nil {
		return err
	}
	defer r.stopWatchers()
	// Learn the current members, leases and feeds before claiming anything:
	// the watchers first deliver every key's current value, then nil.
	for lDone, fDone := false, false; !lDone || !fDone; {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-r.lw.Updates():
			if !ok {
				return errors.New("natsjs: leases watcher ended")
			}
			lDone = lDone || e == nil
			r.applyLease(e)
		case e, ok := <-r.fw.Updates():
			if !ok {
				return errors.New("natsjs: feeds watcher ended")
			}
			fDone = fDone || e == nil
			r.applyFeed(e)
		}
	}
	r.register(ctx)

	rctx, rcancel := context.WithCancel(context.Background())
	renewerDone := make(chan struct{})
	go func() {
		defer close(renewerDone)
		r.renewer(rctx)
	}()
	stopRenewer := func() {
		rcancel()
		<-renewerDone
	}

	ticker := time.NewTicker(m.cfg.TTL / 10)
	defer ticker.Stop()
	dirty := true
	for {
		lupd, fupd := r.updates()
		if err := r.checkConn(wctx); err != nil {
			stopRenewer()
			r.shutdown()
			return err
		}
		if dirty && len(lupd) == 0 && len(fupd) == 0 {
			r.reconcile(ctx)
			dirty = false
		}
		select {
		case <-ctx.Done():
			stopRenewer()
			r.shutdown()
			return nil
		case e, ok := <-lupd:
			if !ok {
				r.lost("leases")
				continue
			}
			r.applyLease(e)
		case e, ok := <-fupd:
			if !ok {
				r.lost("feeds")
				continue
			}
			r.applyFeed(e)
		case sr := <-r.released:
			r.forget(sr)
		case <-m.kickCh:
			r.checkStopped(ctx)
		case <-ticker.C:
			r.checkStopped(ctx)
		}
		dirty = true
	}
}

// watch starts the watchers of both buckets (they deliver every key's
// current value, then nil, then the changes).
// The watchers live as long as the context they are made with.
func (r *run) watch(ctx context.Context) error {
	m := r.m
	wctx, cancel := context.WithCancel(ctx)
	lw, err := m.leases.WatchAll(wctx)
	if err != nil {
		cancel()
		return fmt.Errorf("natsjs: watch leases: %w", err)
	}
	fw, err := m.feedsKV.WatchAll(wctx)
	if err != nil {
		lw.Stop()
		cancel()
		return fmt.Errorf("natsjs: watch feeds: %w", err)
	}
	r.stopWatchers()
	r.lw, r.fw, r.stopWatch = lw, fw, cancel
	return nil
}

func (r *run) stopWatchers() {
	if r.lw != nil {
		r.lw.Stop()
		r.fw.Stop()
		r.stopWatch()
		r.lw, r.fw, r.stopWatch = nil, nil, nil
	}
}

// updates returns the channels the loop reads: none while the watchers are
// to be replaced.
func (r *run) updates() (l, f <-chan jetstream.KeyValueEntry) {
	if r.lw == nil || r.rewatch {
		return nil, nil
	}
	return r.lw.Updates(), r.fw.Updates()
}

// lost notes that a watcher ended (its consumer was lost, e.g. with the
// server): both are started again at the next check.
func (r *run) lost(which string) {
	if !r.rewatch {
		r.m.log.Warn("natsjs: watcher ended, starting it again", "bucket", which)
	}
	r.rewatch = true
}

// checkConn follows the NATS connection. While it is down the member is
// blind: nothing it sees (or does not see) can be trusted, so it claims
// nothing. Once it is back (a reconnect, possibly to a restarted server) the
// watchers are started again at once (a watcher's consumer does not survive
// a server restart, and would only be replaced after missed heartbeats), and
// every member and lease key counts as seen now: the time NATS was away is
// not silence of their holders, who could not write either. A member that
// died meanwhile is then taken over a TTL after NATS is back. It returns an
// error only when a bucket is gone (memory storage lost on a restart).
func (r *run) checkConn(ctx context.Context) error {
	m := r.m
	if m.nc.Status() != nats.CONNECTED {
		r.down = true
		return nil
	}
	if n := m.nc.Stats().Reconnects; n != r.reconnects || r.down {
		r.reconnects, r.down = n, false
		r.seenNow()
		r.claimBackoff, r.claimAfter = 0, 0
		r.rewatch, r.blind = true, true
		m.log.Info("natsjs: NATS connection back, watching the buckets again")
	}
	if !r.rewatch {
		return nil
	}
	if err := r.watch(ctx); err != nil {
		if bucketGone(err) {
			return fmt.Errorf("%w (with memory storage a NATS restart loses the buckets and the stream)", err)
		}
		m.log.Debug("natsjs: watchers not started, will retry", "err", err)
		return nil
	}
	// Keys written while nobody watched arrive with the new watchers'
	// first values. After a reconnect JetStream may have answered only
	// now (a restarted server recovers its streams first): the time until
	// then was not silence either.
	r.rewatch = false
	if r.blind {
		r.blind = false
		r.seenNow()
		// Register at once (the renewer would within TTL/4): until its
		// key is proven again the member claims nothing, not even its
		// own leases back.
		r.register(ctx)
	}
	return nil
}

// bucketGone reports whether a watch failed because its bucket's stream
// does not exist.
func bucketGone(err error) bool {
	return errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, nats.ErrStreamNotFound)
}

// seenNow counts every member and lease key as seen now.
func (r *run) seenNow() {
	now := r.m.mono()
	for _, e := range r.view {
		e.seen = now
	}
}

// register writes the member key.
func (r *run) register(ctx context.Context) {
	sent := r.m.mono()
	cctx, cancel := context.WithTimeout(ctx, r.renewEvery)
	defer cancel()
	if _, err := r.m.leases.Put(cctx, r.memberKey(), []byte(r.m.cfg.Member)); err != nil {
		r.m.log.Warn("natsjs: member key not written", "err", err)
		return
	}
	r.memberDeadline.Store(int64(sent + r.m.cfg.TTL - r.m.cfg.Margin))
	r.registered.Store(true)
}

// renewer renews the member key and every held lease every TTL/4, in
// parallel, each attempt bounded by that interval. It never waits for feeds,
// so a busy loop cannot delay a renewal.
func (r *run) renewer(ctx context.Context) {
	t := time.NewTicker(r.renewEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.renewOnce(ctx)
	}
}

func (r *run) renewOnce(ctx context.Context) {
	m := r.m
	r.mu.Lock()
	held := make([]*shardRun, 0, len(r.renew))
	for sr := range r.renew {
		if !sr.stopped.Load() {
			held = append(held, sr)
		}
	}
	r.mu.Unlock()
	sent := m.mono()
	revs := make([]uint64, len(held))
	errs := make([]error, len(held))
	var memberErr error
	var wg sync.WaitGroup
	cctx, cancel := context.WithTimeout(ctx, r.renewEvery)
	defer cancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, memberErr = m.leases.Put(cctx, r.memberKey(), []byte(m.cfg.Member))
	}()
	for i, sr := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			revs[i], errs[i] = r.renewLease(cctx, sr)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	now := m.mono()
	if memberErr == nil {
		r.memberDeadline.Store(int64(sent + m.cfg.TTL - m.cfg.Margin))
		r.registered.Store(true)
	} else if r.registered.Load() && int64(now) >= r.memberDeadline.Load() {
		r.registered.Store(false) // we drop out of our own view of the live members
		m.log.Warn("natsjs: member key not renewed in time", "err", memberErr)
	}
	kick := false
	for i, sr := range held {
		err := errs[i]
		switch {
		case err == nil:
			sr.rev.Store(revs[i])
			sr.deadline.Store(int64(sent + m.cfg.TTL - m.cfg.Margin))
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound):
			if sr.stopped.CompareAndSwap(false, true) {
				sr.halt()
				m.stats.lost.Add(1)
				m.log.Warn("natsjs: lease lost", "shard", sr.shard, "err", err)
				kick = true
			}
		case int64(now) >= sr.deadline.Load():
			if sr.stopped.CompareAndSwap(false, true) {
				sr.halt()
				m.stats.fenced.Add(1)
				m.log.Warn("natsjs: lease not proven in time, fencing", "shard", sr.shard, "err", err)
				kick = true
			}
		default:
			m.log.Debug("natsjs: renewal failed, will retry", "shard", sr.shard, "err", err)
		}
	}
	if kick {
		m.kick()
	}
}

// renewLease renews one lease. A renewal that JetStream stored but whose
// acknowledgement was lost (a NATS leader lost mid-write; the new leader
// commits what the old one had replicated) leaves us behind our own lease's
// revision: the next Update is refused. If the key still holds our holder
// value (our name and this Member's random id) at a newer revision, that
// write was ours (nobody else writes that value, and an Update with a
// revision the key no longer has is refused), so the renewal is retried at
// that revision. Another process under our name (a restarted member whose
// predecessor still runs) writes another id: that lease is lost to us.
func (r *run) renewLease(ctx context.Context, sr *shardRun) (uint64, error) {
	m := r.m
	rev, err := m.leases.Update(ctx, sr.key, []byte(m.holder), sr.rev.Load())
	if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return rev, err
	}
	g, gerr := m.leases.Get(ctx, sr.key)
	if gerr != nil || string(g.Value()) != m.holder || g.Revision() <= sr.rev.Load() {
		return 0, err
	}
	m.log.Debug("natsjs: lease renewed behind our back, renewing from its revision", "shard", sr.shard, "rev", g.Revision())
	return m.leases.Update(ctx, sr.key, []byte(m.holder), g.Revision())
}

// see records a value of a leases key if it is newer than what we know.
func (r *run) see(key, val string, rev uint64, gone bool) *entry {
	cur := r.view[key]
	if cur != nil && rev <= cur.rev {
		return cur
	}
	e := &entry{val: val, rev: rev, seen: r.m.mono(), gone: gone}
	r.view[key] = e
	return e
}

func (r *run) applyLease(e jetstream.KeyValueEntry) {
	if e == nil {
		return
	}
	gone := e.Operation() != jetstream.KeyValuePut
	ent := r.see(e.Key(), string(e.Value()), e.Revision(), gone)
	if ent.rev != e.Revision() {
		return // old news
	}
	// Someone else wrote a lease we hold: it is lost.
	for _, sr := range r.held {
		if sr.key == e.Key() && e.Revision() > sr.rev.Load() && (gone || ent.val != r.m.holder) {
			if sr.stopped.CompareAndSwap(false, true) {
				r.m.stats.lost.Add(1)
				r.m.log.Warn("natsjs: lease taken by another member", "shard", sr.shard, "by", ent.val)
			}
			if !sr.releasing {
				r.drop(sr)
			}
		}
	}
}

func (r *run) applyFeed(e jetstream.KeyValueEntry) {
	if e == nil {
		return
	}
	key := e.Key()
	if e.Operation() != jetstream.KeyValuePut {
		name, ok := r.keyNames[key]
		if !ok {
			return
		}
		delete(r.keyNames, key)
		delete(r.desired, name)
		sh := shardOf(name, r.m.cfg.Shards)
		if i := slices.Index(r.byShard[sh], name); i >= 0 {
			r.byShard[sh] = slices.Delete(r.byShard[sh], i, i+1)
		}
		if sr := r.held[sh]; sr != nil && !sr.releasing {
			r.stopFeeds(sr, false, name)
		}
		return
	}
	var f Feed
	if err := json.Unmarshal(e.Value(), &f); err != nil || f.Name == "" {
		r.m.log.Warn("natsjs: bad feed entry", "key", key, "err", err)
		return
	}
	old, had := r.desired[f.Name]
	r.keyNames[key] = f.Name
	r.desired[f.Name] = f
	if !had {
		sh := shardOf(f.Name, r.m.cfg.Shards)
		r.byShard[sh] = append(r.byShard[sh], f.Name)
	}
	sr := r.held[shardOf(f.Name, r.m.cfg.Shards)]
	if sr == nil || sr.releasing || sr.stopped.Load() {
		return
	}
	if had && old != f {
		r.stopFeeds(sr, true, f.Name)
	}
	sr.mu.Lock()
	_, running := sr.feeds[f.Name]
	sr.mu.Unlock()
	if !running {
		r.startFeed(sr, f)
	}
}

// live returns the live members, sorted: member keys seen written within the
// TTL, plus this member while its own key is proven.
func (r *run) live(now time.Duration) []string {
	var out []string
	for k, e := range r.view {
		if !strings.HasPrefix(k, "m.") || e.gone || now-e.seen >= r.m.cfg.TTL {
			continue
		}
		if e.val == r.m.cfg.Member {
			continue
		}
		out = append(out, e.val)
	}
	if r.registered.Load() && int64(now) < r.memberDeadline.Load() {
		out = append(out, r.m.cfg.Member)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// claimResult is the outcome of one claim attempt.
type claimResult struct {
	shard, slot int
	prev        *entry
	sent        time.Duration
	rev         uint64
	err         error
}

// reconcile claims the slots this member ranks for and hands over those it
// no longer ranks for once their rightful member is there to take them.
func (r *run) reconcile(ctx context.Context) {
	m := r.m
	me := m.cfg.Member
	now := m.mono()
	live := r.live(now)
	registered := slices.Contains(live, me)
	var claims []claimResult
	for shard := 0; shard < m.cfg.Shards; shard++ {
		top := topN(live, shard, m.cfg.Slots)
		inTop := slices.Contains(top, me)
		holders := map[string]bool{}
		var free []int
		orphan := -1
		for slot := 0; slot < m.cfg.Slots; slot++ {
			e := r.view[slotKey(shard, slot)]
			switch {
			case e == nil || e.gone || now-e.seen >= m.cfg.TTL:
				free = append(free, slot)
			case holderName(e.val) == me && r.held[shard] == nil:
				orphan = slot // ours from an earlier run
			default:
				holders[holderName(e.val)] = true
			}
		}
		if sr := r.held[shard]; sr != nil {
			if inTop || !registered || sr.releasing {
				continue
			}
			for _, t := range top {
				if !holders[t] && t != me {
					r.release(sr)
					break
				}
			}
			continue
		}
		switch {
		case orphan >= 0 && inTop && registered:
			claims = append(claims, claimResult{shard: shard, slot: orphan})
		case orphan >= 0:
			rev := r.view[slotKey(shard, orphan)].rev
			key := slotKey(shard, orphan)
			r.bg.Add(1)
			go func() {
				defer r.bg.Done()
				cctx, cancel := context.WithTimeout(context.Background(), r.renewEvery)
				defer cancel()
				_ = m.leases.Delete(cctx, key, jetstream.LastRevision(rev))
			}()
		case inTop && registered && len(free) > 0:
			// Members that hold no slot yet try different free slots first.
			claims = append(claims, claimResult{shard: shard, slot: free[0]})
		}
	}
	if len(claims) == 0 || r.down || r.blind || now < r.claimAfter {
		return
	}
	// Claim all at once (a takeover of many shards costs one round trip),
	// and start each shard's feeds as soon as its own claim is answered.
	done := make(chan *claimResult, len(claims))
	for i := range claims {
		c := &claims[i]
		c.prev = r.view[slotKey(c.shard, c.slot)]
		go func() {
			r.claim(ctx, c)
			done <- c
		}()
	}
	won, unavailable := false, false
	for range claims {
		c := <-done
		r.claimed(c)
		switch {
		case c.err == nil:
			won = true
		case !errors.Is(c.err, jetstream.ErrKeyExists) && !errors.Is(c.err, jetstream.ErrKeyRevisionMismatch):
			unavailable = true
		}
	}
	// No claim storm while NATS does not answer: the next round waits,
	// longer after each round that failed that way.
	if won || !unavailable {
		r.claimBackoff, r.claimAfter = 0, 0
		return
	}
	r.claimBackoff = min(max(2*r.claimBackoff, m.cfg.TTL/10), m.cfg.TTL/2)
	r.claimAfter = m.mono() + r.claimBackoff
	m.log.Debug("natsjs: claims failed, backing off", "claims", len(claims), "backoff", r.claimBackoff, "err", claims[0].err)
}

// claim tries to take a slot lease: Create for a missing or deleted key,
// Update with the revision last seen for an expired one (so that a renewal
// that raced us wins). It runs outside the loop and touches no loop state.
func (r *run) claim(ctx context.Context, c *claimResult) {
	m := r.m
	key := slotKey(c.shard, c.slot)
	cctx, cancel := context.WithTimeout(ctx, r.renewEvery)
	defer cancel()
	c.sent = m.mono()
	if c.prev == nil || c.prev.gone {
		c.rev, c.err = m.leases.Create(cctx, key, []byte(m.holder))
		return
	}
	c.rev, c.err = m.leases.Update(cctx, key, []byte(m.holder), c.prev.rev)
	if errors.Is(c.err, jetstream.ErrKeyRevisionMismatch) || errors.Is(c.err, jetstream.ErrKeyNotFound) {
		// Expired on the server, or written meanwhile: Create tells.
		c.rev, c.err = m.leases.Create(cctx, key, []byte(m.holder))
	}
	r.claimReadBack(cctx, c)
}

// claimReadBack handles a claim refused because the key is not what we
// last saw: like a renewal (see renewLease), it reads the key, and if the
// write we did not hear of was our own (our holder value), it claims at the
// key's revision.
// Writes that land unheard (a create or renewal whose answer was lost with
// a NATS server) would otherwise keep every claim failing until the key
// expires on the server.
func (r *run) claimReadBack(ctx context.Context, c *claimResult) {
	if !errors.Is(c.err, jetstream.ErrKeyExists) && !errors.Is(c.err, jetstream.ErrKeyRevisionMismatch) {
		return
	}
	m := r.m
	g, err := m.leases.Get(ctx, slotKey(c.shard, c.slot))
	if err != nil {
		return
	}
	if string(g.Value()) != m.holder {
		return
	}
	m.log.Debug("natsjs: claimed lease written behind our back, claiming from its revision", "shard", c.shard, "rev", g.Revision())
	c.rev, c.err = m.leases.Update(ctx, slotKey(c.shard, c.slot), []byte(m.holder), g.Revision())
}

// claimed applies a claim's outcome in the loop.
func (r *run) claimed(c *claimResult) {
	m := r.m
	key := slotKey(c.shard, c.slot)
	if c.err != nil {
		m.log.Debug("natsjs: claim failed", "shard", c.shard, "slot", c.slot, "err", c.err)
		return
	}
	if r.held[c.shard] != nil {
		return // cannot happen: one claim per shard at a time
	}
	switch e := c.prev; {
	case e != nil && !e.gone && holderName(e.val) != m.cfg.Member:
		m.stats.takeovers.Add(1)
	case e != nil && e.gone:
		m.stats.handovers.Add(1)
	}
	m.stats.acquired.Add(1)
	sr := &shardRun{shard: c.shard, slot: c.slot, key: key, feeds: map[string]*feedRun{}, quit: make(chan struct{})}
	sr.rev.Store(c.rev)
	sr.deadline.Store(int64(c.sent + m.cfg.TTL - m.cfg.Margin))
	r.held[c.shard] = sr
	r.mu.Lock()
	r.renew[sr] = struct{}{}
	r.mu.Unlock()
	m.stats.held.Add(1)
	r.see(key, m.holder, c.rev, false)
	m.log.Debug("natsjs: lease acquired", "shard", c.shard, "slot", c.slot, "rev", c.rev)
	for _, n := range r.byShard[c.shard] {
		r.startFeed(sr, r.desired[n])
	}
}

func (r *run) startFeed(sr *shardRun, f Feed) {
	fr := newFeedRun(r.m, sr, f)
	opts, err := r.m.feedOptions(f)
	if err != nil {
		r.m.log.Error("natsjs: feed not started", "feed", f.Name, "err", err)
		return
	}
	opts = append(slices.Clip(opts), wspool.WithName(f.Name), wspool.WithRequestFunc(fr.request))
	sr.mu.Lock()
	defer sr.mu.Unlock()
	if _, err := r.pool.Add(f.URL, fr.handle, opts...); err != nil {
		r.m.log.Error("natsjs: feed not started", "feed", f.Name, "err", err)
		return
	}
	sr.feeds[f.Name] = fr
	r.m.stats.feeds.Add(1)
}

// stopFeeds stops the named feeds of sr (all of them if none are named), in
// parallel; with wait it returns once they are closed.
func (r *run) stopFeeds(sr *shardRun, wait bool, names ...string) {
	sr.mu.Lock()
	if len(names) == 0 {
		for n := range sr.feeds {
			names = append(names, n)
		}
	}
	var stop []string
	for _, n := range names {
		if _, ok := sr.feeds[n]; ok {
			delete(sr.feeds, n)
			stop = append(stop, n)
		}
	}
	sr.mu.Unlock()
	r.m.stats.feeds.Add(-int64(len(stop)))
	var wg sync.WaitGroup
	for _, n := range stop {
		wg.Add(1)
		r.bg.Add(1)
		go func() {
			defer r.bg.Done()
			defer wg.Done()
			// Remove starts the feed's stop; its Done says when the feed
			// has stopped delivering (and publishing).
			c := r.pool.Client(n)
			if r.pool.Remove(n) == nil && c != nil {
				<-c.Done()
			}
		}()
	}
	if wait {
		wg.Wait()
	}
}

// forget removes a lease from the loop's and the renewer's sets.
func (r *run) forget(sr *shardRun) {
	if r.held[sr.shard] == sr {
		delete(r.held, sr.shard)
		r.m.stats.held.Add(-1)
	}
	r.mu.Lock()
	delete(r.renew, sr)
	r.mu.Unlock()
}

// drop gives up a lease that is lost or unproven: publishing stops at once,
// the feeds are stopped in the background, and the key is left alone.
func (r *run) drop(sr *shardRun) {
	sr.stopped.Store(true)
	sr.halt()
	r.forget(sr)
	r.stopFeeds(sr, false)
}

// release hands a lease over in the background: the feeds stop (their last
// messages are published first), then the key is deleted so that the next
// member claims it at once. The lease stays renewed meanwhile.
func (r *run) release(sr *shardRun) {
	sr.releasing = true
	r.bg.Add(1)
	go func() {
		defer r.bg.Done()
		r.handOver(sr)
		r.released <- sr
	}()
}

func (r *run) handOver(sr *shardRun) {
	if !r.quiesce(sr) {
		return // lost meanwhile: the key is not ours to delete
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.renewEvery)
	defer cancel()
	err := r.deleteLease(ctx, sr)
	r.stopFeeds(sr, true)
	if err != nil {
		r.m.log.Warn("natsjs: lease not released", "shard", sr.shard, "err", err)
		return
	}
	r.m.stats.released.Add(1)
}

// deleteLease deletes a lease this member holds, guarded by its revision. A
// renewal that was under way when the lease stopped may have moved the
// revision on without our knowing: then the key is read back and, if it is
// still ours, deleted at its current revision.
func (r *run) deleteLease(ctx context.Context, sr *shardRun) error {
	rev := sr.rev.Load()
	var err error
	for try := 0; try < 4; try++ {
		err = r.m.leases.Delete(ctx, sr.key, jetstream.LastRevision(rev))
		if err == nil || !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return err
		}
		g, gerr := r.m.leases.Get(ctx, sr.key)
		if gerr != nil {
			return gerr
		}
		if string(g.Value()) != r.m.holder {
			return err // someone else's now
		}
		rev = g.Revision()
	}
	return err
}

// quiesce stops sr's publishing for a hand-over: no publish starts from now
// on (the next owner resumes from the stream), and it returns once the
// publishes under way have finished, so that the lease can be deleted before
// the feeds' close handshakes. It reports false if the lease was lost
// meanwhile.
func (r *run) quiesce(sr *shardRun) bool {
	sr.handing.Store(true)
	sr.halt()
	if !sr.stopped.CompareAndSwap(false, true) {
		return false
	}
	sr.mu.Lock()
	frs := make([]*feedRun, 0, len(sr.feeds))
	for _, fr := range sr.feeds {
		frs = append(frs, fr)
	}
	sr.mu.Unlock()
	for _, fr := range frs {
		fr.mu.Lock()
		//lint:ignore SA2001 the empty section waits for the publish under way
		fr.mu.Unlock()
	}
	return true
}

// checkStopped drops leases the renewer found lost or unproven, and handles
// feeds that stopped publishing (fenced by the clock or refused by the
// stream): if the lease is no longer ours the shard is dropped; if it still
// is, those feeds restart from what the stream holds.
func (r *run) checkStopped(ctx context.Context) {
	type check struct {
		sr      *shardRun
		refused []string
		val     string
		err     error
	}
	var checks []*check
	for _, sr := range r.held {
		if sr.releasing {
			continue
		}
		if sr.stopped.Load() {
			r.drop(sr)
			continue
		}
		var refused []string
		sr.mu.Lock()
		for n, fr := range sr.feeds {
			if fr.refused.Load() {
				refused = append(refused, n)
			}
		}
		sr.mu.Unlock()
		if len(refused) > 0 {
			checks = append(checks, &check{sr: sr, refused: refused})
		}
	}
	if len(checks) == 0 {
		return
	}
	// The key tells whether the lease is still ours: it is while it holds
	// our holder value (see renewLease), even at a revision newer than the
	// one we know, which a renewal under way or one stored without our
	// hearing back (a NATS leader lost mid-write) explains. The keys are read in parallel; one that cannot be read now
	// (NATS unavailable) is read again at the next check, and meanwhile the
	// renewer fences the lease if it stays unproven.
	cctx, cancel := context.WithTimeout(ctx, r.renewEvery)
	var wg sync.WaitGroup
	for _, c := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g, err := r.m.leases.Get(cctx, c.sr.key)
			if err == nil {
				c.val = string(g.Value())
			}
			c.err = err
		}()
	}
	wg.Wait()
	cancel()
	for _, c := range checks {
		sr := c.sr
		if sr.stopped.Load() {
			continue // the renewer found it lost or unproven: dropped at the next check
		}
		if c.err != nil && !errors.Is(c.err, jetstream.ErrKeyNotFound) {
			r.m.log.Debug("natsjs: lease not read, will retry", "shard", sr.shard, "err", c.err)
			continue
		}
		if c.err != nil || c.val != r.m.holder {
			if sr.stopped.CompareAndSwap(false, true) {
				r.m.stats.lost.Add(1)
				r.m.log.Warn("natsjs: lease lost (found after the stream refused a publish)", "shard", sr.shard, "by", c.val, "err", c.err)
			}
			r.drop(sr)
			continue
		}
		r.stopFeeds(sr, true, c.refused...)
		for _, n := range c.refused {
			if f, ok := r.desired[n]; ok {
				r.startFeed(sr, f)
			}
		}
	}
}

// shutdown hands everything over: the member key goes first (so nobody ranks
// this member any more), then each shard's feeds stop and its lease is
// deleted at once.
func (r *run) shutdown() {
	m := r.m
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = m.leases.Delete(ctx, r.memberKey())
	var wg sync.WaitGroup
	for _, sr := range r.held {
		if sr.releasing {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r.quiesce(sr) {
				if err := r.deleteLease(ctx, sr); err == nil {
					m.stats.released.Add(1)
				}
			}
			r.stopFeeds(sr, true)
		}()
	}
	wg.Wait()
	// Hand-overs already under way finish and report to a loop that is gone.
	go func() {
		for range r.released {
		}
	}()
	r.bg.Wait()
	close(r.released)
	m.stats.held.Store(0)
	r.held = map[int]*shardRun{}
}

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
	rev         atomic.Uint64 // the fencing token (publishers read it)
	deadline    atomic.Int64  // member monotonic ns until which the lease is proven
	stopped     atomic.Bool   // lease lost, fenced or released: publish nothing
	feeds       map[string]*feedRun
}

// proven reports whether the lease may still be acted on.
func (s *shardRun) proven(now time.Duration) bool {
	return !s.stopped.Load() && int64(now) < s.deadline.Load()
}

// run is the state of one Member.Run, owned by its loop goroutine.
type run struct {
	m        *Member
	pool     *wspool.Pool
	view     map[string]*entry // leases bucket
	desired  map[string]Feed   // feed name -> feed
	keyNames map[string]string // feeds bucket key -> feed name
	held     map[int]*shardRun

	registered     bool
	memberDeadline time.Duration
	renewEvery     time.Duration
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
	lw, err := m.leases.WatchAll(wctx)
	if err != nil {
		return fmt.Errorf("natsjs: watch leases: %w", err)
	}
	defer lw.Stop()
	fw, err := m.feedsKV.WatchAll(wctx)
	if err != nil {
		return fmt.Errorf("natsjs: watch feeds: %w", err)
	}
	defer fw.Stop()

	r := &run{
		m: m, pool: pool,
		view: map[string]*entry{}, desired: map[string]Feed{}, keyNames: map[string]string{},
		held:       map[int]*shardRun{},
		renewEvery: m.cfg.TTL / 4,
	}
	check := m.cfg.TTL / 10
	ticker := time.NewTicker(check)
	defer ticker.Stop()
	r.register(ctx)
	nextRenew := m.mono() + r.renewEvery
	// Claim nothing until the member keys of the others had time to arrive
	// (the initial values of the watcher, and one renewal round).
	settle := m.mono() + r.renewEvery
	dirty := false
	for {
		select {
		case <-ctx.Done():
			r.shutdown()
			return nil
		case e, ok := <-lw.Updates():
			if !ok {
				r.shutdown()
				return errors.New("natsjs: leases watcher ended")
			}
			r.applyLease(e)
			dirty = true
		case e, ok := <-fw.Updates():
			if !ok {
				r.shutdown()
				return errors.New("natsjs: feeds watcher ended")
			}
			r.applyFeed(e)
			dirty = true
		case <-m.kickCh:
			r.checkFenced(ctx)
			dirty = true
		case <-ticker.C:
			if m.mono() >= nextRenew {
				r.renew(ctx)
				nextRenew = m.mono() + r.renewEvery
			}
			dirty = true
		}
		if dirty && len(lw.Updates()) == 0 && len(fw.Updates()) == 0 && m.mono() >= settle {
			r.reconcile(ctx)
			dirty = false
		}
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
	r.registered = true
	r.memberDeadline = sent + r.m.cfg.TTL - r.m.cfg.Margin
}

// renew renews the member key and every held lease, in parallel, each bounded
// by the renewal interval.
func (r *run) renew(ctx context.Context) {
	m := r.m
	sent := m.mono()
	type result struct {
		sr  *shardRun
		rev uint64
		err error
	}
	held := make([]*shardRun, 0, len(r.held))
	for _, sr := range r.held {
		held = append(held, sr)
	}
	res := make([]result, len(held))
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
			rev, err := m.leases.Update(cctx, sr.key, []byte(m.cfg.Member), sr.rev.Load())
			res[i] = result{sr, rev, err}
		}()
	}
	wg.Wait()
	now := m.mono()
	if memberErr == nil {
		r.registered = true
		r.memberDeadline = sent + m.cfg.TTL - m.cfg.Margin
	} else if r.registered && now >= r.memberDeadline {
		r.registered = false // we drop out of our own view of the live members
		m.log.Warn("natsjs: member key not renewed in time", "err", memberErr)
	}
	for _, x := range res {
		switch {
		case x.err == nil:
			x.sr.rev.Store(x.rev)
			x.sr.deadline.Store(int64(sent + m.cfg.TTL - m.cfg.Margin))
			r.see(x.sr.key, m.cfg.Member, x.rev, false)
		case errors.Is(x.err, jetstream.ErrKeyRevisionMismatch) || errors.Is(x.err, jetstream.ErrKeyNotFound):
			m.stats.lost.Add(1)
			m.log.Warn("natsjs: lease lost", "shard", x.sr.shard, "err", x.err)
			r.drop(x.sr)
		case now >= time.Duration(x.sr.deadline.Load()):
			m.stats.fenced.Add(1)
			m.log.Warn("natsjs: lease not proven in time, fencing", "shard", x.sr.shard, "err", x.err)
			r.drop(x.sr)
		default:
			m.log.Debug("natsjs: renewal failed, will retry", "shard", x.sr.shard, "err", x.err)
		}
	}
	// Leases whose deadline passed without any renewal attempt finishing
	// (they are checked here too, since the loop may have been busy).
	for _, sr := range r.held {
		if now >= time.Duration(sr.deadline.Load()) {
			m.stats.fenced.Add(1)
			r.drop(sr)
		}
	}
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
		if sr.key == e.Key() && e.Revision() > sr.rev.Load() && (gone || ent.val != r.m.cfg.Member) {
			r.m.stats.lost.Add(1)
			r.m.log.Warn("natsjs: lease taken by another member", "shard", sr.shard, "by", ent.val)
			r.drop(sr)
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
		if sr := r.held[shardOf(name, r.m.cfg.Shards)]; sr != nil {
			r.stopFeeds(sr, name)
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
	sr := r.held[shardOf(f.Name, r.m.cfg.Shards)]
	if sr == nil {
		return
	}
	if had && old != f {
		r.stopFeeds(sr, f.Name)
	}
	if _, running := sr.feeds[f.Name]; !running {
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
	if r.registered && now < r.memberDeadline {
		out = append(out, r.m.cfg.Member)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// reconcile claims the slots this member ranks for and hands over those it
// no longer ranks for once their rightful member is there to take them.
func (r *run) reconcile(ctx context.Context) {
	m := r.m
	me := m.cfg.Member
	now := m.mono()
	live := r.live(now)
	for shard := 0; shard < m.cfg.Shards; shard++ {
		if ctx.Err() != nil {
			return
		}
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
			case e.val == me && r.held[shard] == nil:
				orphan = slot // ours from an earlier run
			default:
				holders[e.val] = true
			}
		}
		if sr := r.held[shard]; sr != nil {
			if inTop || !r.registered {
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
		if orphan >= 0 {
			if inTop && r.registered {
				r.claim(ctx, shard, orphan)
			} else {
				e := r.view[slotKey(shard, orphan)]
				cctx, cancel := context.WithTimeout(ctx, r.renewEvery)
				_ = m.leases.Delete(cctx, slotKey(shard, orphan), jetstream.LastRevision(e.rev))
				cancel()
			}
			continue
		}
		if !inTop || !r.registered {
			continue
		}
		for _, slot := range free {
			if r.claim(ctx, shard, slot) {
				break
			}
		}
	}
}

// claim tries to take a slot lease: Create for a missing or deleted key,
// Update with the revision last seen for an expired one (so that a renewal
// that raced us wins).
func (r *run) claim(ctx context.Context, shard, slot int) bool {
	m := r.m
	key := slotKey(shard, slot)
	e := r.view[key]
	cctx, cancel := context.WithTimeout(ctx, r.renewEvery)
	defer cancel()
	sent := m.mono()
	var rev uint64
	var err error
	if e == nil || e.gone {
		rev, err = m.leases.Create(cctx, key, []byte(m.cfg.Member))
	} else {
		rev, err = m.leases.Update(cctx, key, []byte(m.cfg.Member), e.rev)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound) {
			// Expired on the server, or written meanwhile: Create tells.
			rev, err = m.leases.Create(cctx, key, []byte(m.cfg.Member))
		}
	}
	if err != nil {
		// Learn the key's current state so we do not retry blindly.
		if g, gerr := m.leases.Get(cctx, key); gerr == nil {
			r.see(key, string(g.Value()), g.Revision(), false)
		}
		m.log.Debug("natsjs: claim failed", "shard", shard, "slot", slot, "err", err)
		return false
	}
	switch {
	case e != nil && !e.gone && e.val != m.cfg.Member:
		m.stats.takeovers.Add(1)
	case e != nil && e.gone:
		m.stats.handovers.Add(1)
	}
	m.stats.acquired.Add(1)
	sr := &shardRun{shard: shard, slot: slot, key: key, feeds: map[string]*feedRun{}}
	sr.rev.Store(rev)
	sr.deadline.Store(int64(sent + m.cfg.TTL - m.cfg.Margin))
	r.held[shard] = sr
	m.stats.held.Add(1)
	r.see(key, m.cfg.Member, rev, false)
	m.log.Debug("natsjs: lease acquired", "shard", shard, "slot", slot, "rev", rev)
	for _, f := range r.desired {
		if shardOf(f.Name, m.cfg.Shards) == shard {
			r.startFeed(sr, f)
		}
	}
	return true
}

func (r *run) startFeed(sr *shardRun, f Feed) {
	fr := newFeedRun(r.m, sr, f)
	var opts []wspool.Option
	if r.m.cfg.FeedOptions != nil {
		opts = append(opts, r.m.cfg.FeedOptions(f)...)
	}
	opts = append(opts, wspool.WithName(f.Name), wspool.WithRequestFunc(fr.request))
	if _, err := r.pool.Add(f.URL, fr.handle, opts...); err != nil {
		r.m.log.Error("natsjs: feed not started", "feed", f.Name, "err", err)
		return
	}
	sr.feeds[f.Name] = fr
	r.m.stats.feeds.Add(1)
}

// stopFeeds stops the named feeds of sr (all of them if none are named), in
// parallel, and waits for them.
func (r *run) stopFeeds(sr *shardRun, names ...string) {
	if len(names) == 0 {
		for n := range sr.feeds {
			names = append(names, n)
		}
	}
	var wg sync.WaitGroup
	for _, n := range names {
		if _, ok := sr.feeds[n]; !ok {
			continue
		}
		delete(sr.feeds, n)
		r.m.stats.feeds.Add(-1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = r.pool.Remove(n)
		}()
	}
	wg.Wait()
}

// drop gives up a lease that is lost or unproven: publishing stops at once,
// the feeds are stopped, and the key is left alone.
func (r *run) drop(sr *shardRun) {
	sr.stopped.Store(true)
	r.stopFeeds(sr)
	if r.held[sr.shard] == sr {
		delete(r.held, sr.shard)
		r.m.stats.held.Add(-1)
	}
}

// release hands a lease over: the feeds stop (their last messages are
// published first), then the key is deleted so the next member claims it now.
func (r *run) release(sr *shardRun) {
	r.stopFeeds(sr)
	sr.stopped.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), r.renewEvery)
	defer cancel()
	if err := r.m.leases.Delete(ctx, sr.key, jetstream.LastRevision(sr.rev.Load())); err != nil {
		r.m.log.Warn("natsjs: lease not released", "shard", sr.shard, "err", err)
	}
	delete(r.held, sr.shard)
	r.m.stats.held.Add(-1)
	r.m.stats.released.Add(1)
}

// checkFenced handles publishers that the stream refused: if the lease is no
// longer ours the shard is dropped; if it still is, the refused feeds are
// restarted from what the stream holds.
func (r *run) checkFenced(ctx context.Context) {
	for _, sr := range r.held {
		var refused []string
		for n, fr := range sr.feeds {
			if fr.refused.Load() {
				refused = append(refused, n)
			}
		}
		if len(refused) == 0 {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, r.renewEvery)
		g, err := r.m.leases.Get(cctx, sr.key)
		cancel()
		if err == nil && string(g.Value()) == r.m.cfg.Member && g.Revision() == sr.rev.Load() {
			r.stopFeeds(sr, refused...)
			for _, n := range refused {
				if f, ok := r.desired[n]; ok {
					r.startFeed(sr, f)
				}
			}
			continue
		}
		r.m.stats.lost.Add(1)
		r.drop(sr)
	}
}

// shutdown hands everything over: the member key goes first (so nobody ranks
// this member any more), then the feeds stop, then the leases are deleted.
func (r *run) shutdown() {
	m := r.m
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = m.leases.Delete(ctx, r.memberKey())
	var wg sync.WaitGroup
	for _, sr := range r.held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.stopFeedsConcurrent(sr)
		}()
	}
	wg.Wait()
	for _, sr := range r.held {
		sr.stopped.Store(true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.leases.Delete(ctx, sr.key, jetstream.LastRevision(sr.rev.Load())); err == nil {
				m.stats.released.Add(1)
			}
		}()
	}
	wg.Wait()
	m.stats.held.Store(0)
	m.stats.feeds.Store(0)
	r.held = map[int]*shardRun{}
}

// stopFeedsConcurrent is stopFeeds for use from several goroutines at once
// (at shutdown, one per shard): it does not touch the counters.
func (r *run) stopFeedsConcurrent(sr *shardRun) {
	var wg sync.WaitGroup
	for n := range sr.feeds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = r.pool.Remove(n)
		}()
	}
	wg.Wait()
}

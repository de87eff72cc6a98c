package wspool_test

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/faultproxy"
	"github.com/wspool/wspool/internal/wstest"
)

// The soak's bounds, stated once (see TestChaosSoak).
const (
	soakCloseTimeout = time.Second
	soakWriteTimeout = 2 * time.Second
	// Every feed is connected again at most this long after the faults end.
	soakRecoverBound = 15 * time.Second
	// Every feed delivers a fresh message at most this long after it is
	// checked (after recovery): a feed that reports Connected has a live reader.
	soakFreshBound = 10 * time.Second
	// Pool.Remove (and a Remove from the handler, until the feed is closed)
	// returns within the close timeout plus this slack: the handler's slowest
	// step (300 ms), a write being cut off, scheduling on 2 shared cores
	// under the race detector.
	soakRemoveSlack = 4 * time.Second
	// Pool.Run returns within the close timeout plus this slack after its
	// context ends: every feed closes at once.
	soakRunSlack = 4 * time.Second
	// A Send from a handler never waits for a connection: it returns within
	// the write timeout of the message ahead of it and its own, plus slack.
	soakHandlerSendBound = 2*soakWriteTimeout + 2*time.Second
	// Client.Drain and Pool.Drain get this long: far more than a queue of
	// 16 behind the soak's slowest handler needs.
	soakDrainDeadline = 10 * time.Second
	// The heap's peak stays within this of the heap before the soak: 64 MiB
	// for the seqServer's feeds (peaks of 51-57 MiB at 200 feeds, 20-60 s),
	// and 16 MiB for the stream feeds' upstreams, which run in the test
	// process: their wspooltest.Server keeps every connection it accepted
	// for Accept, about 16 KB each with gorilla's buffers, hundreds over a
	// 60 s soak (peak 65.4 MiB at 200 feeds, 60 s, against 56.7 MiB
	// without the stream feeds).
	soakHeapBound = (64 + 16) << 20
)

// TestChaosSoak is the all-features soak. Each feed runs a combination of
// options drawn from the seed (drawMix: queue policy with and without
// DrainBeforeReconnect, send buffer with and without MaxAge, NoReplay sends,
// blocking or async sends, rotation at a 300 ms-2 s max age with a duplicate
// filter, app heartbeats with IsReply and DropReplies, the stale watchdog,
// sends from the handler, a two-step OnConnect login, panics in the handler,
// Heartbeat.Message and OnStateChange, Remove + re-Add while running, send
// pacing, retry policy; and the continuity options of chaos_continuity_test.go:
// WithSequence with OnGap, a request func resuming from LastSequence, server
// skips resynced by OnGap, WithStandby through a second proxy, WithServerPing,
// Rotate/Reconnect from the test and the handler and ErrReconnect from the
// handler, Client.Drain at the end), against a sequenced server behind fault
// proxies that reset, blackhole, delay, throttle, slice, close and refuse at
// random while the server restarts now and then. Then the faults stop and
// the invariants are checked:
//
//   - no gap or duplicate per connection on lossless feeds (no drop policy),
//     none across rotations (the duplicate filter), and the feed sequence
//     never goes back;
//
//   - every Send/SendAsync outcome reported exactly once, written sends
//     received unless a connection they may have used was reset, in order,
//     NoReplay sends never on a later connection, no Send from a handler
//     waiting for a connection;
//
//   - every feed connected again within soakRecoverBound of the faults
//     ending, and every feed then delivering a fresh message within
//     soakFreshBound;
//
//   - Pool.Remove within the close timeout + soakRemoveSlack, Pool.Run
//     within the close timeout + soakRunSlack;
//
//   - exact counters: inbound accounting per feed, SendFailed, MessagesOut
//     (heartbeats bounded by those the server got and those made),
//     HandlerErrors equal to the errors and panics injected, and OnError
//     told of each by callback;
//
//   - sequenced feeds: the handler never gets a number at or below one it
//     got; resumed lossless feeds get every number exactly once, in order,
//     across resets, rotations, standby connections, resyncs, Reconnect,
//     ErrReconnect and re-adds (no gap at all unless the server skipped one);
//     other lossless feeds skip numbers only after OnGap accepted the gap,
//     never one a connection read before the number after it; Stats.Gaps and
//     GapMessages equal what OnGap saw;
//
//   - standby: every data message handled was won by exactly one connection
//     (Stats.Won + Standby[].Won), the standby connection connects;
//
//   - server pings: Stats.ServerPings between the pongs the server got and
//     the pings it sent, pings kept from the handler unless Deliver, no
//     connection cut for a late pong unless a fault was on its proxy (or the
//     server down) from a second before the ping to the cut;
//
//   - Message.ConnID one per connection and growing on the primary,
//     Message.Received between the Client's creation and the handler's call,
//     in order per connection;
//
//   - Client.Drain (and Pool.Drain, or Pool.Run's cancel, for the rest) with
//     a 10 s deadline: nil, nothing left queued, nothing dropped from a
//     lossless queue, a sequenced lossless feed's handler got the last number
//     its reader accepted;
//
//   - stream feeds (chaos_stream_test.go: wspooltest.Stream upstreams, one
//     per SequenceShape, behind proxies of the same chaos, with skips,
//     restarts, corrupt updates and lagging snapshots): position feeds
//     (Sequence.Position with epochs, resumed in their epoch) hand every
//     update to the handler exactly once, in order, each new epoch from its
//     first update, with the stream's checksums; syncstate feeds end in sync
//     with the stream's state at its head, as do the position feeds;
//     each upstream's own admission key (WithAdmissionFor) is answered 429
//     only behind a fault on its path, as is a per-feed OnConnect timeout;
//     a feed paced with SendPacing.Margin is closed 1008 by a server that
//     allows the paced rate (counted over streamRateWindow) only behind a
//     fault on its path;
//
//   - bounded heap, no goroutine left.
//
//     WSPOOL_SOAK=60s           duration (default 10s; 3s with -short)
//     WSPOOL_SOAK_SEED=1234     seed of the option mix and the fault schedule (logged; default random)
//     WSPOOL_SOAK_FEEDS=200     feeds (default 200; 40 with -short)
func TestChaosSoak(t *testing.T) {
	cfg := soakConfigFromEnv(t)
	raiseFDLimit(t, uint64(cfg.feeds)*10+512)
	t.Logf("chaos soak: %d feeds, %v, seed %d (WSPOOL_SOAK_SEED=%d reproduces the option mix and the fault schedule)", cfg.feeds, cfg.dur, cfg.seed, cfg.seed)

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	baseG := runtime.NumGoroutine()
	sampler := startSoakSampler()
	defer sampler.stop()

	v := &violations{}
	// Each feed's server publishes every 5-20ms and each feed sends every
	// 20-80ms, stretched beyond 50 feeds so that the total rate stays near
	// 4000 messages a second in and 1000 out: the race detector on a small,
	// shared machine must keep up, or liveness (not the invariants) suffers.
	stretch := time.Duration(max(1, cfg.feeds/50))
	srv := newSeqServer(cfg.seed, cfg.feeds, 5*time.Millisecond*stretch, 20*time.Millisecond*stretch, v)
	tickStop, tickDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(tickDone); srv.runTickers(tickStop) }()
	ws := newServer(t, srv.handle)

	nProxies := (cfg.feeds + soakFeedsPerProxy - 1) / soakFeedsPerProxy
	proxies := make([]*faultproxy.Proxy, nProxies)
	for i := range proxies {
		proxies[i] = newProxy(t, ws.Addr())
	}
	// The stream feeds' upstreams (chaos_stream_test.go), their proxies
	// after the seqServer's in the chaos's list.
	sx := newStreamSoak(t, v, len(proxies))

	pool, err := wspool.NewPool(append([]wspool.PoolOption{
		wspool.WithPingInterval(300 * time.Millisecond),
		wspool.WithPongTimeout(600 * time.Millisecond),
		wspool.WithHandshakeTimeout(time.Second),
		wspool.WithOnConnectTimeout(time.Second),
		wspool.WithBackoff(20*time.Millisecond, 500*time.Millisecond),
		wspool.WithCloseTimeout(soakCloseTimeout),
		wspool.WithWriteTimeout(soakWriteTimeout),
		// Admission per proxy (the host dialled), generous enough for the
		// soak's churn, with every gate and the key func on the dial path.
		wspool.WithAdmission(wspool.Admission{Rate: 400, Per: 100 * time.Millisecond, Burst: 200, MaxConcurrent: 24,
			Penalty: 200 * time.Millisecond, Key: func(u *url.URL, _ http.Header) string { return u.Host }}),
	}, sx.poolOptions()...)...)
	if err != nil {
		t.Fatal(err)
	}
	sends := &sendTally{}
	feeds := make([]*soakFeed, cfg.feeds)
	var churnFeeds []*soakFeed
	srv.feedCfg = make([]serverFeedCfg, cfg.feeds)
	var pokeFeeds []*soakFeed
	for i := range feeds {
		pi := i / soakFeedsPerProxy
		url := fmt.Sprintf("ws://%s/feed/%d?p=%d", proxies[pi].Addr(), i, pi)
		f := newSoakFeed(i, cfg.seed, v, sends, pool, url)
		f.sendGap = 20 * time.Millisecond * stretch
		if len(proxies) < 2 {
			f.mix.standby = false // standby goes through another proxy than the primary
		}
		so := otherProxy(proxies, pi)
		f.ct.standbyURL = fmt.Sprintf("ws://%s/feed/%d?p=%d", proxies[so].Addr(), i, so)
		srv.feedCfg[i] = serverFeedCfg{skips: f.mix.skips, ping: f.mix.serverPing}
		if f.mix.pacing > 0 {
			srv.feedCfg[i].rateLimit = soakRateLimit(f.mix.pacing)
		}
		if f.mix.poke {
			pokeFeeds = append(pokeFeeds, f)
		}
		feeds[i] = f
		if err := f.add(); err != nil {
			t.Fatal(err)
		}
		if f.mix.churn {
			churnFeeds = append(churnFeeds, f)
		}
	}
	t.Logf("option mix: %s", mixSummary(feeds))
	if err := sx.add(pool, max(4, cfg.feeds/20), cfg.seed); err != nil {
		t.Fatal(err)
	}
	allFeeds := cfg.feeds + len(sx.feeds)

	// Teardown in dependency order, whichever way the test ends.
	poolCtx, cancelPool := context.WithCancel(context.Background())
	poolErr := make(chan error, 1)
	go func() { poolErr <- pool.Run(poolCtx) }()
	senderStop := make(chan struct{})
	var senders sync.WaitGroup
	for _, f := range feeds {
		senders.Add(1)
		go func() { defer senders.Done(); f.sendLoop(senderStop) }()
	}
	chaos := newChaos(cfg.seed, append(slices.Clone(proxies), sx.proxies()...), ws, v)
	chaosStop := make(chan struct{})
	chaosDone := make(chan struct{})
	go func() { defer close(chaosDone); chaos.run(chaosStop) }()
	streamDone := make(chan struct{})
	go func() { defer close(streamDone); sx.chaos(cfg.seed, chaosStop) }()
	sxStop, sxDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(sxDone); sx.run(cfg.seed, sxStop) }()
	pk := &poker{feeds: pokeFeeds, rng: rand.New(rand.NewPCG(cfg.seed, 0x9b0e))}
	pokeDone := make(chan struct{})
	go func() { defer close(pokeDone); pk.run(chaosStop) }()
	churn := &churner{feeds: churnFeeds, pool: pool, v: v, rng: rand.New(rand.NewPCG(cfg.seed, 0xc4a2))}
	churnDone := make(chan struct{})
	go func() { defer close(churnDone); churn.run(chaosStop) }()

	var poolStopped bool
	var runReturn time.Duration
	stopPool := func() {
		if poolStopped {
			return
		}
		poolStopped = true
		start := time.Now()
		cancelPool()
		select {
		case err := <-poolErr:
			runReturn = time.Since(start)
			if err != nil {
				t.Errorf("Pool.Run: %v", err)
			}
			if runReturn > soakCloseTimeout+soakRunSlack {
				v.add("Pool.Run returned %v after its context ended, over the bound of %v", runReturn, soakCloseTimeout+soakRunSlack)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("Pool.Run did not return within 60s of cancel (deadlock?):\n%s", allStacks())
		}
	}
	var tornDown bool
	teardown := func() {
		if tornDown {
			return
		}
		tornDown = true
		select {
		case <-chaosStop:
		default:
			close(chaosStop)
		}
		<-chaosDone
		<-churnDone
		<-pokeDone
		<-streamDone
		stopPool()
		close(senderStop)
		senders.Wait()
		close(sxStop)
		<-sxDone
		sx.close()
		ws.Stop() // waits for every connection handler: the server's records are final
		close(tickStop)
		<-tickDone
		for _, p := range proxies {
			p.Close()
		}
	}
	t.Cleanup(teardown)

	// Chaos, then a quiet phase with every fault cleared.
	start := time.Now()
	quiet := max(cfg.dur/4, min(5*time.Second, cfg.dur/2))
	time.Sleep(cfg.dur - quiet)
	close(chaosStop)
	<-chaosDone
	<-churnDone
	<-pokeDone
	<-streamDone
	cleared := time.Now()
	chaosTime := cleared.Sub(start)

	// Every feed connected again. Not all at once: a feed whose server
	// skips numbers resyncs (reconnects) on every gap by design, so with
	// dozens of them some feed is always between two connections. The
	// fresh-message check below shows every connected feed is live. The
	// feeds not seen connected by the bound are described, for the violation.
	var late []string
	seen := map[string]bool{}
	waitSoak(t, v, 120*time.Second, func() bool {
		ps := pool.Stats()
		for _, s := range ps.Feeds {
			if s.State == wspool.StateConnected {
				seen[s.Name] = true
			}
		}
		if late == nil && time.Since(cleared) > soakRecoverBound {
			late = []string{}
			for _, s := range ps.Feeds {
				if !seen[s.Name] && len(late) < 6 {
					f := feedByName(feeds, s.Name)
					late = append(late, fmt.Sprintf("%s (%s): %v, attempts %d, admission waiting %v (waited %v in all), send buffered %d, queue %d, last error %v; state changes since the faults ended:%s",
						s.Name, f.mix, s.State, s.Attempts, s.AdmissionWaiting, s.AdmissionWaited, s.SendBuffered, s.QueueDepth, s.LastError, f.hist.since(cleared)))
				}
			}
		}
		return ps.Total == allFeeds && len(seen) == allFeeds
	}, func() string {
		var b strings.Builder
		ps := pool.Stats()
		fmt.Fprintf(&b, "%d of %d feeds seen connected since the faults ended; %s", len(seen), allFeeds, soakDiagnostics(t, cfg, proxies, ws))
		for _, s := range ps.Feeds {
			if !seen[s.Name] {
				fmt.Fprintf(&b, "\n  %s (%s): %v, last error %v", s.Name, feedByName(feeds, s.Name).mix, s.State, s.LastError)
			}
		}
		return b.String()
	})
	recovered := time.Since(cleared)
	if recovered > soakRecoverBound {
		v.add("every feed connected again %v after the faults ended, over the bound of %v; not seen connected by the bound:\n    %s", recovered, soakRecoverBound, strings.Join(late, "\n    "))
	}
	time.Sleep(time.Until(start.Add(cfg.dur)))

	// A feed that reports Connected has a live reader: every feed delivers a
	// message read after this point.
	freshFrom := time.Now()
	waitSoak(t, v, soakFreshBound, func() bool {
		for _, f := range feeds {
			if f.cur.Load().lastHandledAt.Load() <= freshFrom.UnixNano() {
				return false
			}
		}
		for _, f := range sx.feeds {
			if f.lastAt.Load() <= freshFrom.UnixNano() {
				return false
			}
		}
		return true
	}, func() string {
		var b strings.Builder
		for _, f := range feeds {
			if sc := f.cur.Load(); sc.lastHandledAt.Load() <= freshFrom.UnixNano() {
				s := sc.c.Load().Stats()
				fmt.Fprintf(&b, "\n  %s (%s): %v, nothing new delivered (connection %d, last error %v)", f.name, f.mix, s.State, f.latestHello(), s.LastError)
			}
		}
		for _, f := range sx.feeds {
			if f.lastAt.Load() <= freshFrom.UnixNano() {
				s := f.client.Load().Stats()
				fmt.Fprintf(&b, "\n  %s (stream feed, %v): %v, nothing new delivered (last error %v)", f.name, f.up.shape, s.State, s.LastError)
			}
		}
		return "feeds not delivering:" + b.String()
	})
	fresh := time.Since(freshFrom)

	// With the servers paused, what each feed read is accounted for
	// exactly, and every stream feed catches up with its stream's head.
	srv.paused.Store(true)
	sx.paused.Store(true)
	var blockDiscarded int64
	pending := slices.Clone(feeds)
	waitSoak(t, v, 60*time.Second, func() bool {
		keep := pending[:0]
		for _, f := range pending {
			if problem, discarded := feedAccounting(f); problem != "" {
				keep = append(keep, f)
			} else {
				blockDiscarded += discarded
			}
		}
		pending = keep
		if len(pending) > 0 {
			time.Sleep(20 * time.Millisecond)
		}
		return len(pending) == 0
	}, func() string {
		var b strings.Builder
		for _, f := range pending {
			p, _ := feedAccounting(f)
			fmt.Fprintf(&b, "\n  %s", p)
		}
		return "inbound accounting does not balance:" + b.String()
	})
	var behind []string
	waitSoak(t, v, 60*time.Second, func() bool {
		behind = sx.caughtUp()
		return len(behind) == 0
	}, func() string { return "stream feeds not at their stream's head:\n  " + strings.Join(behind, "\n  ") })
	streamKnown := 0
	if len(behind) == 0 {
		streamKnown = sx.checkState()
	}
	srv.paused.Store(false)
	sx.paused.Store(false)

	// Shut down under traffic: Client.Drain on some feeds (with time to
	// spare, everything queued is delivered), then the rest by Pool.Drain
	// or Pool.Run's cancel. Then check every send.
	time.Sleep(100 * time.Millisecond)
	drainRng := rand.New(rand.NewPCG(cfg.seed, 0xd7a1))
	var drained []drainResult
	var drainWG sync.WaitGroup
	var drainMu sync.Mutex
	drainStart := time.Now()
	for _, f := range feeds {
		if !f.mix.drain {
			continue
		}
		drainWG.Add(1)
		go func() {
			defer drainWG.Done()
			c := f.cur.Load().c.Load()
			r := drainResult{f: f, droppedBefore: c.Stats().Dropped}
			ctx, cancel := context.WithTimeout(context.Background(), soakDrainDeadline)
			start := time.Now()
			r.err = c.Drain(ctx) // starts the drain; Done says when it is over
			select {
			case <-c.Done():
			case <-time.After(soakDrainDeadline + time.Minute):
			}
			r.took = time.Since(start)
			cancel()
			drainMu.Lock()
			drained = append(drained, r)
			drainMu.Unlock()
		}()
	}
	drainWG.Wait()
	clientDrains := time.Since(drainStart)
	for _, r := range drained {
		checkDrained(r, v)
	}
	poolDrain := drainRng.IntN(2) == 0
	var poolDrainTook time.Duration
	if poolDrain {
		var rest []drainResult
		for _, f := range feeds {
			if !f.mix.drain {
				rest = append(rest, drainResult{f: f, droppedBefore: f.cur.Load().c.Load().Stats().Dropped})
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), soakDrainDeadline)
		start := time.Now()
		err := pool.Drain(ctx) // starts the drains; Done says when they are over
		select {
		case <-pool.Done():
		case <-time.After(soakDrainDeadline + time.Minute):
		}
		poolDrainTook = time.Since(start)
		cancel()
		for _, r := range rest {
			r.err = err
			checkDrained(r, v)
		}
	}
	stopPool()
	teardown()
	contSum := checkContinuity(feeds, srv, chaos.faults, v)
	streamSum := sx.check(chaos.faults, streamKnown)

	sendSum := checkSends(feeds, srv, v)
	rotSum := checkRotations(feeds, srv, v)
	var tot struct {
		handled, delivered, sendFailed, handlerErrs, injected, rotations, duplicates, dupPast, policyDropped int64
		handlerPanics, hbPanics, statePanics, hbSent, clients                                                int64
		handlerSendMax                                                                                       time.Duration
	}
	for _, f := range feeds {
		var msgsOut, onConnSends, pingsAnswered, delivered int64
		for _, sc := range f.clients {
			s := sc.c.Load().Stats()
			delivered += s.Delivered
			tot.clients++
			if s.State != wspool.StateClosed {
				v.add("%s: a Client in state %v after Pool.Run returned", f.name, s.State)
			}
			if s.QueueDepth != 0 { // what was left was discarded and counted in Dropped
				v.add("%s (%s): queue depth %d after the Client closed", f.name, f.mix, s.QueueDepth)
			}
			tot.handled += sc.handled.Load()
			tot.delivered += s.Delivered
			tot.sendFailed += s.SendFailed
			tot.handlerErrs += s.HandlerErrors
			tot.rotations += s.Rotations
			tot.duplicates += s.Duplicates
			tot.policyDropped += s.Dropped
			msgsOut += s.MessagesOut
			onConnSends += sc.onConnSends.Load()
			pingsAnswered += s.ServerPings
		}
		if f.mix.timings && (f.handlerTimings.Load() != delivered || f.negTimings.Load() > 0) {
			v.add("%s (%s): WithTimings reported %d handler timings for %d handler calls, %d negative", f.name, f.mix, f.handlerTimings.Load(), delivered, f.negTimings.Load())
		}
		he, hp, hbp, sp := f.handlerErrs.Load(), f.handlerPanics.Load(), f.hbPanics.Load(), f.statePanics.Load()
		tot.injected += he + hp + hbp + sp
		tot.handlerPanics += hp
		tot.hbPanics += hbp
		tot.statePanics += sp
		tot.dupPast += f.dupPastFilter.Load()
		tot.handlerSendMax = max(tot.handlerSendMax, time.Duration(f.handlerSendMax.Load()))
		f.mu.Lock()
		byCb := maps.Clone(f.onErrors)
		f.mu.Unlock()
		if byCb["handler"] != he+hp || byCb["Heartbeat.Message"] != hbp || byCb["OnStateChange"] != sp || len(byCb) > 3 {
			v.add("%s: OnError got HandlerErrors %v, injected handler %d errors + %d panics, Heartbeat.Message %d panics, OnStateChange %d panics", f.name, byCb, he, hp, hbp, sp)
		}
		// Every write counted: the sends written, OnConnect's, heartbeats
		// and pongs (at least those the server got, at most those made).
		sf := srv.feeds[f.idx]
		sf.mu.Lock()
		hbRecv, pongsRecv := sf.hbRecv, sf.pongsRecv
		sf.mu.Unlock()
		hbMade := f.hbCalls.Load() - hbp
		tot.hbSent += hbRecv
		if hb := msgsOut - sendSum.perFeedWritten[f] - onConnSends; hb < hbRecv+pongsRecv || hb > hbMade+pingsAnswered {
			v.add("%s (%s): Stats.MessagesOut %d - %d sends written - %d OnConnect sends = %d heartbeats and pongs written, but the server got %d + %d and %d + %d were made",
				f.name, f.mix, msgsOut, sendSum.perFeedWritten[f], onConnSends, hb, hbRecv, pongsRecv, hbMade, pingsAnswered)
		}
	}
	if tot.sendFailed != sendSum.failed {
		v.add("Stats.SendFailed sums to %d, callbacks reported %d failures", tot.sendFailed, sendSum.failed)
	}
	if tot.handlerErrs != tot.injected {
		v.add("Stats.HandlerErrors sums to %d, %d errors and panics were injected", tot.handlerErrs, tot.injected)
	}
	if tot.delivered != tot.handled {
		v.add("Stats.Delivered sums to %d, the handlers ran %d times", tot.delivered, tot.handled)
	}
	if tot.handlerSendMax > soakHandlerSendBound {
		v.add("a Send from a handler took %v, over the bound of %v", tot.handlerSendMax, soakHandlerSendBound)
	}

	// Nothing left running.
	sampler.stop()
	var g int
	if err := wstest.WaitFor(context.Background(), 15*time.Second, func() bool {
		g = runtime.NumGoroutine()
		return g <= baseG+2
	}); err != nil {
		t.Errorf("%d goroutines 15s after shutdown, %d before the soak:\n%s", g, baseG, allStacks())
	}

	heapPeakMiB := float64(sampler.heapPeak) / (1 << 20)
	baseMiB := float64(base.HeapAlloc) / (1 << 20)
	if sampler.heapPeak > base.HeapAlloc+soakHeapBound {
		v.add("heap peak %.1f MiB over the bound of %.1f + %d MiB", heapPeakMiB, baseMiB, soakHeapBound>>20)
	}

	ps := pool.Stats()
	t.Logf("send outcomes by stream (s: sender, h: handler) and cause: %s", sends.causes())
	t.Logf("server: %d connections, %d data messages published, %d heartbeats answered; pool: %d attempts, %d Clients over the run (%d removes, %d of them from the handler, slowest %v); queues dropped %d (policy and shutdown); Block queues gave up %d read messages when their connection died; faults cleared after %v",
		srv.nextConn.Load(), srv.dataSent.Load(), tot.hbSent, ps.Attempts, tot.clients, churn.removes, churn.inHandler, churn.slowest.Round(time.Millisecond),
		tot.policyDropped, blockDiscarded, chaosTime.Round(time.Millisecond))
	t.Logf("SUMMARY continuity: %s drain=client %d feeds in %v (lost at push %d), then %s",
		contSum, len(drained), clientDrains.Round(time.Millisecond), drainLostAtPush.Load(), map[bool]string{true: fmt.Sprintf("Pool.Drain in %v", poolDrainTook.Round(time.Millisecond)), false: "Pool.Run's cancel"}[poolDrain])
	t.Logf("SUMMARY stream feeds: %s", streamSum)
	t.Logf("server continuity: %d numbers replayed from resume points, %d skipped, slowest pong %v, %d pongs over 1s",
		srv.replayed.Load(), srv.skipped.Load(), time.Duration(srv.pongMax.Load()).Round(time.Millisecond), srv.pongsSlow.Load())
	t.Logf("SUMMARY chaos soak: feeds=%d duration=%v seed=%d mix={%s} faults={%s} clients=%d removes=%d(handler %d, max %v) rotations=%d rotation-switches-checked=%d tail-cut=%d dup-filtered=%d dup-past-filter(queued)=%d messages handled=%d sends=%d written=%d failed=%d no-replay=%d written-but-lost-with-reset-conn=%d handler-errors=%d (panics: handler %d, heartbeat %d, state %d) handler-send max=%v recovered=%v fresh=%v run-return=%v violations=%d heap peak=%.1f MiB (base %.1f MiB) goroutines peak=%d",
		cfg.feeds, cfg.dur, cfg.seed, mixSummary(feeds), chaos.summary(), tot.clients, churn.removes, churn.inHandler, churn.slowest.Round(time.Millisecond),
		tot.rotations, rotSum.checked, rotSum.tailCut, tot.duplicates, tot.dupPast, tot.handled, sendSum.total, sendSum.written, sendSum.failed, sendSum.noReplay, sendSum.lostWithReset,
		tot.handlerErrs, tot.handlerPanics, tot.hbPanics, tot.statePanics, tot.handlerSendMax.Round(time.Millisecond),
		recovered.Round(time.Millisecond), fresh.Round(time.Millisecond), runReturn.Round(time.Millisecond),
		v.count(), heapPeakMiB, baseMiB, sampler.goroutinePeak)
	if n := v.count(); n > 0 {
		t.Errorf("%d invariant violations (seed %d: WSPOOL_SOAK_SEED=%d WSPOOL_SOAK=%v WSPOOL_SOAK_FEEDS=%d replays the mix and the fault schedule); first ones:\n  %s",
			n, cfg.seed, cfg.seed, cfg.dur, cfg.feeds, strings.Join(v.first(), "\n  "))
	}
}

func feedByName(feeds []*soakFeed, name string) *soakFeed {
	for _, f := range feeds {
		if f.name == name {
			return f
		}
	}
	return &soakFeed{}
}

// churner removes and re-adds the churn feeds one at a time until stop: half
// the time with Pool.Remove from the test's goroutine (which must return
// within the close timeout plus slack), half the time from the feed's own
// handler (which must not wait; the feed must then be closed within the same
// bound), and re-adds the feed as a new Client once the old one is closed.
type churner struct {
	feeds     []*soakFeed
	pool      *wspool.Pool
	v         *violations
	rng       *rand.Rand
	removes   int
	inHandler int
	slowest   time.Duration
}

func (ch *churner) run(stop <-chan struct{}) {
	if len(ch.feeds) == 0 {
		return
	}
	tm := time.NewTimer(0)
	defer tm.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tm.C:
		}
		ch.cycle(ch.feeds[ch.rng.IntN(len(ch.feeds))])
		tm.Reset(time.Duration(200+ch.rng.IntN(400)) * time.Millisecond)
	}
}

func (ch *churner) cycle(f *soakFeed) {
	old := f.cur.Load().c.Load()
	bound := soakCloseTimeout + soakRemoveSlack
	inHandler := false
	if ch.rng.IntN(2) == 0 {
		f.removeInHandler.Store(1)
		t := time.NewTimer(2 * time.Second)
		select {
		case <-f.removedInHandler:
			inHandler = true
		case <-t.C:
			if !f.removeInHandler.CompareAndSwap(1, 0) {
				<-f.removedInHandler // the handler took it meanwhile
				inHandler = true
			}
		}
		t.Stop()
	}
	start := time.Now()
	if inHandler {
		ch.inHandler++
		if err := wstest.WaitFor(context.Background(), bound, func() bool { return old.State() == wspool.StateClosed }); err != nil {
			ch.v.add("%s: removed from its handler, still %v after %v", f.name, old.State(), bound)
			if err := wstest.WaitFor(context.Background(), time.Minute, func() bool { return old.State() == wspool.StateClosed }); err != nil {
				ch.v.add("%s: removed from its handler, still %v after a minute:\n%s", f.name, old.State(), allStacks())
				return
			}
		}
	} else if err := ch.pool.Remove(f.name); err != nil {
		ch.v.add("%s: Pool.Remove: %v", f.name, err)
	} else {
		// Remove starts the stop; the removed Client's Done says when it is over.
		select {
		case <-old.Done():
		case <-time.After(time.Minute):
			ch.v.add("%s: removed, not stopped after a minute:\n%s", f.name, allStacks())
		}
	}
	d := time.Since(start)
	ch.removes++
	ch.slowest = max(ch.slowest, d)
	if d > bound {
		ch.v.add("%s (%s): Remove (from the handler: %v) took %v, over the bound of %v", f.name, f.mix, inHandler, d, bound)
	}
	if err := f.add(); err != nil {
		ch.v.add("%s: re-Add: %v", f.name, err)
	}
}

const soakFeedsPerProxy = 20

type soakConfig struct {
	feeds int
	dur   time.Duration
	seed  uint64
}

func soakConfigFromEnv(t *testing.T) soakConfig {
	c := soakConfig{feeds: 200, dur: 10 * time.Second, seed: rand.Uint64() % 1e9}
	if testing.Short() {
		c.feeds, c.dur = 40, 3*time.Second
	}
	if s := os.Getenv("WSPOOL_SOAK"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("WSPOOL_SOAK=%q: want a positive Go duration", s)
		}
		c.dur = d
	}
	if s := os.Getenv("WSPOOL_SOAK_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("WSPOOL_SOAK_SEED=%q: %v", s, err)
		}
		c.seed = n
	}
	if s := os.Getenv("WSPOOL_SOAK_FEEDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			t.Fatalf("WSPOOL_SOAK_FEEDS=%q: want a positive number", s)
		}
		c.feeds = n
	}
	return c
}

// waitSoak polls cond until it holds or timeout passes, then fails with
// what() and the violations seen so far.
func waitSoak(t *testing.T, v *violations, timeout time.Duration, cond func() bool, what func() string) {
	t.Helper()
	if err := wstest.WaitFor(context.Background(), timeout, cond); err != nil {
		msg := fmt.Sprintf("after %v: %s", timeout, what())
		if n := v.count(); n > 0 {
			msg += fmt.Sprintf("\n%d invariant violations so far; first ones:\n  %s", n, strings.Join(v.first(), "\n  "))
		}
		t.Fatal(msg)
	}
}

// soakDiagnostics describes the proxies and the process, and saves every
// goroutine's stack to a file, for a soak that does not recover.
func soakDiagnostics(t *testing.T, cfg soakConfig, proxies []*faultproxy.Proxy, ws *wstest.Server) string {
	var b strings.Builder
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		fmt.Fprintf(&b, "%d open fds, ", len(fds))
	}
	fmt.Fprintf(&b, "%d goroutines, server: %d open, %d accepted, %d handshakes; proxies (open/accepted):", runtime.NumGoroutine(), ws.Open(), ws.Accepted(), ws.Handshakes())
	for _, p := range proxies {
		fmt.Fprintf(&b, " %d/%d", p.ConnCount(), p.Accepted())
	}
	name := fmt.Sprintf("%s/wspool-soak-%d-stacks.txt", os.TempDir(), cfg.seed)
	if err := os.WriteFile(name, []byte(allStacks()), 0o644); err == nil {
		fmt.Fprintf(&b, "; goroutine stacks in %s", name)
	}
	return b.String()
}

func allStacks() string {
	buf := make([]byte, 8<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// violations collects invariant violations from any goroutine.
type violations struct {
	mu      sync.Mutex
	n       int
	samples []string
}

func (v *violations) add(format string, args ...any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.n++
	if len(v.samples) < 40 {
		v.samples = append(v.samples, fmt.Sprintf(format, args...))
	}
}

func (v *violations) count() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.n
}

func (v *violations) first() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.samples)
}

// soakSampler records peak heap and goroutine counts.
type soakSampler struct {
	done          chan struct{}
	finished      chan struct{}
	once          sync.Once
	heapPeak      uint64
	goroutinePeak int
}

func startSoakSampler() *soakSampler {
	s := &soakSampler{done: make(chan struct{}), finished: make(chan struct{})}
	go func() {
		defer close(s.finished)
		var ms runtime.MemStats
		tk := time.NewTicker(25 * time.Millisecond)
		defer tk.Stop()
		for {
			runtime.ReadMemStats(&ms)
			s.heapPeak = max(s.heapPeak, ms.HeapAlloc)
			s.goroutinePeak = max(s.goroutinePeak, runtime.NumGoroutine())
			select {
			case <-s.done:
				return
			case <-tk.C:
			}
		}
	}()
	return s
}

func (s *soakSampler) stop() {
	s.once.Do(func() { close(s.done) })
	<-s.finished
}

// ---- the fault injector ----

type soakChaos struct {
	rng        *rand.Rand
	proxies    []*faultproxy.Proxy
	srv        *wstest.Server
	v          *violations
	counts     map[string]int
	active     []map[string]bool // per proxy: timed faults in progress
	undo       []chaosUndo
	srvDown    bool
	lastRst    time.Time
	startFails int
	faults     *faultLog
}

type chaosUndo struct {
	at time.Time
	fn func()
}

func newChaos(seed uint64, proxies []*faultproxy.Proxy, srv *wstest.Server, v *violations) *soakChaos {
	c := &soakChaos{rng: rand.New(rand.NewPCG(seed, 0xc4a05)), proxies: proxies, srv: srv, v: v, counts: map[string]int{}, faults: newFaultLog(len(proxies))}
	for range proxies {
		c.active = append(c.active, map[string]bool{})
	}
	return c
}

func (c *soakChaos) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(c.rng.Int64N(int64(hi-lo)+1))
}

func (c *soakChaos) later(d time.Duration, fn func()) {
	c.undo = append(c.undo, chaosUndo{at: time.Now().Add(d), fn: fn})
}

func (c *soakChaos) runDue(all bool) {
	now := time.Now()
	keep := c.undo[:0]
	var due []chaosUndo
	for _, u := range c.undo {
		if all || !u.at.After(now) {
			due = append(due, u)
		} else {
			keep = append(keep, u)
		}
	}
	c.undo = keep
	for _, u := range due {
		u.fn()
	}
}

func (c *soakChaos) run(stop <-chan struct{}) {
	// About 7 faults a second for 10 proxies, proportionally fewer for fewer,
	// but at least 3 a second.
	meanGap := min(150*time.Millisecond*time.Duration(10)/time.Duration(len(c.proxies)), 300*time.Millisecond)
	next := time.Now()
	for {
		c.runDue(false)
		wake := next
		for _, u := range c.undo {
			if u.at.Before(wake) {
				wake = u.at
			}
		}
		tm := time.NewTimer(time.Until(wake))
		select {
		case <-stop:
			tm.Stop()
			c.clearAll()
			return
		case <-tm.C:
		}
		if time.Now().Before(next) {
			continue
		}
		c.inject()
		next = time.Now().Add(c.between(meanGap/5, meanGap*9/5))
	}
}

func (c *soakChaos) timed(i int, kind string, d time.Duration, on, off func()) {
	if c.active[i][kind] {
		return
	}
	c.active[i][kind] = true
	c.counts[kind]++
	c.faults.on(i, kind)
	on()
	c.later(d, func() { off(); c.active[i][kind] = false; c.faults.off(i, kind) })
}

func (c *soakChaos) inject() {
	if !c.srvDown && time.Since(c.lastRst) > 2*time.Second && c.rng.IntN(100) < 4 {
		c.restartServer()
		return
	}
	i := c.rng.IntN(len(c.proxies))
	p := c.proxies[i]
	switch r := c.rng.IntN(16); {
	case r < 3:
		c.counts["reset"]++
		c.faults.instant(i)
		p.ResetAll()
	case r < 5:
		c.counts["close"]++
		c.faults.instant(i)
		p.CloseAll()
	case r < 7:
		c.timed(i, "blackhole", c.between(500*time.Millisecond, 3*time.Second),
			func() { p.SetMode(faultproxy.Blackhole) }, func() { p.SetMode(faultproxy.PassThrough) })
	case r < 9:
		c.timed(i, "latency", c.between(time.Second, 4*time.Second),
			func() { p.SetLatency(c.between(20*time.Millisecond, 250*time.Millisecond)) }, func() { p.SetLatency(0) })
	case r < 11:
		c.timed(i, "throttle", c.between(time.Second, 4*time.Second),
			func() { p.SetBandwidth(1<<10 + c.rng.IntN(15<<10)) }, func() { p.SetBandwidth(0) })
	case r < 13:
		c.timed(i, "slice", c.between(time.Second, 3*time.Second),
			func() { p.SetSlice(1 + c.rng.IntN(7)) }, func() { p.SetSlice(0) })
	default:
		c.timed(i, "refuse", c.between(300*time.Millisecond, 2*time.Second),
			func() { p.SetRefuse(true) }, func() { p.SetRefuse(false) })
	}
}

func (c *soakChaos) restartServer() {
	c.srvDown = true
	c.faults.serverDown()
	down := c.between(200*time.Millisecond, time.Second)
	if c.rng.IntN(2) == 0 {
		c.counts["server-goingaway"]++
		c.srv.GoingAway()
		c.srv.StopListening()
	} else {
		c.counts["server-stop"]++
		c.srv.Stop()
	}
	c.later(down, c.startServer)
}

func (c *soakChaos) startServer() {
	if err := c.srv.Start(); err != nil {
		// The port can be taken meanwhile by an outgoing connection: retry.
		c.startFails++
		if c.startFails > 100 {
			c.v.add("server restart failed: %v", err)
			return
		}
		c.later(100*time.Millisecond, c.startServer)
		return
	}
	c.srvDown = false
	c.lastRst = time.Now()
	c.faults.serverUp()
}

// clearAll ends every fault: pending undos run at once, and every knob is reset.
func (c *soakChaos) clearAll() {
	for len(c.undo) > 0 {
		c.runDue(true)
		if len(c.undo) > 0 {
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, p := range c.proxies {
		p.SetMode(faultproxy.PassThrough)
		p.SetLatency(0)
		p.SetBandwidth(0)
		p.SetSlice(0)
		p.SetRefuse(false)
	}
}

func (c *soakChaos) summary() string { return formatCounts(c.counts) }

// TestChaosBlockQueueNoGapAfterKill pins down an ordering failure the soak can
// hit: a Block queue is full, the reader waits to push message 3, and the
// connection is torn down (here by a Send that hits the peer's reset). The
// reader gives message 3 up, but gorilla's read buffer still holds messages
// 4..10, which the reader goes on to read; if the handler made room
// meanwhile, message 4 is queued and delivered: message 3 is lost in the
// middle of the connection's stream, which Block promises never to do.
func TestChaosBlockQueueNoGapAfterKill(t *testing.T) {
	const perConn, conns = 10, 20
	srvConns := make(chan *websocket.Conn, 64)
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		// All ten frames in one write: the client's read buffer gets them at once.
		var raw []byte
		for i := 1; i <= perConn; i++ {
			p := strconv.Itoa(i)
			raw = append(append(raw, 0x81, byte(len(p))), p...)
		}
		if _, err := c.UnderlyingConn().Write(raw); err != nil {
			return
		}
		srvConns <- c
		wstest.Drain(c, nil)
	})
	var (
		client  *wspool.Client
		mu      sync.Mutex
		seen    [][]int // per connection, the messages handled
		resets  int
		sendErr error
	)
	handler := func(ctx context.Context, m wspool.Message) error {
		n, err := strconv.Atoi(string(m.Data))
		if err != nil {
			return err
		}
		mu.Lock()
		if n == 1 {
			seen = append(seen, nil)
		}
		if len(seen) > 0 {
			seen[len(seen)-1] = append(seen[len(seen)-1], n)
		}
		mu.Unlock()
		if n != 1 {
			return nil
		}
		// Message 2 fills the queue and the reader waits to push message 3.
		if err := wstest.WaitFor(ctx, 5*time.Second, func() bool { return client.Stats().QueueDepth == 1 }); err != nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
		// The server resets the connection; our next write fails and kills it.
		var sc *websocket.Conn
		select {
		case sc = <-srvConns:
		case <-ctx.Done():
			return nil
		}
		if tc, ok := sc.UnderlyingConn().(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		sc.UnderlyingConn().Close()
		for i := 0; i < 100; i++ {
			time.Sleep(5 * time.Millisecond)
			if err := client.Send(ctx, wspool.TextMessage, []byte("x")); err != nil {
				mu.Lock()
				resets++
				sendErr = err
				mu.Unlock()
				break
			}
		}
		return nil // the queue makes room now
	}
	var err error
	client, err = wspool.NewClient(srv.URL("/"), handler,
		wspool.WithQueue(wspool.Queue{Messages: 1, Policy: wspool.Block}),
		wspool.WithBackoff(5*time.Millisecond, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, client)
	waitFor(t, 60*time.Second, fmt.Sprintf("%d connections", conns), func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) > conns
	})
	mu.Lock()
	defer mu.Unlock()
	var gaps []string
	for i, s := range seen[:conns] {
		for j := range s {
			if s[j] != j+1 {
				gaps = append(gaps, fmt.Sprintf("connection %d handled %v", i+1, s))
				break
			}
		}
	}
	t.Logf("%d connections, %d killed by a failed send (%v)", conns, resets, sendErr)
	if len(gaps) > 0 {
		t.Fatalf("Block queue lost a message in the middle of a connection's stream in %d of %d connections:\n  %s",
			len(gaps), conns, strings.Join(gaps, "\n  "))
	}
}

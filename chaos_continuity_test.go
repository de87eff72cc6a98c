package wspool_test

// The chaos soak's continuity options (issue 15): WithSequence with OnGap and
// a resume point from LastSequence, WithStandby through a second fault proxy,
// WithServerPing against a server that cuts late pongs, Reconnect, Rotate and
// ErrReconnect at random, Message.ConnID and Received, and Drain at the end.
// TestChaosSoak is in chaos_test.go, the server and the feeds in
// chaos_feeds_test.go.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/faultproxy"
)

// contFeed is a feed's continuity state, across its Clients.
type contFeed struct {
	standbyURL string // through another proxy than the feed's URL

	// Under mu (shared by OnGap and Extract on the readers, and the handler).
	mu        sync.Mutex
	gaps      map[int64]int64 // accepted gaps not yet handled: Next -> Last
	extracted map[int64]int64 // non-resumed lossless feeds: fseq -> order of its first Extract
	extractN  int64

	gapCalls, gapMsgs, resyncs atomic.Int64
	exactChecked               atomic.Int64 // messages checked to be exactly the next number
	// Pokes: from the test goroutine and from the handler.
	testRotate, testRotateFailed, testReconnect, testNotConnected atomic.Int64
	hRotate, hReconnect, hErrReconnect                            atomic.Int64
}

func (ct *contFeed) init() {
	ct.gaps = map[int64]int64{}
	ct.extracted = map[int64]int64{}
}

// contClient is one Client's continuity state; the maps are the handler's.
type contClient struct {
	addedAt     time.Time
	gotData     bool
	handledData atomic.Int64
	connIDs     map[int64]uint64 // server connection -> Message.ConnID
	servConns   map[uint64]int64 // Message.ConnID -> server connection
	lastRecv    map[int64]time.Time
	lastConn    int64 // the latest server connection of data (not standby feeds)
	lastConnID  uint64
}

func (cc *contClient) init() {
	cc.addedAt = time.Now()
	cc.connIDs, cc.servConns, cc.lastRecv = map[int64]uint64{}, map[uint64]int64{}, map[int64]time.Time{}
}

func (f *soakFeed) continuityOptions() []wspool.Option {
	m := f.mix
	var opts []wspool.Option
	if m.seq {
		opts = append(opts, wspool.WithSequence(wspool.Sequence{Extract: f.extract, OnGap: f.onGap}))
	}
	if m.resume {
		opts = append(opts, wspool.WithRequestFunc(f.resumeFrom))
	}
	if m.standby {
		opts = append(opts, wspool.WithStandby(wspool.Standby{Connections: 1, URLs: []string{f.ct.standbyURL}}))
	}
	if m.serverPing {
		opts = append(opts, wspool.WithServerPing(wspool.ServerPing{Reply: soakPingReply, Deliver: m.pingDeliver}))
	}
	return opts
}

func soakPingReply(m wspool.Message) (wspool.MessageType, []byte, bool) {
	rest, ok := bytes.CutPrefix(m.Data, []byte(`{"ping":`))
	if !ok {
		return 0, nil, false
	}
	return wspool.TextMessage, append([]byte(`{"pong":`), rest...), true
}

// resumeFrom asks the server to replay from the last number delivered: the
// Client's LastSequence, or on a Client's first dial (re-added) the last
// number the feed's handler got.
func (f *soakFeed) resumeFrom(_ context.Context, u *url.URL, _ http.Header) error {
	from := f.lastF.Load()
	if c := f.cur.Load().c.Load(); c != nil {
		if n, ok := c.LastSequence(""); ok {
			from = int64(n)
		}
	}
	if from > 0 {
		q := u.Query()
		q.Set("from", strconv.FormatInt(from, 10))
		u.RawQuery = q.Encode()
	}
	return nil
}

// extract is Sequence.Extract: one stream, numbered by the feed sequence.
func (f *soakFeed) extract(m wspool.Message) (string, uint64, bool) {
	_, _, fseq, ok := parseData(m.Data)
	if !ok {
		f.v.add("%s: Sequence.Extract got %q", f.name, m.Data)
		return "", 0, false
	}
	if f.trackExtracts() {
		f.ct.mu.Lock()
		if _, seen := f.ct.extracted[fseq]; !seen {
			f.ct.extractN++
			f.ct.extracted[fseq] = f.ct.extractN
		}
		f.ct.mu.Unlock()
	}
	return "", uint64(fseq), true
}

// trackExtracts: a lossless feed without resume accepts its gaps, so what a
// connection read before the number after a gap must have been delivered.
func (f *soakFeed) trackExtracts() bool { return f.mix.seq && !f.mix.resume && f.mix.lossless() }

var errSoakPoke = errors.New("soak: poke")

// onGap is Sequence.OnGap: a resumed feed resyncs (a gap is possible there
// only where the server skipped a number); any other accepts the gap.
func (f *soakFeed) onGap(g wspool.Gap) error {
	f.ct.gapCalls.Add(1)
	f.ct.gapMsgs.Add(int64(g.Missing()))
	if g.Key != "" || g.Next <= g.Last+1 || g.ConnID == 0 || g.Feed != f.name {
		f.v.add("%s: OnGap got %+v", f.name, g)
	}
	if f.mix.resume {
		// A standby connection dialled before anything was delivered has no
		// resume point and may start ahead of the primary: resynced too.
		if !f.mix.skips && !f.mix.standby {
			f.v.add("%s (%s): gap %d..%d on a resumed feed whose server skips nothing", f.name, f.mix, g.Last+1, g.Next-1)
		}
		f.ct.resyncs.Add(1)
		return fmt.Errorf("soak: resync after %d: %w", g.Last, wspool.ErrReconnect)
	}
	if f.mix.lossless() {
		f.ct.mu.Lock()
		f.ct.gaps[int64(g.Next)] = int64(g.Last)
		f.ct.mu.Unlock()
	}
	return nil
}

// checkSequenced checks a sequenced feed's data message in the handler; false
// if the message is not to be handled further. The handler never sees a
// number at or below one it saw; a resumed lossless feed sees every number
// exactly once, in order, across resets, rotations, standby connections,
// resyncs and re-adds; any other lossless feed skips numbers only after OnGap
// accepted the gap, and never one a connection read before the number after
// the gap.
func (f *soakFeed) checkSequenced(sc *soakClient, m wspool.Message, conn, fseq int64) bool {
	last := f.lastF.Load()
	first := !sc.ct.gotData
	sc.ct.gotData = true
	if fseq <= last {
		f.v.add("%s (%s): connection %d delivered number %d after %d (WithSequence let a duplicate or an older number through)", f.name, f.mix, conn, fseq, last)
		return false
	}
	f.lastF.Store(fseq)
	if f.mix.exact() && last > 0 {
		f.ct.exactChecked.Add(1)
	}
	if fseq == last+1 || last == 0 {
		return true
	}
	switch {
	case f.mix.exact():
		f.v.add("%s (%s): numbers %d..%d lost (connection %d delivered %d after %d; first of its Client: %v)", f.name, f.mix, last+1, fseq-1, conn, fseq, last, first)
	case !f.mix.lossless() || first:
		// Dropped by the queue's policy, or a new Client without resume.
	default:
		f.ct.mu.Lock()
		gl, ok := f.ct.gaps[fseq]
		delete(f.ct.gaps, fseq)
		var readBefore []int64
		if f.trackExtracts() {
			at := f.ct.extracted[fseq]
			for x := last + 1; x < fseq && x < last+10000; x++ {
				if i, seen := f.ct.extracted[x]; seen && i < at {
					readBefore = append(readBefore, x)
				}
			}
		}
		f.ct.mu.Unlock()
		if !ok {
			f.v.add("%s (%s): numbers %d..%d skipped without OnGap (connection %d)", f.name, f.mix, last+1, fseq-1, conn)
		} else if gl != last {
			f.v.add("%s (%s): OnGap reported %d..%d, the handler's last was %d", f.name, f.mix, gl+1, fseq-1, last)
		}
		if len(readBefore) > 0 {
			f.v.add("%s (%s): gap %d..%d: numbers %v were read (Extract) before %d but never delivered", f.name, f.mix, last+1, fseq-1, readBefore, fseq)
		}
	}
	if f.trackExtracts() {
		f.ct.mu.Lock()
		if first || len(f.ct.extracted) > 4096 {
			for x := range f.ct.extracted {
				if x < fseq {
					delete(f.ct.extracted, x)
				}
			}
		}
		f.ct.mu.Unlock()
	}
	return true
}

// checkMessageFacts checks Message.ConnID and Received: a connection keeps
// one number, numbers are not shared, the primary's grow, and receive times
// lie between the Client's creation and now, in order per connection.
func (f *soakFeed) checkMessageFacts(sc *soakClient, m wspool.Message) {
	now := time.Now()
	if m.ConnID == 0 || m.Received.IsZero() || m.Received.After(now) || m.Received.Before(sc.ct.addedAt) {
		f.v.add("%s: message %q: ConnID %d, Received %v (Client added %v, now %v)", f.name, m.Data, m.ConnID, m.Received, sc.ct.addedAt, now)
		return
	}
	conn, _, _, ok := parseData(m.Data)
	if !ok {
		return
	}
	cc := &sc.ct
	if id, seen := cc.connIDs[conn]; seen && id != m.ConnID {
		f.v.add("%s: connection %d delivered with ConnID %d, earlier %d", f.name, conn, m.ConnID, id)
	}
	if sv, seen := cc.servConns[m.ConnID]; seen && sv != conn {
		f.v.add("%s: ConnID %d on connections %d and %d", f.name, m.ConnID, sv, conn)
	}
	if len(cc.connIDs) < 10000 {
		cc.connIDs[conn], cc.servConns[m.ConnID] = m.ConnID, conn
	}
	if prev, seen := cc.lastRecv[conn]; seen && m.Received.Before(prev) {
		f.v.add("%s: connection %d: Received %v before the previous message's %v", f.name, conn, m.Received, prev)
	}
	cc.lastRecv[conn] = m.Received
	if !f.mix.standby && conn != cc.lastConn {
		if conn > cc.lastConn && m.ConnID <= cc.lastConnID {
			f.v.add("%s: connection %d has ConnID %d, the earlier connection %d had %d", f.name, conn, m.ConnID, cc.lastConn, cc.lastConnID)
		}
		cc.lastConn, cc.lastConnID = conn, m.ConnID
		for c := range cc.lastRecv { // keep the map small
			if c != conn && len(cc.lastRecv) > 64 {
				delete(cc.lastRecv, c)
			}
		}
	}
}

// pokeFromHandler asks for a rotation (only where duplicates are filtered),
// a reconnect, or returns an error wrapping ErrReconnect.
func (f *soakFeed) pokeFromHandler(ctx context.Context, sc *soakClient) error {
	c := sc.c.Load()
	if c == nil {
		return nil
	}
	start := time.Now()
	switch r := f.rng.IntN(3); {
	case r == 0 && (f.mix.seq || f.mix.rotate > 0):
		f.ct.hRotate.Add(1)
		if err := c.Rotate(ctx); err != nil && !errors.Is(err, wspool.ErrNotConnected) {
			f.v.add("%s: Rotate from the handler: %v", f.name, err)
		}
	case r <= 1:
		f.ct.hReconnect.Add(1)
		if err := c.Reconnect(errSoakPoke); err != nil && !errors.Is(err, wspool.ErrNotConnected) {
			f.v.add("%s: Reconnect from the handler: %v", f.name, err)
		}
	default:
		f.ct.hErrReconnect.Add(1)
		return fmt.Errorf("soak: handler asks for a resync: %w", wspool.ErrReconnect)
	}
	if d := time.Since(start); d > time.Second {
		f.v.add("%s: Rotate or Reconnect from the handler waited %v", f.name, d)
	}
	return nil
}

// poker calls Rotate and Reconnect on random poke feeds from the test's
// goroutine until stop.
type poker struct {
	feeds []*soakFeed
	rng   *rand.Rand
}

func (p *poker) run(stop <-chan struct{}) {
	if len(p.feeds) == 0 {
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
		f := p.feeds[p.rng.IntN(len(p.feeds))]
		if c := f.cur.Load().c.Load(); c != nil {
			var err error
			if (f.mix.seq || f.mix.rotate > 0) && p.rng.IntN(2) == 0 {
				f.ct.testRotate.Add(1)
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				err = c.Rotate(ctx)
				cancel()
				if err != nil && !errors.Is(err, wspool.ErrNotConnected) {
					f.ct.testRotateFailed.Add(1) // a dial under faults, or the deadline
				}
			} else {
				f.ct.testReconnect.Add(1)
				err = c.Reconnect(errSoakPoke)
			}
			if errors.Is(err, wspool.ErrNotConnected) {
				f.ct.testNotConnected.Add(1)
			}
		}
		tm.Reset(time.Duration(20+p.rng.IntN(60)) * time.Millisecond)
	}
}

// faultLog records when each proxy had a fault on (and the server was down),
// to tell a pong that was late for a reason from one that was not.
type faultLog struct {
	mu    sync.Mutex
	spans [][]span // per proxy
	open  []map[string]time.Time
	srv   []span
	srvAt time.Time
}

type span struct{ from, to time.Time }

func newFaultLog(n int) *faultLog {
	l := &faultLog{spans: make([][]span, n), open: make([]map[string]time.Time, n)}
	for i := range l.open {
		l.open[i] = map[string]time.Time{}
	}
	return l
}

func (l *faultLog) on(i int, kind string) {
	l.mu.Lock()
	l.open[i][kind] = time.Now()
	l.mu.Unlock()
}

func (l *faultLog) off(i int, kind string) {
	l.mu.Lock()
	l.spans[i] = append(l.spans[i], span{l.open[i][kind], time.Now()})
	delete(l.open[i], kind)
	l.mu.Unlock()
}

func (l *faultLog) instant(i int) {
	now := time.Now()
	l.mu.Lock()
	l.spans[i] = append(l.spans[i], span{now, now})
	l.mu.Unlock()
}

func (l *faultLog) serverDown() {
	l.mu.Lock()
	l.srvAt = time.Now()
	l.mu.Unlock()
}

func (l *faultLog) serverUp() {
	l.mu.Lock()
	l.srv = append(l.srv, span{l.srvAt, time.Now()})
	l.mu.Unlock()
}

// faulty reports whether proxy i had a fault on, or the server was down, at
// some time in [from, to].
func (l *faultLog) faulty(i int, from, to time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	overlaps := func(s span) bool { return !s.to.Before(from) && !s.from.After(to) }
	if i >= 0 && i < len(l.spans) {
		if slices.ContainsFunc(l.spans[i], overlaps) {
			return true
		}
		for _, at := range l.open[i] {
			if !at.After(to) {
				return true
			}
		}
	}
	return slices.ContainsFunc(l.srv, overlaps)
}

type contSummary struct {
	gaps, gapMsgs, resyncs, exact, serverPings, pingsSent, pongs, cuts, cutsExcused int64
	rateCuts, rateCutsExcused                                                       int64
	standbyWon, primaryWon                                                          int64
	testRotate, testRotateFailed, testReconnect, testNotConnected                   int64
	hRotate, hReconnect, hErrReconnect                                              int64
}

// checkContinuity checks the continuity counters once every Client has
// closed: OnGap against Stats.Gaps and GapMessages, server pings against
// Stats.ServerPings, what the standby connections won against what was
// handled, and every connection cut for a late pong against the faults.
func checkContinuity(feeds []*soakFeed, srv *seqServer, faults *faultLog, v *violations) contSummary {
	var sum contSummary
	for _, f := range feeds {
		var gaps, gapMsgs, pings int64
		var lanesConnected int64
		for _, sc := range f.clients {
			s := sc.c.Load().Stats()
			gaps += s.Gaps
			gapMsgs += s.GapMessages
			pings += s.ServerPings
			var laneWon int64
			for _, l := range s.Standby {
				laneWon += l.Won
				lanesConnected += l.Connects
			}
			if f.mix.standby {
				if len(s.Standby) > 1 || len(s.Standby) == 1 && s.Standby[0].Index != 1 { // none: the Client closed before it ran
					v.add("%s: Stats.Standby %+v, want one standby connection", f.name, s.Standby)
				}
				won, data, all := s.Won+laneWon, sc.ct.handledData.Load(), sc.handled.Load()
				// Every data message handled was won by one connection;
				// what a connection won and the queue dropped was not handled.
				// (The primary's Won counts the heartbeat replies and pings it
				// delivers too, against its doc: TestStandbyWonCountsOnlyData.
				// Until that is fixed the bound is every message handled.)
				if won < data || won > all+s.Dropped {
					v.add("%s (%s): the connections won %d (primary %d, standby %d), %d data messages handled (%d in all), %d dropped; Stats: delivered %d, queue depth %d, duplicates %d, state %v",
						f.name, f.mix, won, s.Won, laneWon, data, all, s.Dropped, s.Delivered, s.QueueDepth, s.Duplicates, s.State)
				}
				sum.standbyWon += laneWon
				sum.primaryWon += s.Won
			} else if len(s.Standby) != 0 || s.Won != 0 {
				v.add("%s: no standby, but Stats.Standby %+v, Won %d", f.name, s.Standby, s.Won)
			}
		}
		if f.mix.standby && lanesConnected == 0 {
			v.add("%s: the standby connection never connected", f.name)
		}
		if gaps != f.ct.gapCalls.Load() || gapMsgs != f.ct.gapMsgs.Load() {
			v.add("%s (%s): Stats.Gaps %d, GapMessages %d; OnGap saw %d gaps of %d messages", f.name, f.mix, gaps, gapMsgs, f.ct.gapCalls.Load(), f.ct.gapMsgs.Load())
		}
		sf := srv.feeds[f.idx]
		sf.mu.Lock()
		sent, pongs := sf.pingsSent, sf.pongsRecv
		sf.mu.Unlock()
		if pings < pongs || pings > sent {
			v.add("%s (%s): Stats.ServerPings %d, the server sent %d pings and got %d pongs", f.name, f.mix, pings, sent, pongs)
		}
		if f.mix.serverPing && sent >= 10 && pongs == 0 {
			v.add("%s: %d server pings, no pong", f.name, sent)
		}
		sum.gaps += gaps
		sum.gapMsgs += gapMsgs
		sum.resyncs += f.ct.resyncs.Load()
		sum.exact += f.ct.exactChecked.Load()
		sum.serverPings += pings
		sum.pingsSent += sent
		sum.pongs += pongs
		sum.testRotate += f.ct.testRotate.Load()
		sum.testRotateFailed += f.ct.testRotateFailed.Load()
		sum.testReconnect += f.ct.testReconnect.Load()
		sum.testNotConnected += f.ct.testNotConnected.Load()
		sum.hRotate += f.ct.hRotate.Load()
		sum.hReconnect += f.ct.hReconnect.Load()
		sum.hErrReconnect += f.ct.hErrReconnect.Load()
	}
	srv.cutMu.Lock()
	cuts := slices.Clone(srv.cuts)
	srv.cutMu.Unlock()
	for _, c := range cuts {
		sum.cuts++
		// A fault up to a second before the ping can still hold its pong
		// (a throttled or delayed backlog draining).
		if faults.faulty(c.proxy, c.sent.Add(-time.Second), c.at) {
			sum.cutsExcused++
			continue
		}
		v.add("server cut connection %d of feed %d (proxy %d, code %d) for a pong late by %v, with no fault on its proxy since a second before the ping",
			c.conn, c.feed, c.proxy, c.code, c.at.Sub(c.sent).Round(time.Millisecond))
	}
	// A feed paced as the README advises never goes over its upstream's
	// message-rate limit, but a fault on its path (a throttled or delayed
	// backlog draining at once) can bunch what it sent in pace.
	for _, c := range srv.rateCuts {
		sum.rateCuts++
		if faults.faulty(c.proxy, c.at.Add(-2*time.Second), c.at) {
			sum.rateCutsExcused++
			continue
		}
		v.add("server closed connection %d of feed %d (proxy %d) with 1008: %d messages in a second, over its limit of %d for the README's pacing, with no fault on its proxy for two seconds",
			c.conn, c.feed, c.proxy, c.count, c.limit)
	}
	return sum
}

func (s contSummary) String() string {
	return fmt.Sprintf("gaps=%d(messages %d, resyncs %d) exact-in-order=%d server-pings=%d(sent %d, pongs %d) late-pong-cuts=%d(during faults %d) rate-1008=%d(during faults %d) standby-won=%d(primary %d) rotate=test %d(failed %d)/handler %d reconnect=test %d/handler %d (not connected %d) handler-ErrReconnect=%d",
		s.gaps, s.gapMsgs, s.resyncs, s.exact, s.serverPings, s.pingsSent, s.pongs, s.cuts, s.cutsExcused, s.rateCuts, s.rateCutsExcused, s.standbyWon, s.primaryWon,
		s.testRotate, s.testRotateFailed, s.hRotate, s.testReconnect, s.hReconnect, s.testNotConnected, s.hErrReconnect)
}

// drainLostAtPush counts drains that gave up the message a Block queue's
// reader was pushing (see checkDrained).
var drainLostAtPush atomic.Int64

// drainResult is one feed's Drain.
type drainResult struct {
	f             *soakFeed
	err           error
	took          time.Duration
	droppedBefore int64
}

// checkDrained checks a feed after its Client drained with time to spare:
// nothing queued left, every message read delivered (a lossless queue drops
// nothing; a sequenced lossless feed's handler got the last number its
// reader accepted).
func checkDrained(r drainResult, v *violations) {
	f := r.f
	sc := f.cur.Load()
	c := sc.c.Load()
	s := c.Stats()
	if r.err != nil {
		v.add("%s (%s): Drain: %v after %v", f.name, f.mix, r.err, r.took)
	}
	if s.State != wspool.StateClosed || s.QueueDepth != 0 || s.Delivered != sc.handled.Load() {
		v.add("%s (%s): after Drain: %v, %d queued, %d delivered, %d handled", f.name, f.mix, s.State, s.QueueDepth, s.Delivered, sc.handled.Load())
	}
	if f.mix.lossless() && s.Dropped != r.droppedBefore {
		v.add("%s (%s): Drain dropped %d queued messages (Dropped %d -> %d)", f.name, f.mix, s.Dropped-r.droppedBefore, r.droppedBefore, s.Dropped)
	}
	if f.mix.seq && f.mix.lossless() {
		n, ok := c.LastSequence("")
		// (A message the reader had accepted while it waited for room in a
		// full Block queue was once given up by the drain:
		// TestDrainDeliversMessageWaitingForQueueRoom, fixed.)
		if ok && int64(n) != f.lastF.Load() {
			if int64(n) > f.lastF.Load() && f.mix.queue != qNone {
				drainLostAtPush.Add(1)
			}
			v.add("%s (%s): after Drain the reader accepted number %d, the handler got %d", f.name, f.mix, n, f.lastF.Load())
		}
	}
}

// otherProxy is the proxy a feed's standby connection goes through.
func otherProxy(proxies []*faultproxy.Proxy, i int) int { return (i + 1) % len(proxies) }

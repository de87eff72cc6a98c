package wspool_test

// The all-features chaos soak's server, feeds and checks (TestChaosSoak is in
// chaos_test.go).

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"golang.org/x/sync/errgroup"
)

// ---- the option mix ----

const (
	qNone = iota
	qBlock
	qBlockSmall
	qDropOldest
	qDropNewest
)

var queueNames = []string{"none", "block", "block-2", "drop-oldest", "drop-newest"}

// soakMix is one feed's combination of options, drawn from the seed.
type soakMix struct {
	queue       int
	drainBefore bool          // Queue.DrainBeforeReconnect
	sendBuf     bool          // WithSendBuffer
	bufMaxAge   bool          // ... with a MaxAge
	noReplay    bool          // a quarter of its sends carry NoReplay
	blocking    bool          // its sender uses Send (1 s context), else SendAsync
	rotate      time.Duration // WithMaxConnectionAge with a duplicate filter; 0: none
	heartbeat   time.Duration // WithHeartbeat interval (IsReply set); 0: none
	dropReplies bool
	stale       time.Duration // WithStaleTimeout; 0: none
	handlerSend bool          // the handler sends (Send and SendAsync) now and then
	login       bool          // OnConnect makes a second round trip
	panics      bool          // handler, Heartbeat.Message and OnStateChange panic now and then
	churn       bool          // removed and re-added while running
	pacing      int           // WithSendPacing: messages per 100 ms (pings too when odd); 0: none
	retryPolicy bool          // WithRetryPolicy (a linear curve that reads the close code)

	// Continuity (see chaos_continuity_test.go).
	seq         bool // WithSequence (the feed sequence, one key) with OnGap
	resume      bool // ... and a request func resuming from LastSequence (the server replays); OnGap resyncs
	skips       bool // ... and the server skips numbers on live connections now and then (resync fills them)
	standby     bool // WithStandby: one standby connection through another fault proxy
	serverPing  bool // the server sends JSON pings and cuts the connection when a pong is late (WithServerPing)
	pingDeliver bool // ... ServerPing.Deliver
	poke        bool // Reconnect and Rotate (from the test and the handler) and ErrReconnect from the handler
	drain       bool // Client.Drain at the end (the rest: Pool.Drain or Pool.Run's cancel)

	// Drawn last, so that older seeds keep their mix.
	timings     bool // WithTimings: one handler timing per handler call, none negative
	compression bool // WithCompression (offered; the soak server does not accept it)
	noUTF8      bool // WithUTF8Validation(false)
}

func drawMix(seed uint64, i int) soakMix {
	rng := rand.New(rand.NewPCG(seed, uint64(i)<<32|7))
	var m soakMix
	switch r := rng.IntN(10); {
	case r < 4:
		m.queue = qNone
	case r < 7:
		m.queue = qBlock
	case r < 8:
		m.queue = qBlockSmall
	case r < 9:
		m.queue = qDropOldest
	default:
		m.queue = qDropNewest
	}
	m.drainBefore = m.queue != qNone && rng.IntN(4) == 0
	m.sendBuf = rng.IntN(2) == 0
	m.bufMaxAge = m.sendBuf && rng.IntN(2) == 0
	m.noReplay = rng.IntN(3) == 0
	m.blocking = rng.IntN(4) == 0
	if rng.IntN(4) == 0 {
		m.rotate = 300*time.Millisecond + time.Duration(rng.Int64N(int64(1700*time.Millisecond)))
	}
	if rng.IntN(3) == 0 {
		m.heartbeat = 200*time.Millisecond + time.Duration(rng.Int64N(int64(300*time.Millisecond)))
		m.dropReplies = rng.IntN(2) == 0
	}
	if rng.IntN(4) == 0 {
		m.stale = time.Second + time.Duration(rng.Int64N(int64(2*time.Second)))
	}
	m.handlerSend = rng.IntN(3) == 0
	m.login = rng.IntN(3) == 0
	m.panics = rng.IntN(3) == 0
	m.churn = rng.IntN(10) == 0
	if rng.IntN(3) == 0 {
		m.pacing = 5 + rng.IntN(30)
	}
	m.retryPolicy = rng.IntN(3) == 0
	// Drawn after the older options so that a seed keeps drawing the same
	// older mix.
	m.seq = rng.IntN(2) == 0
	m.resume = m.seq && rng.IntN(4) != 0
	m.skips = m.resume && rng.IntN(3) == 0
	m.standby = m.seq && rng.IntN(4) == 0
	m.serverPing = rng.IntN(3) == 0
	m.pingDeliver = m.serverPing && rng.IntN(3) == 0
	m.poke = rng.IntN(4) == 0
	m.drain = rng.IntN(3) == 0
	m.timings = rng.IntN(3) == 0
	m.compression = rng.IntN(4) == 0
	m.noUTF8 = rng.IntN(5) == 0
	return m
}

func (m soakMix) lossless() bool { return m.queue != qDropOldest && m.queue != qDropNewest }

// exact: every number exactly once, in order, across every reset (a
// sequenced, resumed feed without a drop policy).
func (m soakMix) exact() bool { return m.seq && m.resume && m.lossless() }

func (m soakMix) String() string {
	s := "queue=" + queueNames[m.queue]
	add := func(on bool, name string) {
		if on {
			s += " " + name
		}
	}
	add(m.drainBefore, "drain-before-reconnect")
	add(m.sendBuf, "send-buffer")
	add(m.bufMaxAge, "max-age")
	add(m.noReplay, "no-replay")
	add(m.blocking, "blocking-send")
	add(m.rotate > 0, fmt.Sprintf("rotate=%v", m.rotate.Round(time.Millisecond)))
	add(m.heartbeat > 0, fmt.Sprintf("heartbeat=%v", m.heartbeat.Round(time.Millisecond)))
	add(m.dropReplies, "drop-replies")
	add(m.stale > 0, fmt.Sprintf("stale=%v", m.stale.Round(time.Millisecond)))
	add(m.handlerSend, "handler-sends")
	add(m.login, "login")
	add(m.panics, "panics")
	add(m.churn, "churn")
	add(m.pacing > 0, fmt.Sprintf("pacing=%d/100ms", m.pacing))
	add(m.retryPolicy, "retry-policy")
	add(m.timings, "timings")
	add(m.compression, "compression")
	add(m.noUTF8, "no-utf8-check")
	add(m.seq, "sequence")
	add(m.resume, "resume")
	add(m.skips, "server-skips")
	add(m.standby, "standby")
	add(m.serverPing, "server-ping")
	add(m.pingDeliver, "ping-deliver")
	add(m.poke, "reconnect+rotate")
	add(m.drain, "drain")
	return s
}

// mixSummary counts feeds per option.
func mixSummary(feeds []*soakFeed) string {
	m := map[string]int{}
	for _, f := range feeds {
		x := f.mix
		m["queue-"+queueNames[x.queue]]++
		count := func(on bool, name string) {
			if on {
				m[name]++
			}
		}
		count(x.drainBefore, "drain-before-reconnect")
		count(x.sendBuf, "send-buffer")
		count(x.bufMaxAge, "send-buffer-max-age")
		count(x.noReplay, "no-replay")
		count(x.blocking, "blocking-send")
		count(x.rotate > 0, "rotate+dup-filter")
		count(x.heartbeat > 0, "heartbeat")
		count(x.dropReplies, "drop-replies")
		count(x.stale > 0, "stale-watchdog")
		count(x.pacing > 0, "send-pacing")
		count(x.retryPolicy, "retry-policy")
		count(x.timings, "timings")
		count(x.compression, "compression")
		count(x.noUTF8, "no-utf8-check")
		count(x.handlerSend, "handler-sends")
		count(x.login, "onconnect-login")
		count(x.panics, "panics")
		count(x.churn, "remove+re-add")
		count(x.seq, "sequence")
		count(x.resume, "sequence-resume")
		count(x.exact(), "sequence-exact")
		count(x.skips, "server-skips")
		count(x.standby, "standby")
		count(x.serverPing, "server-ping")
		count(x.pingDeliver, "server-ping-deliver")
		count(x.poke, "reconnect+rotate")
		count(x.drain, "client-drain")
	}
	return formatCounts(m)
}

// ---- the sequenced server ----

// seqServer serves /feed/<n>. Per feed a ticker advances a feed sequence
// (fseq) every few ms; every open connection of the feed gets every fseq
// published after it subscribed, as "d <conn> <cseq> <fseq>" (cseq 1, 2, ...
// per connection), so two overlapping connections (a rotation) carry the same
// messages. A connection starts with "sub <n>[ login]", answered "hello
// <conn>"; with login it then reads "auth <n>" and answers "ok <conn>". Then
// it records every "s <n> <seq>" and "h <n> <seq>" the client sends (the
// sender's and the handler's streams), answers "hb <k>" with "hbr <k>", and
// notes whether the connection ended with the client's close frame.
type seqServer struct {
	seed           uint64
	minGap, maxGap time.Duration
	v              *violations
	nextConn       atomic.Int64
	paused         atomic.Bool
	dataSent       atomic.Int64
	feeds          []*serverFeed

	mu    sync.Mutex
	conns map[int64]*seqConn

	// Continuity: per feed, whether the server skips numbers and sends
	// pings (set before the pool runs); what the pings saw.
	feedCfg   []serverFeedCfg
	skipped   atomic.Int64
	replayed  atomic.Int64 // data messages sent again from a resume point
	pongMax   atomic.Int64 // slowest pong, ns
	pongsSlow atomic.Int64 // pongs later than a second
	cutMu     sync.Mutex
	cuts      []pongCut // connections cut for a late pong
	rateCuts  []rateCut // connections closed with 1008 for their message rate
}

// serverFeedCfg is what the server does for one feed: skip numbers, send
// data-level pings, and enforce a message-rate limit (rateLimit messages in
// any sliding second, measured as they arrive; over it: close 1008, as
// exchanges do) on feeds paced as the README advises (see soakRateLimit).
type serverFeedCfg struct {
	skips, ping bool
	rateLimit   int
}

// soakRateLimit is the server's limit for a feed paced at m messages per
// 100 ms: the same rate counted over a sliding second, with 25 % headroom.
// The pacing's own receiver-side guarantee (no more than m in any 100 ms at
// the receiver while delivery jitter stays under its margin, Per/10) is
// TestPacingHoldsAtTheReceiver's; the soak, 200 feeds under -race on two
// cores, has scheduling jitter far above 10 ms, so here the limit is counted
// over the second an exchange typically uses, with room for that jitter.
func soakRateLimit(m int) int { return (10*m*5 + 3) / 4 }

// rateCut is a connection the server closed with 1008 for going over its
// feed's message-rate limit.
type rateCut struct {
	feed, proxy  int
	conn         int64
	at           time.Time
	count, limit int
}

// rateWindow counts one connection's inbound messages over the last second.
type rateWindow struct{ at []time.Time }

// note records a message at now and reports how many arrived within the
// second up to now.
func (w *rateWindow) note(now time.Time) int {
	w.at = append(w.at, now)
	i := 0
	for i < len(w.at) && now.Sub(w.at[i]) >= time.Second {
		i++
	}
	w.at = w.at[i:]
	return len(w.at)
}

// pongCut is a connection the server cut because a pong was late.
type pongCut struct {
	feed, proxy int
	conn        int64
	sent, at    time.Time
	code        int // 1008, or 0: the TCP connection was just closed
}

type serverFeed struct {
	mu     sync.Mutex
	head   int64         // the latest fseq published
	notify chan struct{} // closed and replaced on every tick
	open   map[int64]*seqConn
	recv   map[string][]sendRecord // per stream ("s", "h")
	hbRecv int64

	pingsSent, pongsRecv int64
}

type sendRecord struct{ seq, conn int64 }

type seqConn struct {
	id      int64
	feed    int
	regHead int64   // the fseq it starts after: the feed's head when it subscribed, or the resume point
	live    int64   // the feed's head when it subscribed: fseq after it are live, not replayed
	overlap []int64 // the feed's connections open when it subscribed
	proxy   int     // the fault proxy it came through (the URL's p)

	// Final once the server's handler for it returned.
	graceful atomic.Bool  // the client's close frame arrived: everything it wrote before did too
	written  atomic.Int64 // data messages written (its last cseq)
	lastF    atomic.Int64 // fseq of the last one
}

func newSeqServer(seed uint64, feeds int, minGap, maxGap time.Duration, v *violations) *seqServer {
	s := &seqServer{seed: seed, conns: map[int64]*seqConn{}, v: v, minGap: minGap, maxGap: maxGap}
	s.feeds = make([]*serverFeed, feeds)
	for i := range s.feeds {
		s.feeds[i] = &serverFeed{notify: make(chan struct{}), open: map[int64]*seqConn{}, recv: map[string][]sendRecord{}}
	}
	return s
}

func (s *seqServer) conn(id int64) *seqConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[id]
}

// runTickers advances every feed's sequence until stop; it returns when all
// tickers have stopped.
func (s *seqServer) runTickers(stop <-chan struct{}) {
	var wg sync.WaitGroup
	for i, sf := range s.feeds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(s.seed, uint64(i)<<32|3))
			tm := time.NewTimer(s.minGap)
			defer tm.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tm.C:
				}
				if !s.paused.Load() {
					sf.mu.Lock()
					sf.head++
					close(sf.notify)
					sf.notify = make(chan struct{})
					sf.mu.Unlock()
				}
				tm.Reset(s.minGap + time.Duration(rng.Int64N(int64(s.maxGap-s.minGap)+1)))
			}
		}()
	}
	wg.Wait()
}

func (s *seqServer) handle(c *websocket.Conn, r *http.Request) {
	feed, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/feed/"))
	if err != nil || feed < 0 || feed >= len(s.feeds) {
		s.v.add("server: unexpected path %q", r.URL.Path)
		return
	}
	sf := s.feeds[feed]
	sc := &seqConn{id: s.nextConn.Add(1), feed: feed}
	q := r.URL.Query()
	sc.proxy, _ = strconv.Atoi(q.Get("p"))
	from := int64(-1)
	if f := q.Get("from"); f != "" {
		if from, err = strconv.ParseInt(f, 10, 64); err != nil || from < 0 {
			s.v.add("server: feed %d: bad resume point %q", feed, f)
			return
		}
	}
	s.mu.Lock()
	s.conns[sc.id] = sc
	s.mu.Unlock()

	var rate rateWindow
	limit := 0
	if s.feedCfg != nil {
		limit = s.feedCfg[feed].rateLimit
	}
	// overRate counts an inbound message; over the feed's limit the
	// connection is closed with 1008 and the cut recorded.
	overRate := func() bool {
		if limit == 0 {
			return false
		}
		now := time.Now()
		n := rate.note(now)
		if n <= limit {
			return false
		}
		s.cutMu.Lock()
		s.rateCuts = append(s.rateCuts, rateCut{feed: feed, proxy: sc.proxy, conn: sc.id, at: now, count: n, limit: limit})
		s.cutMu.Unlock()
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.ClosePolicyViolation, "too many requests"), now.Add(time.Second))
		return true
	}

	_, msg, err := c.ReadMessage()
	if err != nil || overRate() {
		return
	}
	sub := "sub " + strconv.Itoa(feed)
	login := string(msg) == sub+" login"
	if string(msg) != sub && !login {
		s.v.add("server: conn %d of feed %d: first message %q, want %q (OnConnect must go first)", sc.id, feed, msg, sub)
		return
	}
	// From here on every fseq published goes to this connection too.
	sf.mu.Lock()
	sc.regHead, sc.live = sf.head, sf.head
	if from > sf.head {
		s.v.add("server: conn %d of feed %d resumes from %d, past the head %d", sc.id, feed, from, sf.head)
	} else if from >= 0 {
		sc.regHead = from // replay what came after the resume point
	}
	for id := range sf.open {
		sc.overlap = append(sc.overlap, id)
	}
	sf.open[sc.id] = sc
	sf.mu.Unlock()
	defer func() {
		sf.mu.Lock()
		delete(sf.open, sc.id)
		sf.mu.Unlock()
	}()
	id := strconv.FormatInt(sc.id, 10)
	if err := c.WriteMessage(websocket.TextMessage, []byte("hello "+id)); err != nil {
		return
	}
	if login {
		_, msg, err := c.ReadMessage()
		if err != nil || overRate() {
			return
		}
		if want := "auth " + strconv.Itoa(feed); string(msg) != want {
			s.v.add("server: conn %d of feed %d: login sent %q, want %q", sc.id, feed, msg, want)
			return
		}
		if err := c.WriteMessage(websocket.TextMessage, []byte("ok "+id)); err != nil {
			return
		}
	}
	var wmu sync.Mutex // the publisher and heartbeat replies write concurrently
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.publish(c, &wmu, sf, sc, done) }()
	var pongs chan int64
	if s.feedCfg != nil && s.feedCfg[feed].ping {
		pongs = make(chan int64, 4)
		wg.Add(1)
		go func() { defer wg.Done(); s.pinger(c, &wmu, sf, sc, done, pongs) }()
	}
	defer func() {
		close(done)
		c.NetConn().Close() // unblocks a publisher stuck on a full socket
		wg.Wait()
	}()

	last := map[string]int64{}
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			// gorilla reports a bare EOF as a CloseError 1006, which no peer sends.
			var ce *websocket.CloseError
			if errors.As(err, &ce) && ce.Code != websocket.CloseAbnormalClosure {
				sc.graceful.Store(true)
			}
			return
		}
		if overRate() {
			return
		}
		if k, ok := strings.CutPrefix(string(data), `{"pong":`); ok && pongs != nil {
			n, err := strconv.ParseInt(strings.TrimSuffix(k, "}"), 10, 64)
			if err != nil {
				s.v.add("server: conn %d of feed %d: bad pong %q", sc.id, feed, data)
				continue
			}
			sf.mu.Lock()
			sf.pongsRecv++
			sf.mu.Unlock()
			select {
			case pongs <- n:
			default:
				s.v.add("server: conn %d of feed %d: pongs piling up (%d)", sc.id, feed, n)
			}
			continue
		}
		if k, ok := strings.CutPrefix(string(data), "hb "); ok {
			sf.mu.Lock()
			sf.hbRecv++
			sf.mu.Unlock()
			wmu.Lock()
			err := c.WriteMessage(websocket.TextMessage, []byte("hbr "+k))
			wmu.Unlock()
			if err != nil {
				return
			}
			continue
		}
		stream, seq, ok := parseSend(data, feed)
		if !ok {
			s.v.add("server: conn %d of feed %d: unexpected message %q", sc.id, feed, data)
			continue
		}
		if seq <= last[stream] {
			s.v.add("server: conn %d of feed %d: send %s%d arrived after %s%d", sc.id, feed, stream, seq, stream, last[stream])
		}
		last[stream] = seq
		sf.mu.Lock()
		sf.recv[stream] = append(sf.recv[stream], sendRecord{seq: seq, conn: sc.id})
		sf.mu.Unlock()
	}
}

// publish writes every fseq after the connection's registration, in order.
func (s *seqServer) publish(c *websocket.Conn, wmu *sync.Mutex, sf *serverFeed, sc *seqConn, done <-chan struct{}) {
	prefix := "d " + strconv.FormatInt(sc.id, 10) + " "
	buf := make([]byte, 0, 48)
	next := sc.regHead + 1
	var cseq int64
	skips := s.feedCfg != nil && s.feedCfg[sc.feed].skips
	rng := rand.New(rand.NewPCG(s.seed, uint64(sc.id)<<8|5))
	for {
		sf.mu.Lock()
		head, ch := sf.head, sf.notify
		sf.mu.Unlock()
		if next > head {
			select {
			case <-done:
				return
			case <-ch:
			}
			continue
		}
		select {
		case <-done:
			return
		default:
		}
		// Now and then a live number is not sent on this connection (a
		// resync from a resume point fills it).
		if skips && cseq > 0 && next > sc.live && rng.IntN(150) == 0 {
			s.skipped.Add(1)
			next++
			continue
		}
		if next <= sc.live {
			s.replayed.Add(1)
		}
		buf = strconv.AppendInt(append(buf[:0], prefix...), cseq+1, 10)
		buf = strconv.AppendInt(append(buf, ' '), next, 10)
		wmu.Lock()
		err := c.WriteMessage(websocket.TextMessage, buf)
		wmu.Unlock()
		if err != nil {
			return
		}
		cseq++
		sc.written.Store(cseq)
		sc.lastF.Store(next)
		next++
		s.dataSent.Add(1)
	}
}

// The server's data-level pings: one outstanding per connection, the next a
// while after the pong; no pong within soakPongDeadline cuts the connection.
const (
	soakPingEvery    = 700 * time.Millisecond
	soakPongDeadline = 4 * time.Second
)

// pinger sends {"ping":n} and waits for {"pong":n}; a late pong cuts the
// connection (with 1008, or just the TCP connection), and is recorded.
func (s *seqServer) pinger(c *websocket.Conn, wmu *sync.Mutex, sf *serverFeed, sc *seqConn, done <-chan struct{}, pongs <-chan int64) {
	rng := rand.New(rand.NewPCG(s.seed, uint64(sc.id)<<8|6))
	tm := time.NewTimer(soakPingEvery)
	defer tm.Stop()
	for n := int64(1); ; n++ {
		select {
		case <-done:
			return
		case <-tm.C:
		}
		if s.paused.Load() {
			tm.Reset(soakPingEvery)
			n--
			continue
		}
		wmu.Lock()
		err := c.WriteMessage(websocket.TextMessage, []byte(`{"ping":`+strconv.FormatInt(n, 10)+`}`))
		wmu.Unlock()
		if err != nil {
			return
		}
		sent := time.Now()
		sf.mu.Lock()
		sf.pingsSent++
		sf.mu.Unlock()
		late := time.NewTimer(soakPongDeadline)
	wait:
		for {
			select {
			case <-done:
				late.Stop()
				return
			case k := <-pongs:
				if k > n {
					s.v.add("server: conn %d of feed %d: pong %d for ping %d not sent yet", sc.id, sc.feed, k, n)
				}
				if k == n {
					d := int64(time.Since(sent))
					for old := s.pongMax.Load(); d > old && !s.pongMax.CompareAndSwap(old, d); old = s.pongMax.Load() {
					}
					if d > int64(time.Second) {
						s.pongsSlow.Add(1)
					}
					late.Stop()
					break wait
				}
			case <-late.C:
				cut := pongCut{feed: sc.feed, proxy: sc.proxy, conn: sc.id, sent: sent, at: time.Now()}
				if rng.IntN(2) == 0 {
					cut.code = websocket.ClosePolicyViolation
					_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(cut.code, "pong late"), time.Now().Add(100*time.Millisecond))
				}
				c.NetConn().Close()
				s.cutMu.Lock()
				s.cuts = append(s.cuts, cut)
				s.cutMu.Unlock()
				return
			}
		}
		tm.Reset(soakPingEvery)
	}
}

// parseSend parses "s <feed> <seq>" or "h <feed> <seq>".
func parseSend(data []byte, feed int) (stream string, seq int64, ok bool) {
	stream, rest, ok := strings.Cut(string(data), " ")
	if !ok || (stream != "s" && stream != "h") {
		return "", 0, false
	}
	rest, ok = strings.CutPrefix(rest, strconv.Itoa(feed)+" ")
	if !ok {
		return "", 0, false
	}
	n, err := strconv.ParseInt(rest, 10, 64)
	return stream, n, err == nil && n > 0
}

// parseData parses "d <conn> <cseq> <fseq>".
func parseData(data []byte) (conn, cseq, fseq int64, ok bool) {
	f := strings.Fields(string(data))
	if len(f) != 4 || f[0] != "d" {
		return 0, 0, 0, false
	}
	var err [3]error
	conn, err[0] = strconv.ParseInt(f[1], 10, 64)
	cseq, err[1] = strconv.ParseInt(f[2], 10, 64)
	fseq, err[2] = strconv.ParseInt(f[3], 10, 64)
	return conn, cseq, fseq, err == [3]error{} && conn > 0 && cseq > 0 && fseq > 0
}

// ---- the feeds ----

// soakFeed is one feed of the soak, across the Clients it is re-added as.
type soakFeed struct {
	hist    stateRing // the latest state changes, for a feed slow to recover
	idx     int
	name    string
	mix     soakMix
	sendGap time.Duration // the sender sends every 1-4 sendGap
	seed    uint64
	v       *violations
	tally   *sendTally
	pool    *wspool.Pool
	url     string

	cur     atomic.Pointer[soakClient] // the Client now in the pool
	clients []*soakClient              // every Client it has been (the test goroutine's)

	// Owned by the handler (never called concurrently with itself, and a
	// feed's Clients never run at once).
	lastConn, lastCseq int64
	rng                *rand.Rand
	seg                segment
	hsendSeq           int64

	lastF atomic.Int64 // the handler's latest fseq (read by the duplicate filter)

	// Injected failures and what the callbacks saw.
	handlerErrs, handlerPanics, hbPanics, statePanics atomic.Int64
	hbCalls                                           atomic.Int64
	dupPastFilter                                     atomic.Int64 // queued feeds: duplicates the filter could not see (see handle)
	handlerTimings, negTimings                        atomic.Int64 // WithTimings: handler timings seen, negative durations seen
	removeInHandler                                   atomic.Int32 // 1: the churner asks the handler to Remove the feed
	removedInHandler                                  chan struct{}

	mu         sync.Mutex
	helloConns []int64         // connections whose OnConnect completed, in order
	filtered   map[int64]int64 // per connection: messages the duplicate filter dropped
	segs       []segment
	onErrors   map[string]int64 // *HandlerError by Callback ("handler" for the handler)

	send, hsend sendStream // the sender's stream ("s") and the handler's ("h")

	handlerSendMax atomic.Int64 // longest handler Send, ns

	ct contFeed // continuity (chaos_continuity_test.go)
}

// soakClient is one Client of a feed and the counters that pair with its Stats.
type soakClient struct {
	c                                 atomic.Pointer[wspool.Client]
	handled, onConnReads, onConnSends atomic.Int64
	lastHandledAt                     atomic.Int64 // UnixNano of the latest data message handled

	ct contClient // continuity (chaos_continuity_test.go)
}

// segment is what the handler delivered from one connection.
type segment struct {
	conn     int64
	lastCseq int64 // the last cseq delivered (duplicates included)
	firstNew int64 // the first fseq delivered that was not a duplicate (0: none)
	lastF    int64 // the feed's last fseq as of this segment's last delivery (its last new one, or the one its duplicates repeated)
}

func newSoakFeed(i int, seed uint64, v *violations, tally *sendTally, pool *wspool.Pool, url string) *soakFeed {
	f := &soakFeed{idx: i, name: fmt.Sprintf("f%03d", i), mix: drawMix(seed, i), seed: seed, v: v, tally: tally, pool: pool, url: url,
		rng:      rand.New(rand.NewPCG(seed, uint64(i)<<32|1)),
		filtered: map[int64]int64{}, onErrors: map[string]int64{}, removedInHandler: make(chan struct{}, 1)}
	f.send.name, f.hsend.name = "s", "h"
	f.ct.init()
	return f
}

func (f *soakFeed) options() []wspool.Option {
	m := f.mix
	opts := []wspool.Option{wspool.WithName(f.name), wspool.WithOnConnect(f.onConnect), wspool.WithOnError(f.onError)}
	switch m.queue {
	case qBlock:
		opts = append(opts, wspool.WithQueue(wspool.Queue{Messages: 16, Policy: wspool.Block, DrainBeforeReconnect: m.drainBefore}))
	case qBlockSmall:
		opts = append(opts, wspool.WithQueue(wspool.Queue{Messages: 2, Policy: wspool.Block, DrainBeforeReconnect: m.drainBefore}))
	case qDropOldest:
		opts = append(opts, wspool.WithQueue(wspool.Queue{Messages: 3, Policy: wspool.DropOldest, DrainBeforeReconnect: m.drainBefore}))
	case qDropNewest:
		opts = append(opts, wspool.WithQueue(wspool.Queue{Messages: 3, Policy: wspool.DropNewest, DrainBeforeReconnect: m.drainBefore}))
	}
	if m.sendBuf {
		sb := wspool.SendBuffer{Messages: 32}
		if m.bufMaxAge {
			sb.MaxAge = 1500 * time.Millisecond
		}
		opts = append(opts, wspool.WithSendBuffer(sb))
	}
	if m.rotate > 0 {
		opts = append(opts, wspool.WithMaxConnectionAge(m.rotate), wspool.WithDuplicateFilter(f.isDup))
	}
	if m.heartbeat > 0 {
		opts = append(opts, wspool.WithHeartbeat(wspool.Heartbeat{
			Interval:    m.heartbeat,
			Message:     f.heartbeatMessage,
			IsReply:     func(m wspool.Message) bool { return strings.HasPrefix(string(m.Data), "hbr ") },
			DropReplies: m.dropReplies,
		}))
	}
	if m.stale > 0 {
		opts = append(opts, wspool.WithStaleTimeout(m.stale))
	}
	if m.panics {
		opts = append(opts, wspool.WithOnStateChange(f.onStateChange))
	}
	if m.pacing > 0 {
		opts = append(opts, wspool.WithSendPacing(wspool.SendPacing{Messages: m.pacing, Per: 100 * time.Millisecond, Pings: m.pacing%2 == 1}))
	}
	if m.retryPolicy {
		opts = append(opts, wspool.WithRetryPolicy(soakRetryPolicy))
	}
	if m.timings {
		opts = append(opts, wspool.WithTimings(func(t wspool.Timing) {
			if t.Kind == wspool.TimingHandler {
				f.handlerTimings.Add(1)
			}
			if t.D < 0 {
				f.negTimings.Add(1)
			}
		}))
	}
	if m.compression {
		opts = append(opts, wspool.WithCompression(true))
	}
	if m.noUTF8 {
		opts = append(opts, wspool.WithUTF8Validation(false))
	}
	return append(opts, f.continuityOptions()...)
}

// add creates the feed's next Client in the pool.
func (f *soakFeed) add() error {
	sc := &soakClient{}
	sc.ct.init()
	f.cur.Store(sc) // before Add: OnConnect may run before Add returns
	c, err := f.pool.Add(f.url, f.handle, f.options()...)
	if err != nil {
		return err
	}
	sc.c.Store(c)
	f.clients = append(f.clients, sc)
	return nil
}

func (f *soakFeed) latestHello() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.helloConns) == 0 {
		return 0
	}
	return f.helloConns[len(f.helloConns)-1]
}

func (f *soakFeed) helloIndex(conn int64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, ok := slices.BinarySearch(f.helloConns, conn)
	if !ok {
		return -1
	}
	return i
}

func (f *soakFeed) onConnect(ctx context.Context, cn *wspool.Conn) error {
	sc := f.cur.Load()
	sub := "sub " + strconv.Itoa(f.idx)
	if f.mix.login {
		sub += " login"
	}
	if err := cn.Send(ctx, wspool.TextMessage, []byte(sub)); err != nil {
		return err
	}
	sc.onConnSends.Add(1)
	m, err := cn.ReadMessage(ctx)
	if err != nil {
		return err
	}
	sc.onConnReads.Add(1)
	rest, ok := strings.CutPrefix(string(m.Data), "hello ")
	id, err := strconv.ParseInt(rest, 10, 64)
	if !ok || err != nil {
		f.v.add("%s: OnConnect read %q, want hello", f.name, m.Data)
		return errors.New("no hello")
	}
	if f.mix.login {
		if err := cn.Send(ctx, wspool.TextMessage, []byte("auth "+strconv.Itoa(f.idx))); err != nil {
			return err
		}
		sc.onConnSends.Add(1)
		m, err := cn.ReadMessage(ctx)
		if err != nil {
			return err
		}
		sc.onConnReads.Add(1)
		if want := "ok " + rest; string(m.Data) != want {
			f.v.add("%s: OnConnect login read %q, want %q", f.name, m.Data, want)
			return errors.New("no login")
		}
	}
	f.mu.Lock()
	if n := len(f.helloConns); n > 0 && f.helloConns[n-1] >= id {
		if !f.mix.standby { // standby connections subscribe beside the primary ones
			f.v.add("%s (%s): connection %d after %d", f.name, f.mix, id, f.helloConns[n-1])
		}
		i, _ := slices.BinarySearch(f.helloConns, id)
		f.helloConns = slices.Insert(f.helloConns, i, id)
	} else {
		f.helloConns = append(f.helloConns, id)
	}
	f.mu.Unlock()
	return nil
}

func (f *soakFeed) onError(_ string, err error) {
	var he *wspool.HandlerError
	if !errors.As(err, &he) {
		return
	}
	cb := he.Callback
	if cb == "" {
		cb = "handler"
	}
	f.mu.Lock()
	f.onErrors[cb]++
	f.mu.Unlock()
}

func (f *soakFeed) onStateChange(sc wspool.StateChange) {
	f.hist.add(sc)
	// Runs on the feed's goroutines (not the handler's rng's owner).
	if rand.IntN(30) == 0 {
		f.statePanics.Add(1)
		panic("soak: OnStateChange panic")
	}
}

func (f *soakFeed) heartbeatMessage() (wspool.MessageType, []byte) {
	n := f.hbCalls.Add(1)
	if f.mix.panics && n%40 == 0 {
		f.hbPanics.Add(1)
		panic("soak: Heartbeat.Message panic")
	}
	return wspool.TextMessage, []byte("hb " + strconv.FormatInt(n, 10))
}

// isDup drops a message of the connection after a rotation that the handler
// has seen already. It compares with the handler's latest fseq, as the
// option's doc suggests; with a queue the handler can be behind the reader,
// so some duplicates pass (the handler drops and counts them).
func (f *soakFeed) isDup(m wspool.Message) bool {
	conn, _, fseq, ok := parseData(m.Data)
	if !ok || fseq > f.lastF.Load() {
		return false
	}
	f.mu.Lock()
	f.filtered[conn]++
	f.mu.Unlock()
	return true
}

var errSoakHandler = errors.New("soak: handler error")

func (f *soakFeed) handle(ctx context.Context, m wspool.Message) error {
	sc := f.cur.Load()
	sc.handled.Add(1)
	f.checkMessageFacts(sc, m)
	if strings.HasPrefix(string(m.Data), `{"ping":`) {
		if !f.mix.pingDeliver {
			f.v.add("%s (%s): handler got server ping %q", f.name, f.mix, m.Data)
		}
		return nil
	}
	if strings.HasPrefix(string(m.Data), "hbr ") {
		if f.mix.heartbeat == 0 || f.mix.dropReplies {
			f.v.add("%s (%s): handler got heartbeat reply %q", f.name, f.mix, m.Data)
		}
		return nil
	}
	conn, cseq, fseq, ok := parseData(m.Data)
	if !ok {
		f.v.add("%s: unexpected message %q", f.name, m.Data)
		return nil
	}
	sc.ct.handledData.Add(1)
	if f.mix.seq {
		if !f.checkSequenced(sc, m, conn, fseq) {
			return nil
		}
		return f.handleData(ctx, sc, m)
	}
	lossless := f.mix.lossless()
	switch {
	case conn < f.lastConn:
		f.v.add("%s: message %d of connection %d after connection %d", f.name, cseq, conn, f.lastConn)
		return nil
	case conn == f.lastConn:
		if lossless && cseq != f.lastCseq+1 {
			f.v.add("%s (%s): connection %d: message %d after %d (gap or duplicate)", f.name, f.mix, conn, cseq, f.lastCseq)
		} else if cseq <= f.lastCseq {
			f.v.add("%s (%s): connection %d: message %d after %d (reordered or duplicate)", f.name, f.mix, conn, cseq, f.lastCseq)
		}
	default:
		f.mu.Lock()
		dropped := f.filtered[conn]
		if f.seg.conn != 0 {
			f.segs = append(f.segs, f.seg)
		}
		f.mu.Unlock()
		f.seg = segment{conn: conn}
		if lossless && cseq != 1+dropped {
			f.v.add("%s (%s): connection %d starts at message %d, the duplicate filter dropped %d before it", f.name, f.mix, conn, cseq, dropped)
		}
		if f.helloIndex(conn) < 0 {
			f.v.add("%s: message from connection %d whose OnConnect never completed", f.name, conn)
		}
		f.lastConn = conn
	}
	f.lastCseq = cseq
	f.seg.lastCseq = cseq
	// Across connections the feed sequence only grows: a new connection
	// gets what was published after it subscribed, and a rotation's
	// overlap is what the duplicate filter removes.
	if last := f.lastF.Load(); fseq <= last {
		// The segment has seen the feed up to last: a rotation from it is
		// checked against that, also when all it delivered were duplicates
		// (seed 550103538: a replacement rotated again after one duplicate
		// was reported as a gap from fseq 0).
		f.seg.lastF = max(f.seg.lastF, last)
		if f.mix.rotate > 0 && f.mix.queue != qNone {
			f.dupPastFilter.Add(1) // queued: the filter compared with a handler behind the reader
		} else {
			f.v.add("%s (%s): connection %d delivered fseq %d after %d (a duplicate the filter let through, or reordered)", f.name, f.mix, conn, fseq, last)
		}
		return nil
	}
	f.lastF.Store(fseq)
	if f.seg.firstNew == 0 {
		f.seg.firstNew = fseq
	}
	f.seg.lastF = fseq
	return f.handleData(ctx, sc, m)
}

// handleData is the handler's part after the ordering checks: removes,
// sends, pokes, failures and slowness.
func (f *soakFeed) handleData(ctx context.Context, sc *soakClient, m wspool.Message) error {
	sc.lastHandledAt.Store(time.Now().UnixNano())

	if f.removeInHandler.Load() == 1 && f.removeInHandler.CompareAndSwap(1, 0) {
		start := time.Now()
		var err error
		if f.rng.IntN(2) == 0 {
			err = f.pool.Remove(f.name)
		} else {
			// From a goroutine the handler starts and waits for: the
			// library cannot tell it from any other goroutine.
			var g errgroup.Group
			g.Go(func() error { return f.pool.Remove(f.name) })
			err = g.Wait()
		}
		if d := time.Since(start); d > time.Second || err != nil {
			f.v.add("%s: Pool.Remove from the handler took %v (want no wait), err %v", f.name, d, err)
		}
		f.removedInHandler <- struct{}{}
		return nil
	}

	if f.mix.handlerSend && f.rng.IntN(25) == 0 {
		f.handlerSend(ctx, sc)
	}
	if f.mix.poke && f.rng.IntN(300) == 0 {
		if err := f.pokeFromHandler(ctx, sc); err != nil {
			return err
		}
	}

	// Now and then the handler is slow (holding the reader or filling the
	// queue), fails or panics.
	r := f.rng.IntN(10000)
	switch {
	case f.mix.panics && r < 20:
		f.handlerPanics.Add(1)
		panic("soak: handler panic")
	case r >= 9990:
		f.handlerErrs.Add(1)
		return errSoakHandler
	}
	slowOdds := 500
	if f.mix.queue != qNone {
		slowOdds = 150
	}
	if f.rng.IntN(slowOdds) == 0 {
		time.Sleep(time.Duration(50+f.rng.IntN(250)) * time.Millisecond)
	}
	return nil
}

// handlerSend sends one message of the handler's stream, with Send or SendAsync.
func (f *soakFeed) handlerSend(ctx context.Context, sc *soakClient) {
	c := sc.c.Load()
	if c == nil {
		return
	}
	f.hsendSeq++
	seq := f.hsend.begin(f.hsendSeq, false)
	data := []byte("h " + strconv.Itoa(f.idx) + " " + strconv.FormatInt(seq, 10))
	if f.rng.IntN(2) == 0 {
		c.SendAsync(wspool.TextMessage, data, func(err error) { f.hsend.report(f, seq, err) })
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	start := time.Now()
	err := c.Send(ctx, wspool.TextMessage, data)
	d := time.Since(start)
	cancel()
	for {
		old := f.handlerSendMax.Load()
		if int64(d) <= old || f.handlerSendMax.CompareAndSwap(old, int64(d)) {
			break
		}
	}
	if errors.Is(err, wspool.ErrSendBufferFull) || errors.Is(err, wspool.ErrSendExpired) {
		f.v.add("%s: Send from the handler waited for a connection: %v", f.name, err)
	}
	f.hsend.report(f, seq, err)
}

// sendLoop sends "s <feed> <seq>" every 1-4 sendGap until stop, recording outcomes.
func (f *soakFeed) sendLoop(stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(f.seed, uint64(f.idx)<<32|2))
	jitter := func() time.Duration { return f.sendGap + time.Duration(rng.Int64N(int64(3*f.sendGap)+1)) }
	tm := time.NewTimer(jitter())
	defer tm.Stop()
	for seq := int64(1); ; seq++ {
		select {
		case <-stop:
			return
		case <-tm.C:
		}
		c := f.cur.Load().c.Load()
		if c == nil { // being re-added
			seq--
			tm.Reset(jitter())
			continue
		}
		noReplay := f.mix.noReplay && rng.IntN(4) == 0
		f.send.begin(seq, noReplay)
		data := []byte("s " + strconv.Itoa(f.idx) + " " + strconv.FormatInt(seq, 10))
		var opts []wspool.SendOption
		if noReplay {
			opts = append(opts, wspool.NoReplay())
		}
		if f.mix.blocking {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := c.Send(ctx, wspool.TextMessage, data, opts...)
			cancel()
			f.send.report(f, seq, err)
		} else {
			c.SendAsync(wspool.TextMessage, data, func(err error) { f.send.report(f, seq, err) }, opts...)
		}
		// A NoReplay send goes out during the call (on the connection up
		// then) or fails: never on a connection made after the call returned.
		f.send.callReturned(seq, f.latestHello())
		tm.Reset(jitter())
	}
}

// sendStream records one stream's sends and their reported outcomes.
type sendStream struct {
	name        string
	mu          sync.Mutex
	reports     []uint8 // per seq-1: how many times its outcome was reported
	written     []bool
	noReplay    []bool
	helloAtCall []int64 // the latest connection when Send or SendAsync returned
}

func (s *sendStream) begin(seq int64, noReplay bool) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if int64(len(s.reports)) != seq-1 {
		panic("soak: sends out of order")
	}
	s.reports = append(s.reports, 0)
	s.written = append(s.written, false)
	s.noReplay = append(s.noReplay, noReplay)
	s.helloAtCall = append(s.helloAtCall, 0)
	return seq
}

func (s *sendStream) callReturned(seq, hello int64) {
	s.mu.Lock()
	s.helloAtCall[seq-1] = hello
	s.mu.Unlock()
}

func (s *sendStream) report(f *soakFeed, seq int64, err error) {
	s.mu.Lock()
	s.reports[seq-1]++
	n := s.reports[seq-1]
	if err == nil {
		s.written[seq-1] = true
	}
	nr := s.noReplay[seq-1]
	s.mu.Unlock()
	if n > 1 {
		f.v.add("%s: send %s%d reported %d times (now %v)", f.name, s.name, seq, n, err)
	}
	if nr && (errors.Is(err, wspool.ErrSendBufferFull) || errors.Is(err, wspool.ErrSendExpired)) {
		f.v.add("%s: NoReplay send %s%d was buffered: %v", f.name, s.name, seq, err)
	}
	f.tally.add(s.name, err)
}

// sendTally counts send outcomes by stream and cause.
type sendTally struct {
	mu sync.Mutex
	m  map[string]int
}

func (s *sendTally) add(stream string, err error) {
	cause := "written"
	switch {
	case err == nil:
	case errors.Is(err, wspool.ErrSendBufferFull):
		cause = "buffer-full"
	case errors.Is(err, wspool.ErrSendExpired):
		cause = "expired"
	case errors.Is(err, wspool.ErrNotConnected):
		cause = "not-connected"
	case errors.Is(err, wspool.ErrClosed):
		cause = "closed"
	case errors.Is(err, context.DeadlineExceeded):
		cause = "ctx-deadline"
	default:
		cause = "write-error"
	}
	s.mu.Lock()
	if s.m == nil {
		s.m = map[string]int{}
	}
	s.m[stream+":"+cause]++
	s.mu.Unlock()
}

func (s *sendTally) causes() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return formatCounts(s.m)
}

func formatCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s:%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

// ---- the checks ----

// feedAccounting checks, at a quiet moment, that every message the feed's
// current Client read was delivered (no queue), delivered or dropped (drop
// policies), or delivered or given up with a dead connection (Block: counted
// for the log); duplicates dropped by the filter and heartbeat replies kept
// from the handler count as read and not delivered. "" if it balances.
func feedAccounting(f *soakFeed) (problem string, blockDiscarded int64) {
	sc := f.cur.Load()
	s := sc.c.Load().Stats()
	handled := sc.handled.Load()
	read := s.MessagesIn - sc.onConnReads.Load()
	notDelivered := s.Duplicates + s.DiscardedAtConnect // the latter: read during an OnConnect that failed
	if f.mix.dropReplies {
		notDelivered += s.HeartbeatReplies
	}
	if f.mix.serverPing && !f.mix.pingDeliver {
		notDelivered += s.ServerPings
	}
	bad := s.QueueDepth != 0 || s.Delivered != handled
	switch {
	case f.mix.standby || f.mix.skips:
		// Standby connections count their reads apart (and not their
		// heartbeat replies); a resync drops, uncounted, what its
		// connection reads after the gap.
		for _, l := range s.Standby {
			read += l.MessagesIn
		}
		bad = bad || read < s.Delivered+s.Dropped+s.Duplicates
	case f.mix.queue == qNone:
		bad = bad || read != s.Delivered+notDelivered || s.Dropped != 0
	case f.mix.queue == qBlock || f.mix.queue == qBlockSmall:
		// Block never drops by policy, but a message read while the queue was
		// full is given up when the connection dies under it (tail loss).
		bad = bad || read < s.Delivered+s.Dropped+notDelivered
		blockDiscarded = read - s.Delivered - s.Dropped - notDelivered
	default:
		bad = bad || read != s.Delivered+s.Dropped+notDelivered
	}
	if !bad {
		return "", blockDiscarded
	}
	return fmt.Sprintf("%s (%s, %v): read %d (in %d - %d by OnConnect), delivered %d, handled %d, dropped %d, duplicates %d, replies %d, queued %d",
		s.Name, f.mix, s.State, read, s.MessagesIn, sc.onConnReads.Load(), s.Delivered, handled, s.Dropped, s.Duplicates, s.HeartbeatReplies, s.QueueDepth), 0
}

type sendSummary struct {
	total, written, failed, lostWithReset, noReplay int64
	perFeedWritten                                  map[*soakFeed]int64
}

// checkSends matches each stream's send outcomes against what the server
// received. Sends of a stream are written in order and the feed's
// connections follow one another, so a written send the server never got was
// written on one of the connections between the last earlier send received
// and the next later one received; if every such connection ended gracefully
// (the server read the client's close frame, after every byte written before
// it), the send was lost: a violation. Otherwise a reset may have lost it in
// flight: counted. A NoReplay send must arrive on a connection no later than
// the latest one when it was sent.
func checkSends(feeds []*soakFeed, srv *seqServer, v *violations) sendSummary {
	sum := sendSummary{perFeedWritten: map[*soakFeed]int64{}}
	for _, f := range feeds {
		f.mu.Lock()
		conns := slices.Clone(f.helloConns)
		f.mu.Unlock()
		pos := make(map[int64]int, len(conns))
		for i, c := range conns {
			pos[c] = i
		}
		sf := srv.feeds[f.idx]
		for _, st := range []*sendStream{&f.send, &f.hsend} {
			st.mu.Lock()
			reports, written := slices.Clone(st.reports), slices.Clone(st.written)
			noReplay, helloAt := slices.Clone(st.noReplay), slices.Clone(st.helloAtCall)
			st.mu.Unlock()
			sf.mu.Lock()
			recv := slices.Clone(sf.recv[st.name])
			sf.mu.Unlock()
			name := f.name + " " + st.name

			got := make(map[int64]int64, len(recv)) // seq -> conn
			for _, r := range recv {
				if prev, dup := got[r.seq]; dup {
					v.add("%s: send %d received twice (connections %d and %d)", name, r.seq, prev, r.conn)
					continue
				}
				got[r.seq] = r.conn
				if r.seq > int64(len(reports)) {
					v.add("%s: server received send %d that was never made", name, r.seq)
					continue
				}
				if _, ok := pos[r.conn]; !ok {
					v.add("%s: send %d received on connection %d whose OnConnect never completed", name, r.seq, r.conn)
				}
				if !written[r.seq-1] {
					v.add("%s: send %d received by the server but reported failed (reports %d)", name, r.seq, reports[r.seq-1])
				}
				if noReplay[r.seq-1] && r.conn > helloAt[r.seq-1] {
					v.add("%s: NoReplay send %d went out on connection %d, made after the call returned (latest then %d)", name, r.seq, r.conn, helloAt[r.seq-1])
				}
			}
			// Received sends in seq order must use connections in order.
			seqs := make([]int64, 0, len(got))
			for s := range got {
				seqs = append(seqs, s)
			}
			slices.Sort(seqs)
			for i := 1; i < len(seqs); i++ {
				if pos[got[seqs[i]]] < pos[got[seqs[i-1]]] {
					v.add("%s: send %d went out on connection %d, before send %d on connection %d", name, seqs[i], got[seqs[i]], seqs[i-1], got[seqs[i-1]])
				}
			}
			for i, n := range reports {
				seq := int64(i + 1)
				sum.total++
				if noReplay[i] {
					sum.noReplay++
				}
				switch {
				case n == 0:
					v.add("%s: send %d never reported", name, seq)
					continue
				case !written[i]:
					sum.failed++
					continue
				}
				sum.written++
				sum.perFeedWritten[f]++
				if _, ok := got[seq]; ok {
					continue
				}
				// Bracket by the nearest received sends.
				lo, hi := 0, len(conns)-1
				k, _ := slices.BinarySearch(seqs, seq)
				if k > 0 {
					lo = pos[got[seqs[k-1]]]
				}
				if k < len(seqs) {
					hi = pos[got[seqs[k]]] - 1
				}
				if hi < lo && k == len(seqs) {
					v.add("%s: send %d reported written, but the feed never completed a connection", name, seq)
					continue
				}
				if hi < lo {
					// It would have to precede a later send on the same connection.
					v.add("%s: send %d reported written but never received, though send %d after it arrived on connection %d (a gap)", name, seq, seqs[k], got[seqs[k]])
					continue
				}
				lossy := false
				for j := lo; j <= hi; j++ {
					if sc := srv.conn(conns[j]); sc == nil || !sc.graceful.Load() {
						lossy = true
					}
				}
				if lossy {
					sum.lostWithReset++
				} else {
					v.add("%s: send %d reported written but never received; it went out on connection(s) %v, all closed gracefully", name, seq, conns[lo:hi+1])
				}
			}
		}
	}
	return sum
}

type rotationSummary struct{ checked, tailCut int64 }

// checkRotations checks every switch of a lossless feed from a connection O
// to one N that subscribed while O was open (a rotation): if O ended
// gracefully, had every fseq up to N's subscription, and the handler got all
// O's server wrote, the first new fseq from N follows O's last one, without
// gap (and duplicates were checked live). Switches where O's tail was cut
// (the close timeout, or a fault) are counted.
func checkRotations(feeds []*soakFeed, srv *seqServer, v *violations) rotationSummary {
	var sum rotationSummary
	for _, f := range feeds {
		if !f.mix.lossless() {
			continue
		}
		f.mu.Lock()
		segs := slices.Clone(f.segs)
		if f.seg.conn != 0 {
			segs = append(segs, f.seg)
		}
		f.mu.Unlock()
		for i := 1; i < len(segs); i++ {
			o, n := segs[i-1], segs[i]
			so, sn := srv.conn(o.conn), srv.conn(n.conn)
			if so == nil || sn == nil || !slices.Contains(sn.overlap, o.conn) || n.firstNew == 0 {
				continue
			}
			if !so.graceful.Load() || so.lastF.Load() < sn.regHead || o.lastCseq != so.written.Load() {
				sum.tailCut++
				continue
			}
			sum.checked++
			if n.firstNew != o.lastF+1 {
				v.add("%s (%s): rotation from connection %d (last fseq %d, all %d delivered) to %d: first new fseq %d (a gap)",
					f.name, f.mix, o.conn, o.lastF, o.lastCseq, n.conn, n.firstNew)
			}
		}
	}
	return sum
}

// soakRetryPolicy is the soak's WithRetryPolicy: linear waits, shorter after
// a 1012, never giving up.
func soakRetryPolicy(attempt int, err error) (time.Duration, bool) {
	if wspool.CloseStatus(err) == 1012 {
		return 5 * time.Millisecond, true
	}
	return min(time.Duration(attempt+1)*20*time.Millisecond, 500*time.Millisecond), true
}

// stateRing keeps a feed's latest state changes.
type stateRing struct {
	mu  sync.Mutex
	buf [12]wspool.StateChange
	n   int
}

func (r *stateRing) add(sc wspool.StateChange) {
	r.mu.Lock()
	r.buf[r.n%len(r.buf)] = sc
	r.n++
	r.mu.Unlock()
}

// String lists the changes kept, oldest first, with times relative to since.
func (r *stateRing) since(since time.Time) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for i := max(0, r.n-len(r.buf)); i < r.n; i++ {
		sc := r.buf[i%len(r.buf)]
		fmt.Fprintf(&b, "\n      %+.3fs %v->%v attempt %d wait %v err %v", sc.At.Sub(since).Seconds(), sc.From, sc.To, sc.Attempt, sc.Wait, sc.Err)
	}
	return b.String()
}

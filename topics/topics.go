// Package topics spreads a set of topics over as many feeds of a
// wspool.Pool as a per-connection cap needs, and keeps every connection of
// each feed subscribed to that feed's share. It is built on the Pool's
// public API only.
//
//   - Add places each new topic on the first feed with room (a new feed,
//     added to the pool, when none has), so 5,000 topics at a cap of 1,024
//     take five feeds; Remove frees the room. A feed left empty stays in the
//     pool.
//   - Every connection of a feed (a reconnect, a rotation's replacement, a
//     standby connection) subscribes the feed's topics as it opens: the
//     requests are queued in OnConnect and written after it, in order and
//     through the connection's pacing (wspool.WithSendPacing), while the
//     connection's answers are read. Topics added or removed later are
//     subscribed or unsubscribed on every connection of their feed, each
//     connection getting a topic's requests in the order the set decided
//     them.
//   - With an Ack func, each request waits for its answer, from when it is
//     written. A request not answered within AckTimeout is reported
//     (ErrAckTimeout) and its connection ended (wspool.Conn.Reconnect): the
//     next one subscribes the feed's topics afresh. An answer that comes
//     late still counts while its connection lives.
//   - A rejected subscription of several topics is split in halves and
//     retried on the same connection, so that one bad topic is isolated
//     without costing its batch or its feed's cap. A topic rejected on its
//     own moves to another feed (the upstream's limit may be below Cap), and
//     no more topics go to the feed that rejected it meanwhile: if it is
//     accepted there, that feed's cap becomes what it held; if it is rejected
//     on its own again, it is taken out of the set (ErrRejected), the cap
//     stays, and a feed added only for it is removed.
//   - When a feed ends for good (wspool.StateClosed with an error) it is
//     removed from the pool and its topics move to the other feeds (new ones
//     as needed); if it never connected, its topics are reported
//     (ErrFeedEnded) and taken out of the set instead.
//
// All methods are safe for concurrent use, from callbacks too.
package topics

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/wspool/wspool"
)

var (
	// ErrAckTimeout is the cause reported (in an *Error) when a subscribe
	// or unsubscribe request was not acknowledged within Config.AckTimeout.
	ErrAckTimeout = errors.New("topics: request not acknowledged in time")
	// ErrRejected is reported (in an *Error) for a topic the upstream
	// rejected twice in a request of its own: it is taken out of the set.
	ErrRejected = errors.New("topics: topic rejected")
	// ErrFeedEnded is reported (in an *Error, with the feed's own error) for
	// topics of a feed that ended for good without ever connecting: they are
	// taken out of the set rather than moved to a new feed that would most
	// likely fail the same way.
	ErrFeedEnded = errors.New("topics: feed ended")
)

// Error reports topics that a request failed for (Config.OnError). Err
// wraps ErrAckTimeout, ErrRejected (with the upstream's error from Ack: the
// topics left the set) or ErrFeedEnded (with the feed's error), or, for
// topics rejected once and moved to another feed, the upstream's error alone,
// or a panic in Subscribe or Unsubscribe (the connection is then replaced).
type Error struct {
	Feed   string
	Topics []string
	Err    error
}

// Error names the feed, how many topics and the cause.
func (e *Error) Error() string {
	return fmt.Sprintf("topics: feed %s: %d topic(s) %v: %v", e.Feed, len(e.Topics), e.Topics[:min(len(e.Topics), 3)], e.Err)
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// DefaultAckTimeout is the default Config.AckTimeout.
const DefaultAckTimeout = 10 * time.Second

// Config configures a Set. URL, Cap and Subscribe are required.
type Config struct {
	// URL is dialled by every feed of the set.
	URL string
	// Name is the base of the feeds' names: Name-1, Name-2, ... (numbers are
	// never reused). Default "topics".
	Name string
	// Cap is the most topics one connection may hold (Binance: 1,024).
	Cap int
	// Batch is the most topics in one subscribe or unsubscribe message.
	// Default Cap: a feed's whole set in one message.
	Batch int
	// Subscribe and Unsubscribe build the message for a request with the
	// given id (unique within the set) and topics. Unsubscribe may be nil:
	// removed topics then stay subscribed until the connection ends.
	Subscribe   func(id uint64, topics []string) (wspool.MessageType, []byte)
	Unsubscribe func(id uint64, topics []string) (wspool.MessageType, []byte)
	// Ack, if set, recognises the upstream's answers to requests: for a
	// message that is one it returns the request's id, isAck true, and nil
	// for success or the upstream's error for a rejection. Answers are not
	// passed to Handler. Without Ack a topic counts as subscribed once its
	// request has been written.
	Ack func(m wspool.Message) (id uint64, isAck bool, err error)
	// AckTimeout bounds the wait for an answer, from when the request is
	// written (a wait for the connection's pacing does not count). Default
	// DefaultAckTimeout.
	AckTimeout time.Duration
	// Handler gets every message of every feed of the set but the answers.
	Handler wspool.Handler
	// Options apply to every feed (after the pool's defaults). The set
	// names its feeds and runs their OnConnect and OnStateChange itself:
	// WithName, WithOnConnect or WithOnStateChange here is an error (give
	// Name, OnConnect and OnStateChange below). The pool's defaults apply
	// to the set's feeds like to any other, OnConnect and OnStateChange
	// included: the pool's default runs first, then the one below.
	Options []wspool.Option
	// OnConnect, if set, runs on each new connection, after the pool's
	// default OnConnect and before the set's topics are queued on it (a
	// login, say); an error fails the attempt.
	OnConnect func(ctx context.Context, c *wspool.Conn) error
	// OnStateChange, if set, gets every state change of every feed of the
	// set, after the pool's default OnStateChange.
	OnStateChange func(wspool.StateChange)
	// OnError, if set, gets an *Error for every request that failed. A
	// panic in it is reported like a callback's of the feed (a
	// *wspool.HandlerError) where it runs inside one (the handler, state
	// changes), and dropped where it runs on the set's own goroutines (ack
	// timeouts, a panic in Subscribe).
	OnError func(err error)
}

// Set is a set of topics spread over feeds of a Pool (see the package doc).
type Set struct {
	pool *wspool.Pool
	cfg  Config
	// the pool's defaults, which the set's own hooks replace: run first
	poolOnConnect func(ctx context.Context, c *wspool.Conn) error
	poolOnState   func(wspool.StateChange)

	mu       sync.Mutex
	feeds    []*feed // in creation order: placement fills the first with room
	where    map[string]*feed
	rejects  map[string]*rejection
	pending  map[uint64]*request // written or queued, until answered or their connection ends
	nextID   uint64
	nextFeed int
}

// feed is one feed of the set.
type feed struct {
	name      string
	cap       int
	topics    map[string]struct{} // the feed's share
	conns     []*conn             // its connections that ran OnConnect and have not ended
	connected bool                // ever connected
	gone      bool
	forMove   bool // added for a topic rejected elsewhere: removed if it ends up empty
}

// conn is one connection of a feed: what was asked of it, in order.
type conn struct {
	f  *feed
	c  *wspool.Conn
	id uint64
	// subs holds the topics requested on this connection (subscribe
	// queued or written, no unsubscribe since), each with the id of its
	// latest subscribe request: 0 once that one is acknowledged.
	subs  map[string]uint64
	queue []*request    // to write, in the order decided
	kick  chan struct{} // the writer has work (buffered 1)
	ended bool
}

// rejection remembers where a topic was rejected on its own.
type rejection struct {
	f     *feed
	acked int // how many topics f held acknowledged then
}

type request struct {
	id       uint64
	cn       *conn
	sub      bool
	topics   []string
	timer    *time.Timer
	timedOut bool
}

// New returns an empty topic set whose feeds are added to p. It validates
// cfg; feeds are added by Add.
func New(p *wspool.Pool, cfg Config) (*Set, error) {
	switch {
	case p == nil:
		return nil, errors.New("topics: New: nil pool")
	case cfg.URL == "":
		return nil, errors.New("topics: New: URL is required")
	case cfg.Cap <= 0:
		return nil, fmt.Errorf("topics: New: Cap must be positive, got %d", cfg.Cap)
	case cfg.Subscribe == nil:
		return nil, errors.New("topics: New: Subscribe is required")
	case cfg.Batch < 0 || cfg.AckTimeout < 0:
		return nil, errors.New("topics: New: negative Batch or AckTimeout")
	}
	for _, own := range []struct {
		name string
		o    wspool.Option
	}{
		{"WithName", wspool.WithName("x")},
		{"WithOnConnect", wspool.WithOnConnect(func(context.Context, *wspool.Conn) error { return nil })},
		{"WithOnStateChange", wspool.WithOnStateChange(func(wspool.StateChange) {})},
	} {
		if wspool.OptionsOverlap(own.o, cfg.Options...) {
			return nil, fmt.Errorf("topics: New: %w: %s in Options cannot apply: the set sets it for its feeds (use Config.Name, OnConnect, OnStateChange)", wspool.ErrInvalidOption, own.name)
		}
	}
	if cfg.Name == "" {
		cfg.Name = "topics"
	}
	if cfg.Batch == 0 || cfg.Batch > cfg.Cap {
		cfg.Batch = cfg.Cap
	}
	if cfg.AckTimeout == 0 {
		cfg.AckTimeout = DefaultAckTimeout
	}
	cfg.Options = slices.Clone(cfg.Options)
	return &Set{pool: p, cfg: cfg, poolOnConnect: p.DefaultOnConnect(), poolOnState: p.DefaultOnStateChange(), where: map[string]*feed{}, rejects: map[string]*rejection{}, pending: map[uint64]*request{}}, nil
}

// Add adds topics to the set (those already in it are ignored), placing each
// on a feed with room and subscribing it at once on that feed's
// connections. It fails if a new feed cannot be added to the pool (closed,
// or a name taken); the topics it could not place are not in the set.
func (s *Set) Add(topics ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.placeLocked(topics, nil, s.cfg.Batch)
}

// Remove takes topics out of the set, unsubscribing them at once on their
// feeds' connections. Topics not in the set are ignored.
func (s *Set) Remove(topics ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	byFeed := map[*feed][]string{}
	var order []*feed
	for _, tp := range topics {
		f := s.where[tp]
		if f == nil {
			continue
		}
		delete(s.where, tp)
		delete(f.topics, tp)
		delete(s.rejects, tp)
		if byFeed[f] == nil {
			order = append(order, f)
		}
		byFeed[f] = append(byFeed[f], tp)
	}
	for _, f := range order {
		for _, cn := range f.conns {
			var out []string
			for _, tp := range byFeed[f] {
				if _, ok := cn.subs[tp]; ok {
					delete(cn.subs, tp)
					out = append(out, tp)
				}
			}
			if s.cfg.Unsubscribe != nil {
				s.queueLocked(cn, false, out, s.cfg.Batch)
			}
		}
	}
}

// Assignment returns each feed's topics (sorted), by feed name.
func (s *Set) Assignment() map[string][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string][]string, len(s.feeds))
	for _, f := range s.feeds {
		tps := make([]string, 0, len(f.topics))
		for tp := range f.topics {
			tps = append(tps, tp)
		}
		slices.Sort(tps)
		out[f.name] = tps
	}
	return out
}

// Unconfirmed returns how many topics of the set are not yet subscribed on
// every connection of their feed (not acknowledged, or with no Ack func not
// yet written; a feed without a connection has none subscribed): zero once
// every topic is live everywhere.
func (s *Set) Unconfirmed() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, f := range s.feeds {
		for tp := range f.topics {
			if !f.confirmedLocked(tp) {
				n++
			}
		}
	}
	return n
}

func (f *feed) confirmedLocked(tp string) bool {
	for _, cn := range f.conns {
		if id, ok := cn.subs[tp]; !ok || id != 0 {
			return false
		}
	}
	return len(f.conns) > 0
}

// ackedLocked counts the topics acknowledged on every connection of f.
func (f *feed) ackedLocked() int {
	n := 0
	for tp := range f.topics {
		if f.confirmedLocked(tp) {
			n++
		}
	}
	return n
}

// placeLocked puts each topic not yet in the set on the first feed with room
// other than exclude, adding feeds as needed, and subscribes it on that
// feed's connections in requests of at most batch topics.
func (s *Set) placeLocked(topics []string, exclude *feed, batch int) error {
	byFeed := map[*feed][]string{}
	var order []*feed
	var err error
	for _, tp := range topics {
		if s.where[tp] != nil {
			continue
		}
		var f *feed
		for _, c := range s.feeds {
			if c != exclude && len(c.topics) < s.capLocked(c) {
				f = c
				break
			}
		}
		if f == nil {
			if f, err = s.newFeedLocked(); err != nil {
				break
			}
			f.forMove = exclude != nil
		}
		f.topics[tp] = struct{}{}
		s.where[tp] = f
		if byFeed[f] == nil {
			order = append(order, f)
		}
		byFeed[f] = append(byFeed[f], tp)
	}
	for _, f := range order {
		for _, cn := range f.conns {
			s.queueLocked(cn, true, byFeed[f], batch)
		}
	}
	return err
}

// capLocked is f's cap: Config.Cap, lowered to what f held when it
// rejected a topic on its own that was accepted elsewhere (the upstream's
// limit), and meanwhile to what it held when it rejected one that has not
// been tried elsewhere yet.
func (s *Set) capLocked(f *feed) int {
	c := f.cap
	for _, rj := range s.rejects {
		if rj.f == f {
			c = min(c, max(rj.acked, 1))
		}
	}
	return c
}

func (s *Set) newFeedLocked() (*feed, error) {
	s.nextFeed++
	f := &feed{name: s.cfg.Name + "-" + strconv.Itoa(s.nextFeed), cap: s.cfg.Cap, topics: map[string]struct{}{}}
	opts := append(slices.Clip(s.cfg.Options),
		wspool.WithName(f.name),
		wspool.WithOnConnect(func(ctx context.Context, c *wspool.Conn) error { return s.onConnect(ctx, f, c) }),
		wspool.WithOnStateChange(func(sc wspool.StateChange) { s.onStateChange(f, sc) }))
	if _, err := s.pool.Add(s.cfg.URL, s.handler(f), opts...); err != nil {
		return nil, fmt.Errorf("topics: adding feed %s: %w", f.name, err)
	}
	s.feeds = append(s.feeds, f)
	return f, nil
}

// queueLocked splits topics into requests of at most batch and queues them
// on cn, whose writer sends them in this order. A subscribe marks its topics
// requested on cn.
func (s *Set) queueLocked(cn *conn, sub bool, topics []string, batch int) {
	if cn.ended || len(topics) == 0 {
		return
	}
	for len(topics) > 0 {
		n := min(len(topics), batch)
		s.nextID++
		r := &request{id: s.nextID, cn: cn, sub: sub, topics: slices.Clone(topics[:n])}
		topics = topics[n:]
		if sub {
			for _, tp := range r.topics {
				cn.subs[tp] = r.id
			}
		}
		if s.cfg.Ack != nil {
			s.pending[r.id] = r
		}
		cn.queue = append(cn.queue, r)
	}
	select {
	case cn.kick <- struct{}{}:
	default:
	}
}

// write is a connection's writer: it sends the connection's requests in
// order until the connection ends. Each request's ack timer starts once it
// is written.
func (s *Set) write(cn *conn) {
	for {
		select {
		case <-cn.c.Done():
			s.ended(cn)
			return
		case <-cn.kick:
		}
		for {
			s.mu.Lock()
			if len(cn.queue) == 0 || cn.ended {
				s.mu.Unlock()
				break
			}
			r := cn.queue[0]
			cn.queue[0] = nil
			cn.queue = cn.queue[1:]
			s.mu.Unlock()
			typ, data, err := s.build(r)
			if err != nil { // a panic: report it, and start afresh on a new connection
				s.mu.Lock()
				s.dropLocked(r)
				s.mu.Unlock()
				cn.c.Reconnect(err)
				s.reportOutside(cn.f.name, r.topics, err)
				continue
			}
			err = cn.c.Send(context.Background(), typ, data)
			s.mu.Lock()
			if err != nil {
				s.dropLocked(r) // the connection is ending: the next one subscribes afresh
			} else if s.cfg.Ack == nil {
				if r.sub {
					s.confirmLocked(r)
				}
			} else if s.pending[r.id] == r {
				r.timer = time.AfterFunc(s.cfg.AckTimeout, func() { s.timeout(r) })
			}
			s.mu.Unlock()
		}
	}
}

// build runs Subscribe or Unsubscribe for r; a panic in it is returned as
// an error.
func (s *Set) build(r *request) (typ wspool.MessageType, data []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			name := "Unsubscribe"
			if r.sub {
				name = "Subscribe"
			}
			err = fmt.Errorf("topics: %s panicked: %v", name, p)
		}
	}()
	if r.sub {
		typ, data = s.cfg.Subscribe(r.id, r.topics)
	} else {
		typ, data = s.cfg.Unsubscribe(r.id, r.topics)
	}
	return typ, data, nil
}

// ended forgets a connection that ended: its requests are dropped, and its
// feed's next connection subscribes afresh.
func (s *Set) ended(cn *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cn.ended = true
	cn.queue = nil
	f := cn.f
	f.conns = slices.DeleteFunc(f.conns, func(x *conn) bool { return x == cn })
	for _, r := range s.pending {
		if r.cn == cn {
			s.dropLocked(r)
		}
	}
}

func (s *Set) dropLocked(r *request) {
	if r.timer != nil {
		r.timer.Stop()
	}
	delete(s.pending, r.id)
}

// confirmLocked marks r's topics acknowledged on its connection (those
// whose latest request there r is).
func (s *Set) confirmLocked(r *request) {
	for _, tp := range r.topics {
		if r.cn.subs[tp] != r.id {
			continue
		}
		r.cn.subs[tp] = 0
		if rj := s.rejects[tp]; rj != nil && s.where[tp] == r.cn.f && rj.f != r.cn.f {
			// Rejected alone on rj.f, accepted here: rj.f is at the
			// upstream's limit, which is below Cap.
			rj.f.cap = max(min(rj.f.cap, rj.acked), 1)
			delete(s.rejects, tp)
		}
	}
}

func (s *Set) report(feed string, topics []string, err error) {
	if s.cfg.OnError != nil && len(topics) > 0 {
		s.cfg.OnError(&Error{Feed: feed, Topics: topics, Err: err})
	}
}

// timeout handles a request whose answer did not come in time: reported,
// and its connection ended (the next one subscribes afresh). The request
// stays known, so that an answer that comes late still counts.
func (s *Set) timeout(r *request) {
	s.mu.Lock()
	if s.pending[r.id] != r || r.timedOut || r.cn.ended {
		s.mu.Unlock()
		return
	}
	r.timedOut = true
	s.mu.Unlock()
	err := &Error{Feed: r.cn.f.name, Topics: r.topics, Err: ErrAckTimeout}
	r.cn.c.Reconnect(err)
	s.reportOutside(err.Feed, err.Topics, ErrAckTimeout)
}

// reportOutside reports from the set's own goroutines (a connection's
// writer, a timer), where no library callback would recover a panic in
// OnError: such a panic is recovered and dropped.
func (s *Set) reportOutside(feed string, topics []string, err error) {
	defer func() { _ = recover() }()
	s.report(feed, topics, err)
}

// handler wraps the user's handler: answers go to the set, the rest on.
func (s *Set) handler(f *feed) wspool.Handler {
	return func(ctx context.Context, m wspool.Message) error {
		if s.cfg.Ack != nil {
			if id, isAck, err := s.cfg.Ack(m); isAck {
				s.answer(f, m.ConnID, id, err)
				return nil
			}
		}
		if s.cfg.Handler == nil {
			return nil
		}
		return s.cfg.Handler(ctx, m)
	}
}

// answer handles the upstream's answer to request id, read on connection
// connID of f.
func (s *Set) answer(f *feed, connID, id uint64, ackErr error) {
	s.mu.Lock()
	r := s.pending[id]
	if r == nil || r.cn.f != f || r.cn.id != connID {
		s.mu.Unlock()
		return
	}
	s.dropLocked(r)
	cn := r.cn
	if ackErr == nil {
		if r.sub {
			s.confirmLocked(r)
		}
		s.mu.Unlock()
		return
	}
	if !r.sub {
		s.mu.Unlock()
		s.report(f.name, r.topics, fmt.Errorf("%w: unsubscribe: %w", ErrRejected, ackErr))
		return
	}
	var still []string // still f's, and r their latest request on cn
	for _, tp := range r.topics {
		if s.where[tp] == f && !cn.ended && cn.subs[tp] == r.id {
			still = append(still, tp)
		}
	}
	if len(still) > 1 {
		// Which of them did the upstream reject? Halves, on the same
		// connection: one bad topic costs log2(batch) requests, not its
		// batch (nor the feed's cap).
		h := len(still) / 2
		s.queueLocked(cn, true, still[:h], h)
		s.queueLocked(cn, true, still[h:], len(still)-h)
		s.mu.Unlock()
		return
	}
	// One topic rejected on its own: the upstream's cap may be below ours
	// (then the topic is accepted elsewhere, and f's cap lowered: see
	// confirmLocked), or the topic is bad (rejected alone twice: given up).
	var move, giveUp []string
	for _, tp := range still {
		s.takeLocked(f, tp)
		if rj := s.rejects[tp]; rj != nil && rj.f != f {
			delete(s.rejects, tp)
			giveUp = append(giveUp, tp)
			continue
		}
		s.rejects[tp] = &rejection{f: f, acked: f.ackedLocked()}
		move = append(move, tp)
	}
	err := s.placeLocked(move, f, 1)
	drop := f.forMove && len(giveUp) > 0 && len(f.topics) == 0 && !f.gone
	if drop { // added for a topic that turned out bad: not needed
		f.gone = true
		s.feeds = slices.DeleteFunc(s.feeds, func(x *feed) bool { return x == f })
	}
	s.mu.Unlock()
	if drop {
		s.pool.Remove(f.name)
	}
	s.report(f.name, move, fmt.Errorf("moved to another feed: %w", ackErr))
	s.report(f.name, giveUp, fmt.Errorf("%w: %w", ErrRejected, ackErr))
	if err != nil && s.cfg.OnError != nil {
		s.cfg.OnError(err)
	}
}

// takeLocked takes tp off f (and off its connections' books: the upstream
// rejected it, so nothing is to be unsubscribed).
func (s *Set) takeLocked(f *feed, tp string) {
	delete(s.where, tp)
	delete(f.topics, tp)
	for _, cn := range f.conns {
		delete(cn.subs, tp)
	}
}

// onConnect queues the feed's topics on a new connection, and starts the
// connection's writer, which sends them after OnConnect (paced, with the
// connection's answers read meanwhile) and then whatever changes come.
func (s *Set) onConnect(ctx context.Context, f *feed, c *wspool.Conn) error {
	for _, hook := range []func(context.Context, *wspool.Conn) error{s.poolOnConnect, s.cfg.OnConnect} {
		if hook != nil {
			if err := hook(ctx, c); err != nil {
				return err
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cn := &conn{f: f, c: c, id: c.ID(), subs: map[string]uint64{}, kick: make(chan struct{}, 1)}
	snap := make([]string, 0, len(f.topics))
	for tp := range f.topics {
		snap = append(snap, tp)
	}
	slices.Sort(snap)
	f.conns = append(f.conns, cn)
	s.queueLocked(cn, true, snap, s.cfg.Batch)
	go s.write(cn)
	return nil
}

// onStateChange moves the topics of a feed that ended for good.
func (s *Set) onStateChange(f *feed, sc wspool.StateChange) {
	if s.poolOnState != nil {
		s.poolOnState(sc)
	}
	if s.cfg.OnStateChange != nil {
		s.cfg.OnStateChange(sc)
	}
	s.mu.Lock()
	if sc.To == wspool.StateConnected {
		f.connected = true
	}
	if sc.To != wspool.StateClosed || sc.Err == nil || f.gone {
		s.mu.Unlock()
		return
	}
	f.gone = true
	s.feeds = slices.DeleteFunc(s.feeds, func(x *feed) bool { return x == f })
	orphans := make([]string, 0, len(f.topics))
	for tp := range f.topics {
		orphans = append(orphans, tp)
		delete(s.where, tp)
	}
	slices.Sort(orphans)
	f.topics = map[string]struct{}{}
	var err error
	connected := f.connected
	if connected {
		err = s.placeLocked(orphans, f, s.cfg.Batch)
	}
	s.mu.Unlock()
	s.pool.Remove(f.name)
	if !connected {
		s.report(f.name, orphans, fmt.Errorf("%w: %w", ErrFeedEnded, sc.Err))
	}
	if err != nil && s.cfg.OnError != nil {
		s.cfg.OnError(err)
	}
}

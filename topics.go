package wspool

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"
)

var (
	// ErrAckTimeout is the cause reported (in a *TopicError) when a subscribe
	// or unsubscribe request of a Topics set was not acknowledged within
	// TopicsConfig.AckTimeout.
	ErrAckTimeout = errors.New("wspool: topic request not acknowledged in time")
	// ErrTopicRejected is reported (in a *TopicError) for a topic the
	// upstream rejected twice in a request of its own: it is taken out of
	// the set.
	ErrTopicRejected = errors.New("wspool: topic rejected")
	// ErrFeedEnded is reported (in a *TopicError, with the feed's own error)
	// for topics of a feed that ended for good without ever connecting: they
	// are taken out of the set rather than moved to a new feed that would
	// most likely fail the same way.
	ErrFeedEnded = errors.New("wspool: topic feed ended")
)

// TopicError reports topics of a Topics set that a request failed for
// (TopicsConfig.OnError). Err wraps ErrAckTimeout, ErrTopicRejected (with the
// upstream's error from Ack: the topics left the set) or ErrFeedEnded (with
// the feed's error), or, for topics rejected once and moved to another feed,
// the upstream's error alone.
type TopicError struct {
	Feed   string
	Topics []string
	Err    error
}

// Error names the feed, how many topics and the cause.
func (e *TopicError) Error() string {
	return fmt.Sprintf("wspool: feed %s: %d topic(s) %v: %v", e.Feed, len(e.Topics), e.Topics[:min(len(e.Topics), 3)], e.Err)
}

// Unwrap returns the cause.
func (e *TopicError) Unwrap() error { return e.Err }

// DefaultAckTimeout is the default TopicsConfig.AckTimeout.
const DefaultAckTimeout = 10 * time.Second

// TopicsConfig configures a Topics set. URL, Cap and Subscribe are required.
type TopicsConfig struct {
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
	Subscribe   func(id uint64, topics []string) (MessageType, []byte)
	Unsubscribe func(id uint64, topics []string) (MessageType, []byte)
	// Ack, if set, recognises the upstream's answers to requests: for a
	// message that is one it returns the request's id, isAck true, and nil
	// for success or the upstream's error for a rejection. Answers are not
	// passed to Handler. Without Ack a topic counts as subscribed once its
	// request has been written.
	Ack func(m Message) (id uint64, isAck bool, err error)
	// AckTimeout bounds the wait for an answer, from when the request is
	// handed to the library (pacing included). Default DefaultAckTimeout.
	AckTimeout time.Duration
	// Handler gets every message of every feed of the set but the answers.
	Handler Handler
	// Options apply to every feed (after the pool's defaults). The set uses
	// WithName, WithOnConnect and WithOnStateChange itself: give those as
	// OnConnect and OnStateChange below.
	Options []Option
	// OnConnect, if set, runs on each new connection before the set's
	// topics are subscribed (a login, say); an error fails the attempt.
	OnConnect func(ctx context.Context, c *Conn) error
	// OnStateChange, if set, gets every state change of every feed of the set.
	OnStateChange func(StateChange)
	// OnError, if set, gets a *TopicError for every request that failed.
	OnError func(err error)
}

// Topics spreads a set of topics over as many feeds of a Pool as a
// per-connection cap needs, and keeps each feed subscribed to its share:
//
//   - Add places each new topic on the first feed with room (a new feed,
//     added to the pool, when none has), so 5,000 topics at a cap of 1,024
//     take five feeds; Remove frees the room. A feed left empty stays in the
//     pool.
//   - Every new connection of a feed subscribes its topics in OnConnect
//     (Conn.Send, so WithSendPacing paces the replay) before any of its
//     messages are delivered. Topics added while a feed is connected are
//     subscribed at once (SendAsync, never waiting for a connection; it may
//     write on the caller's goroutine), and removed ones unsubscribed.
//   - With an Ack func, each request waits for its answer. A request not
//     answered within AckTimeout is reported (ErrAckTimeout) and its feed
//     reconnected, which subscribes the feed's topics afresh. A rejected
//     subscription is reported; the feed's cap is lowered to the topics it
//     holds acknowledged (the upstream's limit may be lower than Cap), and
//     the rejected topics move to another feed, each in a request of its
//     own; a topic rejected twice on its own is taken out of the set
//     (ErrTopicRejected).
//   - When a feed ends for good (StateClosed with an error) it is removed
//     from the pool and its topics move to the other feeds (new ones as
//     needed); if it never connected, its topics are reported (ErrFeedEnded)
//     and taken out of the set instead.
//
// Topics removed while a new connection subscribes its snapshot are
// unsubscribed once it is connected. A rotation (WithMaxConnectionAge,
// Client.Rotate) replays the topics on the new connection while the old one
// keeps getting changes live; the changes made after the replay's snapshot
// are applied to the new connection too once Send has switched to it.
// All methods are safe for concurrent use, from callbacks too.
type Topics struct {
	pool *Pool
	cfg  TopicsConfig

	mu       sync.Mutex
	feeds    []*topicFeed // in creation order: placement fills the first with room
	where    map[string]*topicFeed
	rejects  map[string]int
	pending  map[uint64]*topicReq
	nextID   uint64
	nextFeed int
}

type topicFeed struct {
	name      string
	client    *Client
	cap       int
	topics    map[string]bool // topic -> acknowledged on the current connection
	live      bool            // connected and replayed: changes go out at once
	replaying bool            // OnConnect is subscribing a snapshot
	late      []string        // added while replaying
	lateGone  []string        // removed while replaying (maybe in the replay)
	connected bool            // ever connected
	gone      bool
	// gen numbers f's connections: the live one's, and the one OnConnect
	// subscribed last (replayGen >= gen; greater while a rotation is under
	// way). A request carries the gen of the connection it was meant for.
	gen, replayGen uint64
}

type topicReq struct {
	id     uint64
	gen    uint64
	feed   *topicFeed
	sub    bool
	topics []string
	timer  *time.Timer
}

// NewTopics returns an empty topic set whose feeds are added to p. It
// validates cfg; feeds are added by Add.
func NewTopics(p *Pool, cfg TopicsConfig) (*Topics, error) {
	switch {
	case p == nil:
		return nil, errors.New("wspool: NewTopics: nil pool")
	case cfg.URL == "":
		return nil, errors.New("wspool: NewTopics: URL is required")
	case cfg.Cap <= 0:
		return nil, fmt.Errorf("wspool: NewTopics: Cap must be positive, got %d", cfg.Cap)
	case cfg.Subscribe == nil:
		return nil, errors.New("wspool: NewTopics: Subscribe is required")
	case cfg.Batch < 0 || cfg.AckTimeout < 0:
		return nil, errors.New("wspool: NewTopics: negative Batch or AckTimeout")
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
	return &Topics{pool: p, cfg: cfg, where: map[string]*topicFeed{}, rejects: map[string]int{}, pending: map[uint64]*topicReq{}}, nil
}

// Add adds topics to the set (those already in it are ignored), placing each
// on a feed with room and subscribing it at once if that feed is connected.
// It fails if a new feed cannot be added to the pool (closed, or a name
// taken); the topics it could not place are not in the set.
func (t *Topics) Add(topics ...string) error {
	t.mu.Lock()
	var reqs []*topicReq
	err := t.placeLocked(topics, nil, t.cfg.Batch, &reqs)
	t.mu.Unlock()
	t.send(reqs)
	return err
}

// Remove takes topics out of the set, unsubscribing them at once on
// connected feeds. Topics not in the set are ignored.
func (t *Topics) Remove(topics ...string) {
	t.mu.Lock()
	byFeed := map[*topicFeed][]string{}
	for _, tp := range topics {
		f := t.where[tp]
		if f == nil {
			continue
		}
		delete(t.where, tp)
		delete(f.topics, tp)
		delete(t.rejects, tp)
		if f.replaying && t.cfg.Unsubscribe != nil {
			f.lateGone = append(f.lateGone, tp)
		}
		if f.live && t.cfg.Unsubscribe != nil {
			byFeed[f] = append(byFeed[f], tp)
		}
	}
	var reqs []*topicReq
	for f, tps := range byFeed {
		reqs = append(reqs, t.requestsLocked(f, false, tps, t.cfg.Batch)...)
	}
	t.mu.Unlock()
	t.send(reqs)
}

// Assignment returns each feed's topics (sorted), by feed name.
func (t *Topics) Assignment() map[string][]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string][]string, len(t.feeds))
	for _, f := range t.feeds {
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
// their feed's current connection (not acknowledged, or with no Ack func not
// yet written): zero once every topic is live.
func (t *Topics) Unconfirmed() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, f := range t.feeds {
		for _, ok := range f.topics {
			if !ok {
				n++
			}
		}
	}
	return n
}

// placeLocked puts each topic not yet in the set on the first feed with room
// other than exclude, adding feeds as needed; requests for live feeds are
// appended to reqs.
func (t *Topics) placeLocked(topics []string, exclude *topicFeed, batch int, reqs *[]*topicReq) error {
	byFeed := map[*topicFeed][]string{}
	var order []*topicFeed
	var err error
	for _, tp := range topics {
		if t.where[tp] != nil {
			continue
		}
		var f *topicFeed
		for _, c := range t.feeds {
			if c != exclude && len(c.topics) < c.cap {
				f = c
				break
			}
		}
		if f == nil {
			if f, err = t.newFeedLocked(); err != nil {
				break
			}
		}
		f.topics[tp] = false
		t.where[tp] = f
		if f.replaying {
			f.late = append(f.late, tp)
		}
		if f.live {
			if byFeed[f] == nil {
				order = append(order, f)
			}
			byFeed[f] = append(byFeed[f], tp)
		}
	}
	for _, f := range order {
		*reqs = append(*reqs, t.requestsLocked(f, true, byFeed[f], batch)...)
	}
	return err
}

func (t *Topics) newFeedLocked() (*topicFeed, error) {
	t.nextFeed++
	f := &topicFeed{name: t.cfg.Name + "-" + strconv.Itoa(t.nextFeed), cap: t.cfg.Cap, topics: map[string]bool{}}
	opts := append(slices.Clip(t.cfg.Options),
		WithName(f.name),
		WithOnConnect(func(ctx context.Context, c *Conn) error { return t.onConnect(ctx, f, c) }),
		WithOnStateChange(func(sc StateChange) { t.onStateChange(f, sc) }),
		func(c *config) { c.onRotated = func(switched bool) { t.onRotated(f, switched) } })
	c, err := t.pool.Add(t.cfg.URL, t.handler(f), opts...)
	if err != nil {
		return nil, fmt.Errorf("wspool: topics: adding feed %s: %w", f.name, err)
	}
	f.client = c
	t.feeds = append(t.feeds, f)
	return f, nil
}

// requestsLocked splits topics into requests of at most Batch and, with an
// Ack func, registers them as pending with their timeout running.
func (t *Topics) requestsLocked(f *topicFeed, sub bool, topics []string, batch int) []*topicReq {
	var out []*topicReq
	for len(topics) > 0 {
		n := min(len(topics), batch)
		t.nextID++
		r := &topicReq{id: t.nextID, gen: f.gen, feed: f, sub: sub, topics: topics[:n:n]}
		topics = topics[n:]
		if t.cfg.Ack != nil {
			t.pending[r.id] = r
			r.timer = time.AfterFunc(t.cfg.AckTimeout, func() { t.timeout(r) })
		}
		out = append(out, r)
	}
	return out
}

func (t *Topics) build(r *topicReq) (MessageType, []byte) {
	if r.sub {
		return t.cfg.Subscribe(r.id, r.topics)
	}
	return t.cfg.Unsubscribe(r.id, r.topics)
}

// send hands live requests to their feeds' SendAsync (outside the lock). A
// request that fails to go out is dropped: the next connection replays.
func (t *Topics) send(reqs []*topicReq) {
	for _, r := range reqs {
		typ, data := t.build(r)
		r.feed.client.SendAsync(typ, data, func(err error) { t.written(r, err) }, NoReplay())
	}
}

// written records the outcome of writing r.
func (t *Topics) written(r *topicReq, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		t.dropLocked(r)
		return
	}
	if t.cfg.Ack == nil && r.sub {
		t.confirmLocked(r)
	}
}

func (t *Topics) dropLocked(r *topicReq) {
	if r.timer != nil {
		r.timer.Stop()
	}
	delete(t.pending, r.id)
}

func (t *Topics) confirmLocked(r *topicReq) {
	for _, tp := range r.topics {
		if _, ok := r.feed.topics[tp]; ok {
			r.feed.topics[tp] = true
		}
	}
}

func (t *Topics) report(feed string, topics []string, err error) {
	if t.cfg.OnError != nil && len(topics) > 0 {
		t.cfg.OnError(&TopicError{Feed: feed, Topics: topics, Err: err})
	}
}

// timeout handles a request whose answer did not come in time.
func (t *Topics) timeout(r *topicReq) {
	t.mu.Lock()
	if t.pending[r.id] != r {
		t.mu.Unlock()
		return
	}
	delete(t.pending, r.id)
	t.mu.Unlock()
	err := &TopicError{Feed: r.feed.name, Topics: r.topics, Err: ErrAckTimeout}
	if t.cfg.OnError != nil {
		t.cfg.OnError(err)
	}
	r.feed.client.Reconnect(err) // the new connection subscribes everything afresh
}

// handler wraps the user's handler: answers go to the set, the rest on.
func (t *Topics) handler(f *topicFeed) Handler {
	return func(ctx context.Context, m Message) error {
		if t.cfg.Ack != nil {
			if id, isAck, err := t.cfg.Ack(m); isAck {
				t.answer(f, id, err)
				return nil
			}
		}
		if t.cfg.Handler == nil {
			return nil
		}
		return t.cfg.Handler(ctx, m)
	}
}

// answer handles the upstream's answer to request id.
func (t *Topics) answer(f *topicFeed, id uint64, ackErr error) {
	t.mu.Lock()
	r := t.pending[id]
	if r == nil || r.feed != f {
		t.mu.Unlock()
		return
	}
	t.dropLocked(r)
	if ackErr == nil {
		if r.sub {
			t.confirmLocked(r)
		}
		t.mu.Unlock()
		return
	}
	if !r.sub {
		t.mu.Unlock()
		t.report(f.name, r.topics, fmt.Errorf("%w: unsubscribe: %w", ErrTopicRejected, ackErr))
		return
	}
	// A rejected subscription: the upstream's cap may be below ours, so the
	// feed keeps what it holds acknowledged, and the topics move, each in a
	// request of its own (one bad topic must not sink its batch). Only a
	// topic rejected alone counts against it.
	var move, giveUp []string
	for _, tp := range r.topics {
		if t.where[tp] != f {
			continue // removed or moved meanwhile
		}
		delete(t.where, tp)
		delete(f.topics, tp)
		if len(r.topics) == 1 {
			t.rejects[tp]++
		}
		if t.rejects[tp] >= 2 {
			delete(t.rejects, tp)
			giveUp = append(giveUp, tp)
		} else {
			move = append(move, tp)
		}
	}
	acked := 0
	for _, ok := range f.topics {
		if ok {
			acked++
		}
	}
	f.cap = max(min(f.cap, acked), 1)
	var reqs []*topicReq
	err := t.placeLocked(move, f, 1, &reqs)
	t.mu.Unlock()
	t.report(f.name, move, fmt.Errorf("moved to another feed: %w", ackErr))
	t.report(f.name, giveUp, fmt.Errorf("%w: %w", ErrTopicRejected, ackErr))
	if err != nil && t.cfg.OnError != nil {
		t.cfg.OnError(err)
	}
	t.send(reqs)
}

// onConnect subscribes the feed's topics on a new connection.
func (t *Topics) onConnect(ctx context.Context, f *topicFeed, c *Conn) error {
	if t.cfg.OnConnect != nil {
		if err := t.cfg.OnConnect(ctx, c); err != nil {
			return err
		}
	}
	t.mu.Lock()
	rotation := f.live // the current connection stays up meanwhile
	f.replaying, f.late, f.lateGone = true, nil, nil
	f.replayGen++ // new for every attempt: a failed attempt's requests are not this one's
	snap := make([]string, 0, len(f.topics))
	for tp := range f.topics {
		snap = append(snap, tp)
		f.topics[tp] = false
	}
	slices.Sort(snap)
	t.mu.Unlock()
	if err := t.replay(ctx, f, c, snap); err != nil {
		return err
	}
	for rotation { // subscribe what came meanwhile on the new connection too
		t.mu.Lock()
		snap, f.late = f.late, nil
		t.mu.Unlock()
		if len(snap) == 0 {
			// Changes keep going to the old connection (Send's) and into
			// late and lateGone until the switch: onRotated.
			return nil
		}
		if err := t.replay(ctx, f, c, snap); err != nil {
			return err
		}
	}
	return nil
}

// onRotated ends a rotation of f's connection. Once Send has switched
// (switched), the topics added and removed since the replay's snapshot —
// sent live on the old connection meanwhile — are subscribed and
// unsubscribed on the new one. Requests still waiting for an answer from
// the connection that is not kept are dropped: the old one is closing (a
// server may close without answering what it read last), and the snapshot
// and these late requests cover them; a failed rotation's replay has no
// connection left to answer. If the rotation failed, the old connection
// stays and has had every change live.
func (t *Topics) onRotated(f *topicFeed, switched bool) {
	t.mu.Lock()
	if !f.live || !f.replaying {
		t.mu.Unlock() // the connection ended meanwhile: the next one replays
		return
	}
	late, gone := f.late, f.lateGone
	f.replaying, f.late, f.lateGone = false, nil, nil
	if switched {
		f.gen = f.replayGen
	}
	for _, r := range t.pending {
		if r.feed == f && r.gen != f.gen {
			t.dropLocked(r)
		}
	}
	var reqs []*topicReq
	if switched {
		reqs = t.lateRequestsLocked(f, late, gone)
	}
	t.mu.Unlock()
	t.send(reqs)
}

// lateRequestsLocked builds the requests for the changes made while a new
// connection subscribed its snapshot: late topics still on f, and removed
// ones (which the snapshot may have held) no longer on it.
func (t *Topics) lateRequestsLocked(f *topicFeed, late, lateGone []string) []*topicReq {
	var still, gone []string
	for _, tp := range late {
		if t.where[tp] == f {
			still = append(still, tp)
		}
	}
	for _, tp := range lateGone {
		if t.where[tp] != f {
			gone = append(gone, tp)
		}
	}
	reqs := t.requestsLocked(f, true, still, t.cfg.Batch)
	return append(reqs, t.requestsLocked(f, false, gone, t.cfg.Batch)...)
}

func (t *Topics) replay(ctx context.Context, f *topicFeed, c *Conn, topics []string) error {
	t.mu.Lock()
	var live []string
	for _, tp := range topics {
		if t.where[tp] == f {
			live = append(live, tp)
		}
	}
	reqs := t.requestsLocked(f, true, live, t.cfg.Batch)
	for _, r := range reqs {
		r.gen = f.replayGen
	}
	t.mu.Unlock()
	for _, r := range reqs {
		typ, data := t.build(r)
		err := c.Send(ctx, typ, data)
		t.written(r, err)
		if err != nil {
			return err
		}
	}
	return nil
}

// onStateChange tracks whether the feed can take changes at once, and
// moves the topics of a feed that ended for good.
func (t *Topics) onStateChange(f *topicFeed, sc StateChange) {
	if t.cfg.OnStateChange != nil {
		t.cfg.OnStateChange(sc)
	}
	t.mu.Lock()
	var reqs []*topicReq
	if sc.To == StateConnected {
		f.gen = f.replayGen
		reqs = t.lateRequestsLocked(f, f.late, f.lateGone)
		f.live, f.replaying, f.connected, f.late, f.lateGone = true, false, true, nil, nil
		t.mu.Unlock()
		t.send(reqs)
		return
	}
	f.live, f.replaying, f.late, f.lateGone = false, false, nil, nil
	for _, r := range t.pending { // the next connection subscribes afresh
		if r.feed == f {
			t.dropLocked(r)
		}
	}
	for tp := range f.topics {
		f.topics[tp] = false
	}
	if sc.To != StateClosed || sc.Err == nil || f.gone {
		t.mu.Unlock()
		return
	}
	f.gone = true
	t.feeds = slices.DeleteFunc(t.feeds, func(x *topicFeed) bool { return x == f })
	orphans := make([]string, 0, len(f.topics))
	for tp := range f.topics {
		orphans = append(orphans, tp)
		delete(t.where, tp)
	}
	slices.Sort(orphans)
	f.topics = map[string]bool{}
	var err error
	connected := f.connected
	if connected {
		err = t.placeLocked(orphans, f, t.cfg.Batch, &reqs)
	}
	t.mu.Unlock()
	t.pool.Remove(f.name)
	if !connected {
		t.report(f.name, orphans, fmt.Errorf("%w: %w", ErrFeedEnded, sc.Err))
	}
	if err != nil && t.cfg.OnError != nil {
		t.cfg.OnError(err)
	}
	t.send(reqs)
}

package topics_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/leakcheck"
	"github.com/wspool/wspool/topics"
	"github.com/wspool/wspool/wspooltest"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

// topicServer is an upstream with a per-connection topic cap. Requests are
// {"op":"sub"|"unsub","id":N,"topics":[...]}; answers {"id":N} or
// {"id":N,"error":"..."}. A subscription that would take a connection over
// the cap, or names a topic starting with "bad", is rejected whole; after
// each accepted subscription the server sends one {"topic":T} data message
// per topic. A request naming a topic in silent (the first time only) is
// not answered.
type topicServer struct {
	*wspooltest.Server
	cap int
	// rateLimit, if set, is the most messages a connection may send in any
	// sliding second (as they arrive): over it the server closes with 1008.
	// pingEvery, if set, makes the server send {"ping":N} at that interval
	// and count the {"pong":N} answers.
	rateLimit int
	pingEvery time.Duration
	cuts      atomic.Int64 // connections closed with 1008
	pongs     atomic.Int64

	mu       sync.Mutex
	conns    map[*wspooltest.Conn]map[string]bool
	rejected int
	silent   map[string]bool
}

type topicReq struct {
	Op     string   `json:"op"`
	ID     uint64   `json:"id"`
	Topics []string `json:"topics"`
}

type topicAnswer struct {
	ID    uint64 `json:"id"`
	Error string `json:"error,omitempty"`
	Topic string `json:"topic,omitempty"`
}

func newTopicServer(t *testing.T, cap int) *topicServer {
	ts := &topicServer{cap: cap, conns: map[*wspooltest.Conn]map[string]bool{}, silent: map[string]bool{}}
	srv, err := wspooltest.NewServer(ts.serve)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	ts.Server = srv
	return ts
}

func (ts *topicServer) serve(c *wspooltest.Conn) {
	set := map[string]bool{}
	ts.mu.Lock()
	ts.conns[c] = set
	ts.mu.Unlock()
	defer func() {
		ts.mu.Lock()
		delete(ts.conns, c)
		ts.mu.Unlock()
	}()
	if ts.pingEvery > 0 {
		go func() {
			tk := time.NewTicker(ts.pingEvery)
			defer tk.Stop()
			for n := 1; ; n++ {
				select {
				case <-c.Done():
					return
				case <-tk.C:
				}
				if c.SendText(fmt.Sprintf(`{"ping":%d}`, n)) != nil {
					return
				}
			}
		}()
	}
	var arrived []time.Time // within the last second
	for {
		_, data, err := c.Read(context.Background())
		if err != nil {
			return
		}
		if ts.rateLimit > 0 {
			now := time.Now()
			arrived = append(arrived, now)
			for len(arrived) > 0 && now.Sub(arrived[0]) >= time.Second {
				arrived = arrived[1:]
			}
			if len(arrived) > ts.rateLimit {
				ts.cuts.Add(1)
				c.Close(websocket.ClosePolicyViolation, "too many requests")
				return
			}
		}
		if bytes.HasPrefix(data, []byte(`{"pong":`)) {
			ts.pongs.Add(1)
			continue
		}
		var req topicReq
		if json.Unmarshal(data, &req) != nil {
			continue
		}
		ts.mu.Lock()
		quiet := false
		for _, tp := range req.Topics {
			if ts.silent[tp] {
				delete(ts.silent, tp)
				quiet = true
			}
		}
		ans := topicAnswer{ID: req.ID}
		var data2 []string
		switch {
		case quiet:
		case req.Op == "unsub":
			for _, tp := range req.Topics {
				delete(set, tp)
			}
		default:
			n := len(set)
			for _, tp := range req.Topics {
				if !set[tp] {
					n++
				}
				if len(tp) >= 3 && tp[:3] == "bad" {
					ans.Error = "invalid topic " + tp
				}
			}
			if n > ts.cap {
				ans.Error = fmt.Sprintf("too many topics: %d over %d", n, ts.cap)
			}
			if ans.Error != "" {
				ts.rejected++
				break
			}
			for _, tp := range req.Topics {
				set[tp] = true
			}
			data2 = req.Topics
		}
		ts.mu.Unlock()
		if quiet {
			continue
		}
		b, _ := json.Marshal(ans)
		if c.SendText(string(b)) != nil {
			return
		}
		for _, tp := range data2 {
			b, _ := json.Marshal(topicAnswer{Topic: tp})
			if c.SendText(string(b)) != nil {
				return
			}
		}
	}
}

// subscribed returns every topic subscribed on an open connection, and the
// most on one connection.
func (ts *topicServer) subscribed() (all map[string]int, most int) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	all = map[string]int{}
	for _, set := range ts.conns {
		most = max(most, len(set))
		for tp := range set {
			all[tp]++
		}
	}
	return all, most
}

// connOf returns the open connection subscribed to topic.
func (ts *topicServer) connOf(topic string) *wspooltest.Conn {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for c, set := range ts.conns {
		if set[topic] {
			return c
		}
	}
	return nil
}

// topicRig is a running pool with a Topics set against a topicServer; it
// counts the data messages of each topic and collects reported errors.
type topicRig struct {
	ts    *topicServer
	set   *topics.Set
	pool  *wspool.Pool
	proxy *wspooltest.Proxy // between the feeds and the server, with viaProxy

	mu   sync.Mutex
	data map[string]int
	errs []error
	hook atomic.Pointer[func(callback string)] // called first in every callback
}

func (r *topicRig) fire(callback string) {
	if h := r.hook.Load(); h != nil {
		(*h)(callback)
	}
}

// viaProxy as Config.URL puts a fault proxy (topicRig.proxy) between the
// feeds and the server.
const viaProxy = "via proxy"

func newTopicRig(t *testing.T, serverCap int, cfg topics.Config) *topicRig {
	t.Helper()
	r := &topicRig{ts: newTopicServer(t, serverCap), data: map[string]int{}}
	pool, err := wspool.NewPool(wspool.WithBackoff(10*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	r.pool = pool
	if cfg.URL == viaProxy {
		if r.proxy, err = wspooltest.NewProxy(r.ts.Addr()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.proxy.Close() })
		cfg.URL = "ws://" + r.proxy.Addr() + "/stream"
	} else {
		cfg.URL = r.ts.URL("/stream")
	}
	cfg.Subscribe = func(id uint64, topics []string) (wspool.MessageType, []byte) {
		r.fire("Subscribe")
		b, _ := json.Marshal(topicReq{Op: "sub", ID: id, Topics: topics})
		return wspool.TextMessage, b
	}
	cfg.Unsubscribe = func(id uint64, topics []string) (wspool.MessageType, []byte) {
		r.fire("Unsubscribe")
		b, _ := json.Marshal(topicReq{Op: "unsub", ID: id, Topics: topics})
		return wspool.TextMessage, b
	}
	cfg.Ack = func(m wspool.Message) (uint64, bool, error) {
		r.fire("Ack")
		var a topicAnswer
		if json.Unmarshal(m.Data, &a) != nil || a.ID == 0 {
			return 0, false, nil
		}
		if a.Error != "" {
			return a.ID, true, errors.New(a.Error)
		}
		return a.ID, true, nil
	}
	cfg.Handler = func(_ context.Context, m wspool.Message) error {
		r.fire("Handler")
		var a topicAnswer
		if err := json.Unmarshal(m.Data, &a); err != nil || a.Topic == "" {
			return fmt.Errorf("not a data message: %q", m.Data)
		}
		r.mu.Lock()
		r.data[a.Topic]++
		r.mu.Unlock()
		return nil
	}
	cfg.OnConnect = func(context.Context, *wspool.Conn) error { r.fire("OnConnect"); return nil }
	cfg.OnStateChange = func(wspool.StateChange) { r.fire("OnStateChange") }
	cfg.OnError = func(err error) {
		r.fire("OnError")
		r.mu.Lock()
		r.errs = append(r.errs, err)
		r.mu.Unlock()
	}
	r.set, err = topics.New(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *topicRig) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.pool.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func (r *topicRig) count(topic string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.data[topic]
}

func (r *topicRig) errors() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.errs)
}

// settled waits until every topic in want is subscribed exactly once
// upstream, nothing else is, the set reports nothing unconfirmed, and every
// topic has delivered at least min[topic] (default 1) data messages.
func (r *topicRig) settled(t *testing.T, want []string, atLeast map[string]int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		all, _ := r.ts.subscribed()
		ok := len(all) == len(want) && r.set.Unconfirmed() == 0
		for _, tp := range want {
			if all[tp] != 1 || r.count(tp) < max(atLeast[tp], 1) {
				ok = false
				break
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			missing := 0
			for _, tp := range want {
				if all[tp] != 1 || r.count(tp) < max(atLeast[tp], 1) {
					missing++
				}
			}
			t.Fatalf("not settled within 30s: %d upstream subscriptions for %d topics, %d unconfirmed, %d topics missing; errors %v",
				len(all), len(want), r.set.Unconfirmed(), missing, r.errors())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func names(prefix string, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("%s%03d", prefix, i))
	}
	return out
}

// 35 topics at a cap of 10 take four feeds (10, 10, 10, 5), each within the
// server's cap (which rejects nothing), and every topic delivers; after the
// server drops every connection each feed subscribes its topics again.
func TestTopicsSpreadUnderCap(t *testing.T) {
	r := newTopicRig(t, 10, topics.Config{Name: "md", Cap: 10, Batch: 4})
	all := names("t", 0, 35)
	if err := r.set.Add(all...); err != nil { // before Run: replayed in OnConnect
		t.Fatal(err)
	}
	r.run(t)
	r.settled(t, all, nil)
	a := r.set.Assignment()
	sizes := []int{len(a["md-1"]), len(a["md-2"]), len(a["md-3"]), len(a["md-4"])}
	if len(a) != 4 || !slices.Equal(sizes, []int{10, 10, 10, 5}) {
		t.Fatalf("assignment %v", a)
	}
	if _, most := r.ts.subscribed(); most > 10 || r.ts.rejectedCount() != 0 {
		t.Fatalf("most %d topics on a connection, %d rejected", most, r.ts.rejectedCount())
	}
	for _, c := range r.ts.Conns() {
		c.Drop()
	}
	again := map[string]int{}
	for _, tp := range all {
		again[tp] = 2
	}
	r.settled(t, all, again)
	if errs := r.errors(); len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
}

// Topics added and removed while running are subscribed and unsubscribed at
// once, with their acknowledgements: a removed topic frees room on its feed
// for the next one added.
func TestTopicsLiveAddRemove(t *testing.T) {
	r := newTopicRig(t, 10, topics.Config{Name: "md", Cap: 10})
	r.run(t)
	first := names("a", 0, 15)
	if err := r.set.Add(first...); err != nil {
		t.Fatal(err)
	}
	r.settled(t, first, nil)
	r.set.Remove(first[:4]...) // all on md-1
	left := first[4:]
	r.settled(t, left, nil)
	more := names("b", 0, 6)
	if err := r.set.Add(more...); err != nil {
		t.Fatal(err)
	}
	want := append(slices.Clone(left), more...)
	r.settled(t, want, nil)
	a := r.set.Assignment()
	if len(a) != 2 || len(a["md-1"]) != 10 || len(a["md-2"]) != 7 {
		t.Fatalf("assignment %v: the removed topics' room should have been reused", a)
	}
	if !slices.Contains(a["md-1"], "b000") || !slices.Contains(a["md-1"], "b003") || !slices.Contains(a["md-2"], "b004") {
		t.Fatalf("assignment %v", a)
	}
	if errs := r.errors(); len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
}

// TestTopicsRotationKeepsLateChanges: a topic added, and one removed, while
// a rotation's new connection is ready but Send has not switched to it yet
// reach the new connection. Before the fix the set stopped tracking the
// rotation when its OnConnect returned: the added topic was subscribed on
// the old connection only (and lost with it at the switch) and the removed
// one stayed subscribed on the new one, until the next reconnect; and the
// requests written on the old connection just before its close were never
// answered (the server closes on our close frame), timed out and
// reconnected the feed. The changes are made from the WithTimings callback
// for OnConnect, which runs in exactly that window.
func TestTopicsRotationKeepsLateChanges(t *testing.T) {
	const ackTimeout = 300 * time.Millisecond
	var armed atomic.Bool
	var r *topicRig
	r = newTopicRig(t, 10, topics.Config{Name: "rot", Cap: 10, AckTimeout: ackTimeout, Options: []wspool.Option{
		wspool.WithTimings(func(tm wspool.Timing) {
			if tm.Kind == wspool.TimingOnConnect && armed.CompareAndSwap(true, false) {
				if err := r.set.Add("late"); err != nil {
					t.Errorf("Add: %v", err)
				}
				r.set.Remove("a000")
			}
		})}})
	r.run(t)
	first := names("a", 0, 3)
	if err := r.set.Add(first...); err != nil {
		t.Fatal(err)
	}
	r.settled(t, first, nil)
	armed.Store(true)
	c := r.pool.Client("rot-1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Rotate(ctx); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if armed.Load() {
		t.Fatal("the rotation's OnConnect timing never fired")
	}
	r.settled(t, []string{"a001", "a002", "late"}, nil)
	// A request left waiting for an answer the old connection will never
	// give (the server closed without answering what it read last) times
	// out after AckTimeout, is reported and reconnects the feed: watch for
	// that for three times AckTimeout.
	quiet := time.After(3 * ackTimeout)
	for watching := true; watching; {
		select {
		case <-quiet:
			watching = false
		case <-time.After(10 * time.Millisecond):
			if errs := r.errors(); len(errs) != 0 {
				t.Fatalf("after the rotation: %v", errs)
			}
		}
	}
	if s := c.Stats(); s.Rotations != 1 || s.Connects != 2 || s.LastError != nil {
		t.Fatalf("want one rotation and no reconnect: %+v", s)
	}
	if errs := r.errors(); len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
}

// A cap above the server's: the server rejects the topics over its cap; the
// set reports them, lowers the feed's cap to what it holds, and moves them to
// another feed, so that every topic ends up subscribed. A topic the server
// rejects everywhere is reported with ErrTopicRejected and leaves the set.
func TestTopicsRejectedOverServerCap(t *testing.T) {
	r := newTopicRig(t, 10, topics.Config{Name: "md", Cap: 12, Batch: 1})
	r.run(t)
	all := names("t", 0, 30)
	if err := r.set.Add(all...); err != nil {
		t.Fatal(err)
	}
	if err := r.set.Add("bad-topic"); err != nil {
		t.Fatal(err)
	}
	r.settled(t, all, nil)
	if _, most := r.ts.subscribed(); most > 10 {
		t.Fatalf("%d topics on one connection", most)
	}
	if r.ts.rejectedCount() == 0 {
		t.Fatal("the server rejected nothing: the test proves nothing")
	}
	var gaveUp bool
	for _, err := range r.errors() {
		var te *topics.Error
		if !errors.As(err, &te) {
			t.Fatalf("not a TopicError: %v", err)
		}
		if errors.Is(err, topics.ErrRejected) {
			if !slices.Equal(te.Topics, []string{"bad-topic"}) {
				t.Fatalf("gave up on %v", te.Topics)
			}
			gaveUp = true
		}
	}
	if !gaveUp {
		t.Fatalf("bad-topic not reported as rejected: %v", r.errors())
	}
	for _, tps := range r.set.Assignment() {
		if slices.Contains(tps, "bad-topic") {
			t.Fatal("bad-topic still in the set")
		}
	}
}

// A request whose answer never comes is reported with ErrAckTimeout and its
// feed reconnects, which subscribes its topics afresh.
func TestTopicsAckTimeout(t *testing.T) {
	r := newTopicRig(t, 10, topics.Config{Name: "md", Cap: 10, AckTimeout: 300 * time.Millisecond})
	r.run(t)
	first := names("a", 0, 5)
	if err := r.set.Add(first...); err != nil {
		t.Fatal(err)
	}
	r.settled(t, first, nil)
	r.ts.mu.Lock()
	r.ts.silent["quiet"] = true
	r.ts.mu.Unlock()
	if err := r.set.Add("quiet"); err != nil {
		t.Fatal(err)
	}
	want := append(slices.Clone(first), "quiet")
	again := map[string]int{}
	for _, tp := range first {
		again[tp] = 2 // subscribed again on the new connection
	}
	r.settled(t, want, again)
	errs := r.errors()
	if len(errs) != 1 || !errors.Is(errs[0], topics.ErrAckTimeout) {
		t.Fatalf("errors %v, want one ErrAckTimeout", errs)
	}
	var te *topics.Error
	if !errors.As(errs[0], &te) || !slices.Equal(te.Topics, []string{"quiet"}) || te.Feed != "md-1" {
		t.Fatalf("reported %+v", te)
	}
}

// A feed that ends for good (here a failure its permanent func rejects)
// leaves the pool, and its topics move to the other feeds and a new one.
func TestTopicsFeedEndsForGood(t *testing.T) {
	var kill atomic.Bool
	r := newTopicRig(t, 10, topics.Config{Name: "md", Cap: 10,
		Options: []wspool.Option{wspool.WithPermanentFunc(func(err error) bool {
			return kill.CompareAndSwap(true, false) || wspool.DefaultPermanent(err)
		})},
	})
	r.run(t)
	all := names("t", 0, 25)
	if err := r.set.Add(all...); err != nil {
		t.Fatal(err)
	}
	r.settled(t, all, nil)
	victim := r.set.Assignment()["md-2"]
	kill.Store(true)
	r.ts.connOf(victim[0]).Drop()
	again := map[string]int{}
	for _, tp := range victim {
		again[tp] = 2
	}
	r.settled(t, all, again)
	a := r.set.Assignment()
	if _, ok := a["md-2"]; ok {
		t.Fatalf("md-2 still in the set: %v", a)
	}
	for _, c := range r.pool.Clients() {
		if c.Name() == "md-2" {
			t.Fatal("md-2 still in the pool")
		}
	}
	if len(a) != 3 || len(a["md-1"]) != 10 || len(a["md-3"]) != 10 || len(a["md-4"]) != 5 {
		t.Fatalf("assignment %v", a)
	}
	if errs := r.errors(); len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
}

// Every callback of a Topics set may call the set's methods (and the pool's)
// without deadlock: from each, Add and Remove a topic, read Assignment,
// Unconfirmed and the pool's Stats; the change then reaches the upstream.
func TestTopicsCallbacksReenter(t *testing.T) {
	for _, cb := range []string{"Subscribe", "Unsubscribe", "Ack", "Handler", "OnConnect", "OnStateChange", "OnError"} {
		t.Run(cb, func(t *testing.T) {
			t.Parallel()
			r := newTopicRig(t, 10, topics.Config{Name: "md", Cap: 10})
			first := names("t", 0, 5)
			var fired atomic.Bool
			returned := make(chan struct{})
			hook := func(name string) {
				if name != cb || !fired.CompareAndSwap(false, true) {
					return // the calls below run the callback again: once only
				}
				func() {
					if err := r.set.Add("re-" + cb); err != nil {
						t.Errorf("Add from %s: %v", cb, err)
					}
					r.set.Remove("t000")
					_ = r.set.Assignment()
					_ = r.set.Unconfirmed()
					_ = r.pool.Stats()
					close(returned)
				}()
			}
			r.hook.Store(&hook)
			if err := r.set.Add(first...); err != nil {
				t.Fatal(err)
			}
			r.run(t)
			switch cb {
			case "Unsubscribe":
				r.settled(t, first, nil)
				r.set.Remove("t004")
				first = first[:4]
			case "OnError":
				r.set.Add("bad-1") // rejected: reported
			}
			select {
			case <-returned:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s never ran the calls, or they did not return", cb)
			}
			r.settled(t, append(slices.Clone(first[1:]), "re-"+cb), nil)
		})
	}
}

// rejectedCount is how many subscriptions the server rejected.
func (ts *topicServer) rejectedCount() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.rejected
}

// TestTopicsConcurrentRemoveAddReachServerInOrder: Remove and Add of the
// same topics from many goroutines at once; the server sees each topic's
// requests in the order the set decided them, so that once everything is
// answered the server holds exactly the set. Before, a request was decided
// under the set's lock and handed to the feed after it, so a Remove's
// unsubscribe could overtake the Add decided after it: the set showed the
// topic acknowledged while the server had unsubscribed it.
func TestTopicsConcurrentRemoveAddReachServerInOrder(t *testing.T) {
	r := newTopicRig(t, 1000, topics.Config{Name: "ord", Cap: 1000})
	r.run(t)
	all := names("c", 0, 100)
	if err := r.set.Add(all...); err != nil {
		t.Fatal(err)
	}
	r.settled(t, all, nil)
	// Rounds of one Remove and one Add per topic, all started at once.
	for range 20 {
		start := make(chan struct{})
		var wg sync.WaitGroup
		for _, tp := range all {
			wg.Add(2)
			go func() {
				defer wg.Done()
				<-start
				r.set.Remove(tp)
			}()
			go func() {
				defer wg.Done()
				<-start
				if err := r.set.Add(tp); err != nil {
					t.Errorf("Add: %v", err)
				}
			}()
		}
		close(start)
		wg.Wait()
	}
	want := r.set.Assignment()["ord-1"]
	r.settled(t, want, nil)
	if errs := r.errors(); len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
}

// TestTopicsBadTopicInBatchIsolated: one invalid topic in a batch of 61 is
// isolated (the rejected batch is split and retried on the same
// connection) and taken out of the set; the 60 others stay on their feed,
// whose cap is not lowered, and no feed is left behind for the bad topic.
// Before, the rejection lowered the feed's cap to what it held acknowledged
// (none: 1) and moved all 61 topics one by one to other feeds.
func TestTopicsBadTopicInBatchIsolated(t *testing.T) {
	r := newTopicRig(t, 100, topics.Config{Name: "md", Cap: 100})
	good := names("t", 0, 60)
	all := slices.Insert(slices.Clone(good), 25, "bad-1")
	if err := r.set.Add(all...); err != nil {
		t.Fatal(err)
	}
	r.run(t)
	r.settled(t, good, nil) // bad-1 out of the set: nothing unconfirmed
	more := names("u", 0, 10)
	if err := r.set.Add(more...); err != nil {
		t.Fatal(err)
	}
	r.settled(t, append(slices.Clone(good), more...), nil)
	a := r.set.Assignment()
	if len(a) != 1 || len(a["md-1"]) != 70 {
		t.Fatalf("assignment %v: want all 70 on md-1 (cap 100)", a)
	}
	if n := len(r.pool.Clients()); n != 1 {
		t.Fatalf("%d feeds in the pool", n)
	}
	var rejected bool
	for _, err := range r.errors() {
		var te *topics.Error
		if !errors.As(err, &te) || !slices.Equal(te.Topics, []string{"bad-1"}) {
			t.Fatalf("reported %v", err)
		}
		rejected = rejected || errors.Is(err, topics.ErrRejected)
	}
	if !rejected {
		t.Fatalf("bad-1 not reported with ErrRejected: %v", r.errors())
	}
}

// TestTopicsPacedReplayLongerThanAckTimeout: a replay paced to 20 requests
// a second takes three AckTimeouts; every request is answered within its
// timeout from when it was written, the connection's answers being read
// while the replay goes on. One request the server never answers is
// reported once and its connection replaced, and the next connection
// subscribes everything. Before, each request's timer started when the
// replay was queued and answers were read only after OnConnect, so every
// request timed out; the reconnect failed unseen (Reconnect during
// OnConnect) and the answers that came later were ignored: Unconfirmed
// stayed at 60 with every topic subscribed.
func TestTopicsPacedReplayLongerThanAckTimeout(t *testing.T) {
	r := newTopicRig(t, 100, topics.Config{Name: "pace", Cap: 100, Batch: 1, AckTimeout: time.Second,
		Options: []wspool.Option{wspool.WithSendPacing(wspool.SendPacing{Messages: 5, Per: 250 * time.Millisecond})}})
	all := names("p", 0, 60)
	r.ts.mu.Lock()
	r.ts.silent["p030"] = true // its first request is not answered
	r.ts.mu.Unlock()
	if err := r.set.Add(all...); err != nil {
		t.Fatal(err)
	}
	r.run(t)
	r.settled(t, all, nil)
	errs := r.errors()
	var te *topics.Error
	if len(errs) != 1 || !errors.Is(errs[0], topics.ErrAckTimeout) || !errors.As(errs[0], &te) || !slices.Equal(te.Topics, []string{"p030"}) {
		t.Fatalf("errors %v: want one ErrAckTimeout for p030", errs)
	}
	if n := r.ts.Accepted(); n != 2 {
		t.Fatalf("%d connections: want the first and the one that replaced it", n)
	}
}

// TestTopicsOptionsThatCannotApplyFail: Options that the set would override
// for its feeds (their names, OnConnect, OnStateChange) are an error at New
// rather than silently ignored.
func TestTopicsOptionsThatCannotApplyFail(t *testing.T) {
	p, err := wspool.NewPool()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	sub := func(uint64, []string) (wspool.MessageType, []byte) { return wspool.TextMessage, nil }
	for name, o := range map[string]wspool.Option{
		"WithName":          wspool.WithName("mine"),
		"WithOnConnect":     wspool.WithOnConnect(func(context.Context, *wspool.Conn) error { return nil }),
		"WithOnStateChange": wspool.WithOnStateChange(func(wspool.StateChange) {}),
	} {
		_, err := topics.New(p, topics.Config{URL: "ws://127.0.0.1:1/", Cap: 10, Subscribe: sub,
			Options: []wspool.Option{wspool.WithPingInterval(time.Second), o}})
		if !errors.Is(err, wspool.ErrInvalidOption) {
			t.Errorf("%s in Options: New = %v, want ErrInvalidOption", name, err)
		}
	}
	if _, err := topics.New(p, topics.Config{URL: "ws://127.0.0.1:1/", Cap: 10, Subscribe: sub,
		Options: []wspool.Option{wspool.WithPingInterval(time.Second), wspool.WithOnError(func(string, error) {})}}); err != nil {
		t.Fatalf("New with options that apply: %v", err)
	}
}

// TestTopicsPoolDefaultsApplyToFeeds: the pool's default OnConnect and
// OnStateChange (given to NewPool) apply to the set's feeds like to any
// other feed of the pool: on every connection the pool's OnConnect runs
// first, then Config.OnConnect, then the topics are subscribed; the pool's
// OnStateChange sees the set's feeds connect. They used to be replaced by
// the set's own hooks without a word.
func TestTopicsPoolDefaultsApplyToFeeds(t *testing.T) {
	ts := newTopicServer(t, 10)
	var mu sync.Mutex
	var calls []string // "pool"/"set" OnConnect, per connection id
	record := func(who string, c *wspool.Conn) {
		mu.Lock()
		calls = append(calls, fmt.Sprintf("%s %s#%d", who, c.Feed(), c.ID()))
		mu.Unlock()
	}
	connected := make(chan string, 16)
	pool, err := wspool.NewPool(wspool.WithBackoff(10*time.Millisecond, 50*time.Millisecond),
		wspool.WithOnConnect(func(_ context.Context, c *wspool.Conn) error { record("pool", c); return nil }),
		wspool.WithOnStateChange(func(sc wspool.StateChange) {
			if sc.To == wspool.StateConnected {
				select {
				case connected <- sc.Feed:
				default:
				}
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	set, err := topics.New(pool, topics.Config{URL: ts.URL("/stream"), Name: "md", Cap: 10,
		Subscribe: func(id uint64, tps []string) (wspool.MessageType, []byte) {
			b, _ := json.Marshal(topicReq{Op: "sub", ID: id, Topics: tps})
			return wspool.TextMessage, b
		},
		OnConnect: func(_ context.Context, c *wspool.Conn) error { record("set", c); return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := set.Add("a", "b"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pool.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	select {
	case feed := <-connected:
		if feed != "md-1" {
			t.Errorf("the pool's OnStateChange saw %q connect, want md-1", feed)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the pool's default OnStateChange never saw the set's feed connect")
	}
	deadline := time.Now().Add(30 * time.Second)
	for all, _ := ts.subscribed(); all["a"] != 1 || all["b"] != 1; all, _ = ts.subscribed() {
		if time.Now().After(deadline) {
			t.Fatalf("topics not subscribed within 30s: %v", all)
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	got := slices.Clone(calls)
	mu.Unlock()
	ok := len(got) >= 2 && len(got)%2 == 0
	for i := 0; ok && i < len(got); i += 2 {
		pool, _ := strings.CutPrefix(got[i], "pool ")
		set, _ := strings.CutPrefix(got[i+1], "set ")
		ok = strings.HasPrefix(pool, "md-1#") && pool == set
	}
	if !ok {
		t.Errorf("OnConnect calls %q, want the pool's then the set's on each connection of md-1", got)
	}
}

// TestTopicsStandbyConnectionsSubscribed: with hot standby connections
// (WithStandby) every connection of a feed subscribes the feed's topics and
// gets its live changes; a standby connection that is lost subscribes them
// again on its new connection, and Unconfirmed counts a topic until every
// connection has acknowledged it.
func TestTopicsStandbyConnectionsSubscribed(t *testing.T) {
	r := newTopicRig(t, 10, topics.Config{Name: "sb", Cap: 10, Options: []wspool.Option{
		wspool.WithSequence(wspool.Sequence{Extract: func(wspool.Message) (string, uint64, bool) { return "", 0, false }}),
		wspool.WithStandby(wspool.Standby{Connections: 1}),
	}})
	first := names("s", 0, 5)
	if err := r.set.Add(first...); err != nil {
		t.Fatal(err)
	}
	r.run(t)
	onBoth := func(want []string) {
		t.Helper()
		waitFor(t, 30*time.Second, fmt.Sprintf("%v subscribed on both connections", want), func() bool {
			all, _ := r.ts.subscribed()
			if len(all) != len(want) || r.set.Unconfirmed() != 0 || len(r.ts.Conns()) != 2 {
				return false
			}
			for _, tp := range want {
				if all[tp] != 2 {
					return false
				}
			}
			return true
		})
	}
	onBoth(first)
	r.set.Remove("s000")
	if err := r.set.Add("s100"); err != nil {
		t.Fatal(err)
	}
	want := append(slices.Clone(first[1:]), "s100")
	onBoth(want)
	r.ts.Conns()[1].Drop() // one of the two, primary or standby
	waitFor(t, 30*time.Second, "a new connection", func() bool { return r.ts.Accepted() == 3 })
	onBoth(want)
	if errs := r.errors(); len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTopicsBlackholedReplayResubscribes: a connection blackholed halfway
// through its paced replay (the kernel still takes the writes, nothing comes
// back) is found dead by its pings; its writer stops with it and the next
// connection, once the path is back, subscribes every topic exactly once.
func TestTopicsBlackholedReplayResubscribes(t *testing.T) {
	r := newTopicRig(t, 100, topics.Config{URL: viaProxy, Name: "bh", Cap: 100, Batch: 1, AckTimeout: 5 * time.Second,
		Options: []wspool.Option{
			wspool.WithSendPacing(wspool.SendPacing{Messages: 10, Per: 250 * time.Millisecond}),
			wspool.WithPingInterval(100 * time.Millisecond), wspool.WithPongTimeout(400 * time.Millisecond),
			wspool.WithHandshakeTimeout(time.Second),
		}})
	all := names("b", 0, 40)
	if err := r.set.Add(all...); err != nil {
		t.Fatal(err)
	}
	r.run(t)
	waitFor(t, 30*time.Second, "part of the replay subscribed", func() bool {
		got, _ := r.ts.subscribed()
		return len(got) >= 10
	})
	r.proxy.Blackhole(true)
	feed := r.pool.Client("bh-1")
	waitFor(t, 30*time.Second, "the blackholed connection found dead", func() bool { return feed.State() != wspool.StateConnected })
	if got, _ := r.ts.subscribed(); len(got) == len(all) {
		t.Fatal("the replay ended before the blackhole: the test proves nothing")
	}
	r.proxy.Blackhole(false)
	r.settled(t, all, nil)
	if errs := r.errors(); len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
}

// TestTopicsSubscribePanicReported: a panic in Subscribe (run on the
// connection's writer, not a library callback) is recovered and reported
// with the request's topics, and the connection is replaced, whose replay
// subscribes everything.
func TestTopicsSubscribePanicReported(t *testing.T) {
	r := newTopicRig(t, 10, topics.Config{Name: "pn", Cap: 10})
	var once atomic.Bool
	hook := func(name string) {
		if name == "Subscribe" && once.CompareAndSwap(false, true) {
			panic("subscribe blew up")
		}
	}
	r.hook.Store(&hook)
	all := names("p", 0, 5)
	if err := r.set.Add(all...); err != nil {
		t.Fatal(err)
	}
	r.run(t)
	r.settled(t, all, nil)
	errs := r.errors()
	var te *topics.Error
	if len(errs) != 1 || !errors.As(errs[0], &te) || !strings.Contains(te.Err.Error(), "Subscribe panicked: subscribe blew up") || !slices.Equal(te.Topics, all) {
		t.Fatalf("errors %v: want the panic reported once with the replay's topics", errs)
	}
}

// TestTopicsStandbyPacingServerPingsTogether: the features a market-data
// collector combines, against an upstream that enforces them: a topic set
// over feeds with a standby connection each, paced as the README advises
// (4 per 500 ms: at most 8 in any second) against an upstream that closes
// with 1008 over 10 messages in any sliding second, which also sends
// data-level pings that are answered (the answers are paced too). Every
// topic ends up subscribed on both connections of its feed, with one
// connection dropped halfway; no 1008, no reported error.
func TestTopicsStandbyPacingServerPingsTogether(t *testing.T) {
	r := newTopicRig(t, 40, topics.Config{Name: "combo", Cap: 40, Batch: 1, Options: []wspool.Option{
		wspool.WithSequence(wspool.Sequence{Extract: func(wspool.Message) (string, uint64, bool) { return "", 0, false }}),
		wspool.WithStandby(wspool.Standby{Connections: 1}),
		wspool.WithSendPacing(wspool.SendPacing{Messages: 4, Per: 500 * time.Millisecond, Pings: true}),
		wspool.WithServerPing(wspool.ServerPing{Reply: func(m wspool.Message) (wspool.MessageType, []byte, bool) {
			n, ok := bytes.CutPrefix(m.Data, []byte(`{"ping":`))
			if !ok {
				return 0, nil, false
			}
			return wspool.TextMessage, append([]byte(`{"pong":`), n...), true
		}}),
	}})
	r.ts.rateLimit = 10
	r.ts.pingEvery = 300 * time.Millisecond
	all := names("c", 0, 12)
	if err := r.set.Add(all...); err != nil {
		t.Fatal(err)
	}
	r.run(t)
	onBoth := func() {
		t.Helper()
		waitFor(t, 60*time.Second, "every topic subscribed on both connections", func() bool {
			sub, _ := r.ts.subscribed()
			if len(sub) != len(all) || r.set.Unconfirmed() != 0 || len(r.ts.Conns()) != 2 {
				return false
			}
			for _, tp := range all {
				if sub[tp] != 2 {
					return false
				}
			}
			return true
		})
	}
	onBoth()
	r.ts.Conns()[0].Drop() // primary or standby: its next connection replays, paced
	waitFor(t, 30*time.Second, "a new connection", func() bool { return r.ts.Accepted() == 3 })
	onBoth()
	if n := r.ts.cuts.Load(); n != 0 {
		t.Fatalf("the upstream closed %d connection(s) with 1008: the README's pacing went over 10 messages in a second", n)
	}
	if r.ts.pongs.Load() == 0 {
		t.Fatal("no server ping was answered")
	}
	if errs := r.errors(); len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
}

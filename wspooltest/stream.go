package wspooltest

import (
	"context"
	"encoding/json"
	"hash/crc32"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/wspool/wspool"
)

// Stream is a script for a Server that serves sequenced streams, one per URL
// path, as upstreams number them: each path is a stream of updates 1, 2, 3,
// ..., one produced every interval (or when Publish is called). A connection
// whose URL has a resume point (?from=N) gets the messages from number N on
// (from the stream's history, then live); without one it starts at the live
// head. A resume point may name the epoch it is in (?from=N&epoch=E): if E is
// not the stream's current epoch (it restarted meanwhile), the connection
// gets the current epoch from its first update. A stream starts producing when it is first connected to (or
// published to).
//
// By default each message is its number as decimal text. With Updates, each
// message is a JSON Update of a key-value state (an order book's levels, a
// watched set of resources) numbered in a wspool.SequenceShape, with a
// checksum of the state, and the Stream serves snapshots of that state over
// HTTP (SnapshotURL). Faults: Skip leaves numbers out (a gap), Restart starts
// the numbering again (a new epoch), Corrupt sends one wrong update (a
// checksum mismatch), SnapshotLag makes snapshots older than the stream, and
// Pause stops one connection's data while it stays alive; the Server's
// connections can be dropped and frozen. With MessageLimit (or LimitMessages,
// per stream) a connection that sends too fast is closed with 1008, recorded
// in LimitCloses, and with Subscribe data flows only after the client
// subscribed and was acknowledged. Sent counts what each stream sent.
//
//	st := wspooltest.NewStream(10 * time.Millisecond)
//	defer st.Close()
//	srv, err := wspooltest.NewServer(st.Serve)
type Stream struct {
	interval time.Duration
	cfg      streamConfig
	stop     chan struct{}
	stopped  chan struct{}
	once     sync.Once

	mu    sync.Mutex
	feeds map[string]*stream
	rng   *rand.Rand
	hsrv  *snapshotServer // started by SnapshotURL
	delay time.Duration   // SnapshotDelay
	cuts  []LimitClose    // connections closed for their message rate
}

// StreamOption configures a Stream.
type StreamOption func(*streamConfig)

type streamConfig struct {
	json     bool
	shape    wspool.SequenceShape
	keys     int
	seed     uint64
	limitN   int
	limitPer time.Duration
	sub      bool
}

// Updates makes every message a JSON Update of a key-value state of about
// keys entries, numbered in shape: SingleNumber (one update a message,
// First = Last), NumberRange (up to three consecutive updates a message,
// First..Last) or LinkedIDs (one update a message with an id, Last, that
// grows by 2 or 4, and the previous message's id, Prev). Every update sets
// one or two keys to a value (0 deletes the key), drawn from a generator
// seeded with seed.
func Updates(shape wspool.SequenceShape, keys int, seed uint64) StreamOption {
	return func(c *streamConfig) {
		c.json, c.shape, c.keys, c.seed = true, shape, max(keys, 1), seed
	}
}

// MessageLimit closes a connection with 1008 (policy violation, "too many
// requests") when the client sends more than n messages within any window
// of per, as exchanges do.
func MessageLimit(n int, per time.Duration) StreamOption {
	return func(c *streamConfig) { c.limitN, c.limitPer = n, per }
}

// Subscribe makes a connection wait for the client's subscription before it
// gets any data: the client sends {"op":"subscribe","id":N} and the server
// answers {"op":"ack","id":N}, then streams; {"op":"unsubscribe","id":N} is
// acknowledged the same way and stops the stream.
func Subscribe() StreamOption { return func(c *streamConfig) { c.sub = true } }

// Update is one message of a Stream with Updates.
type Update struct {
	Stream string `json:"stream"` // the URL path
	Epoch  uint64 `json:"epoch"`  // 1, then one more at every Restart
	// First..Last are the update numbers the message covers (NumberRange);
	// with SingleNumber First = Last, with LinkedIDs Last is the message's
	// id and Prev the previous message's id (0 for the first of an epoch).
	First    uint64   `json:"first"`
	Last     uint64   `json:"last"`
	Prev     uint64   `json:"prev"`
	Changes  []Change `json:"changes"`
	Checksum uint32   `json:"checksum"` // of the state after the update (Checksum)
}

// Change sets Key to Value; Value 0 deletes the key.
type Change struct {
	Key   string `json:"k"`
	Value int64  `json:"v"`
}

// Snapshot is a Stream's state as its snapshot endpoint serves it: the state
// after the update numbered Last (in the stream's numbering: the id with
// LinkedIDs) of Epoch.
type Snapshot struct {
	Stream   string           `json:"stream"`
	Epoch    uint64           `json:"epoch"`
	Last     uint64           `json:"last"`
	State    map[string]int64 `json:"state"`
	Checksum uint32           `json:"checksum"`
}

// Checksum is the checksum a Stream puts in its updates and snapshots: the
// CRC-32 (IEEE) of "key:value," for every key in ascending order.
func Checksum(state map[string]int64) uint32 {
	keys := make([]string, 0, len(state))
	for k := range state {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	h := crc32.NewIEEE()
	var b []byte
	for _, k := range keys {
		b = append(b[:0], k...)
		b = append(b, ':')
		b = strconv.AppendInt(b, state[k], 10)
		b = append(b, ',')
		_, _ = h.Write(b)
	}
	return h.Sum32()
}

// stream is one path's state.
type stream struct {
	path    string
	epoch   uint64
	head    uint64           // newest update number of the epoch
	base    uint64           // history[i] is update base+1+i
	history []entry          // the epoch's updates, oldest trimmed past maxHistory
	state   map[string]int64 // after head
	skip    int              // live updates still to leave out
	corrupt int              // live updates still to send wrong
	lag     int              // snapshots are this many updates behind
	conns   []*streamConn    // in arrival order
	sent    uint64           // data messages written to its connections
	limitN  int              // LimitMessages (0: MessageLimit's)
	limitD  time.Duration
}

// entry is one update: its changes, the values they replaced (to rebuild an
// older state for a lagging snapshot), the state's checksum after it, and
// whether it was left out of (or sent wrong on) the live stream.
type entry struct {
	changes []Change
	old     []Change
	sum     uint32
	skipped bool
	corrupt bool
}

// maxHistory bounds the updates a stream keeps for resumes and snapshots.
const maxHistory = 1 << 18

type streamConn struct {
	c        *Conn
	wake     chan struct{}
	next     uint64 // next update number to send
	liveFrom uint64 // updates from here on were live for this connection
	epoch    uint64
	paused   bool
	subbed   bool
	resumed  bool     // the URL had a resume point
	acks     []string // subscription acks Serve is to send next
}

// NewStream returns a Stream producing one update per interval on every
// stream connected to so far (interval 0: only Publish produces). Close
// stops it.
func NewStream(interval time.Duration, opts ...StreamOption) *Stream {
	st := &Stream{interval: interval, stop: make(chan struct{}), stopped: make(chan struct{}), feeds: map[string]*stream{}}
	for _, o := range opts {
		o(&st.cfg)
	}
	st.rng = rand.New(rand.NewPCG(st.cfg.seed, 0x5eed))
	go st.produce()
	return st
}

// Close stops producing, the snapshot endpoint, and makes every Serve return.
func (st *Stream) Close() {
	st.once.Do(func() { close(st.stop) })
	<-st.stopped
	st.mu.Lock()
	h := st.hsrv
	st.mu.Unlock()
	if h != nil {
		h.close()
	}
}

// Head returns the newest number of the stream of path (with LinkedIDs, the
// newest id).
func (st *Stream) Head(path string) uint64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.number(st.feed(path).head)
}

// Epoch returns the stream's current epoch: 1, then one more per Restart.
func (st *Stream) Epoch(path string) uint64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.feed(path).epoch
}

// State returns a copy of the stream's true state after its newest update.
func (st *Stream) State(path string) map[string]int64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	f := st.feed(path)
	out := make(map[string]int64, len(f.state))
	for k, v := range f.state {
		out[k] = v
	}
	return out
}

// Skip leaves the next n updates of the stream of path out of what is sent
// live to the connections open while they are produced: a gap. They stay in
// the history, so a connection resuming from before them gets them, and the
// snapshots include them.
func (st *Stream) Skip(path string, n int) {
	st.mu.Lock()
	st.feed(path).skip += n
	st.mu.Unlock()
}

// Corrupt sends the next n updates of the stream of path wrong on the live
// stream (a changed value; the checksum is the true state's), so that a
// client checking checksums sees a mismatch. The history and the snapshots
// stay true.
func (st *Stream) Corrupt(path string, n int) {
	st.mu.Lock()
	st.feed(path).corrupt += n
	st.mu.Unlock()
}

// Restart starts the numbering of the stream of path again at 1 in a new
// epoch, as an upstream does after its own restart (the state is kept, the
// history is not): open connections go on with update 1 of the new epoch.
func (st *Stream) Restart(path string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	f := st.feed(path)
	f.epoch++
	f.head, f.base, f.history = 0, 0, nil
	for _, sc := range f.conns {
		sc.next, sc.liveFrom, sc.epoch = 1, 1, f.epoch
	}
	st.wakeLocked(f)
}

// SnapshotLag makes the snapshots of the stream of path n updates older than
// its head (as far back as the epoch's start), like an upstream whose
// snapshot service lags its stream.
func (st *Stream) SnapshotLag(path string, n int) {
	st.mu.Lock()
	st.feed(path).lag = max(n, 0)
	st.mu.Unlock()
}

// Publish produces n updates on the stream of path now.
func (st *Stream) Publish(path string, n int) {
	st.mu.Lock()
	defer st.mu.Unlock()
	f := st.feed(path)
	for range n {
		st.advanceLocked(f)
	}
	st.wakeLocked(f)
}

// Conns returns the stream's open connections, oldest first.
func (st *Stream) Conns(path string) []*Conn {
	st.mu.Lock()
	defer st.mu.Unlock()
	f := st.feed(path)
	out := make([]*Conn, len(f.conns))
	for i, sc := range f.conns {
		out[i] = sc.c
	}
	return out
}

// Pause stops (true) or resumes (false) the data sent to c, which stays
// alive (it answers pings): an upstream that stopped publishing to one
// connection. What was produced meanwhile is sent on resuming.
func (st *Stream) Pause(c *Conn, on bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, f := range st.feeds {
		for _, sc := range f.conns {
			if sc.c == c {
				sc.paused = on
				signal(sc.wake)
			}
		}
	}
}

// Snapshot returns the stream's snapshot as the endpoint would serve it now
// (SnapshotLag applies).
func (st *Stream) Snapshot(path string) Snapshot {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.snapshotLocked(st.feed(path))
}

func (st *Stream) snapshotLocked(f *stream) Snapshot {
	state := make(map[string]int64, len(f.state))
	for k, v := range f.state {
		state[k] = v
	}
	n := min(f.lag, len(f.history))
	for i := len(f.history) - 1; i >= len(f.history)-n; i-- {
		for j := len(f.history[i].old) - 1; j >= 0; j-- {
			o := f.history[i].old[j]
			if o.Value == 0 {
				delete(state, o.Key)
			} else {
				state[o.Key] = o.Value
			}
		}
	}
	at := f.head - uint64(n)
	return Snapshot{Stream: f.path, Epoch: f.epoch, Last: st.number(at), State: state, Checksum: Checksum(state)}
}

// number maps an update number to the stream's numbering (LinkedIDs: ids
// that grow by 2 or 4).
func (st *Stream) number(u uint64) uint64 {
	if st.cfg.json && st.cfg.shape == wspool.LinkedIDs {
		return linkID(u)
	}
	return u
}

func linkID(u uint64) uint64 { return 3*u - u%2 }

// updateAt returns the first update number whose number is at least n.
func (st *Stream) updateAt(n uint64) uint64 {
	if !(st.cfg.json && st.cfg.shape == wspool.LinkedIDs) {
		return n
	}
	u := n / 3
	for linkID(u) < n {
		u++
	}
	return u
}

func (st *Stream) feed(path string) *stream {
	f := st.feeds[path]
	if f == nil {
		f = &stream{path: path, epoch: 1, state: map[string]int64{}}
		st.feeds[path] = f
	}
	return f
}

func signal(w chan struct{}) {
	select {
	case w <- struct{}{}:
	default:
	}
}

func (st *Stream) wakeLocked(f *stream) {
	for _, sc := range f.conns {
		signal(sc.wake)
	}
}

// advanceLocked produces the stream's next update.
func (st *Stream) advanceLocked(f *stream) {
	f.head++
	var e entry
	if st.cfg.json {
		for range 1 + st.rng.IntN(2) {
			k := "k" + strconv.Itoa(st.rng.IntN(st.cfg.keys))
			v := int64(st.rng.IntN(100))
			e.old = append(e.old, Change{Key: k, Value: f.state[k]})
			e.changes = append(e.changes, Change{Key: k, Value: v})
			if v == 0 {
				delete(f.state, k)
			} else {
				f.state[k] = v
			}
		}
		e.sum = Checksum(f.state)
	}
	if f.skip > 0 {
		f.skip--
		e.skipped = true
	} else if f.corrupt > 0 {
		f.corrupt--
		e.corrupt = true
	}
	f.history = append(f.history, e)
	if len(f.history) > maxHistory {
		drop := len(f.history) - maxHistory/2
		f.history = append([]entry(nil), f.history[drop:]...)
		f.base += uint64(drop)
	}
}

func (st *Stream) produce() {
	defer close(st.stopped)
	if st.interval <= 0 {
		<-st.stop
		return
	}
	t := time.NewTicker(st.interval)
	defer t.Stop()
	for {
		select {
		case <-st.stop:
			return
		case <-t.C:
		}
		st.mu.Lock()
		for _, f := range st.feeds {
			st.advanceLocked(f)
			st.wakeLocked(f)
		}
		st.mu.Unlock()
	}
}

// Serve is the script that streams to c: pass it to NewServer. It returns
// when the connection ends or the Stream is closed.
func (st *Stream) Serve(c *Conn) {
	path := c.Request().URL.Path
	sc := &streamConn{c: c, wake: make(chan struct{}, 1), subbed: !st.cfg.sub}
	sc.wake <- struct{}{}
	st.mu.Lock()
	f := st.feed(path)
	sc.epoch = f.epoch
	sc.liveFrom = f.head + 1
	sc.next = sc.liveFrom
	q := c.Request().URL.Query()
	if from, err := strconv.ParseUint(q.Get("from"), 10, 64); err == nil && from > 0 {
		sc.next = st.updateAt(from)
		sc.resumed = true
		if e, err := strconv.ParseUint(q.Get("epoch"), 10, 64); err == nil && e != f.epoch {
			sc.next = 1 // the resume point is in an epoch that is over
		}
	}
	f.conns = append(f.conns, sc)
	st.mu.Unlock()
	defer func() {
		st.mu.Lock()
		f.conns = slices.DeleteFunc(f.conns, func(x *streamConn) bool { return x == sc })
		st.mu.Unlock()
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var readers sync.WaitGroup
	readers.Add(1)
	go func() {
		defer readers.Done()
		st.readClient(ctx, sc)
	}()
	defer readers.Wait()
	for {
		select {
		case <-c.Done():
			return
		case <-st.stop:
			return
		case <-sc.wake:
		}
		for {
			msg, data, ok := st.nextMessage(f, sc)
			if !ok {
				break
			}
			if c.SendText(msg) != nil {
				return
			}
			if data {
				st.mu.Lock()
				f.sent++
				st.mu.Unlock()
			}
		}
	}
}

// nextMessage returns the next message due to sc, if any, and whether it is
// data (not an ack).
func (st *Stream) nextMessage(f *stream, sc *streamConn) (msg string, data, ok bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(sc.acks) > 0 {
		a := sc.acks[0]
		sc.acks = sc.acks[1:]
		return a, false, true
	}
	if sc.paused || !sc.subbed {
		return "", false, false
	}
	if sc.next <= f.base { // trimmed from the history
		sc.next = f.base + 1
	}
	for sc.next <= f.head && sc.next >= sc.liveFrom && f.history[sc.next-f.base-1].skipped {
		sc.next++
	}
	if sc.next > f.head {
		return "", false, false
	}
	if !st.cfg.json {
		n := sc.next
		sc.next++
		return strconv.FormatUint(n, 10), true, true
	}
	first := sc.next
	last := first
	if st.cfg.shape == wspool.NumberRange {
		for last < f.head && last-first < 2 && !(last+1 >= sc.liveFrom && f.history[last+1-f.base-1].skipped) {
			last++
		}
	}
	u := Update{Stream: f.path, Epoch: sc.epoch, First: first, Last: last}
	for n := first; n <= last; n++ {
		e := f.history[n-f.base-1]
		for _, ch := range e.changes {
			if e.corrupt && n >= sc.liveFrom {
				ch.Value++
			}
			u.Changes = append(u.Changes, ch)
		}
		u.Checksum = e.sum
	}
	if st.cfg.shape == wspool.LinkedIDs {
		u.First, u.Last, u.Prev = linkID(first), linkID(first), linkID(first-1)
	} else {
		u.Prev = first - 1
	}
	sc.next = last + 1
	b, _ := json.Marshal(u)
	return string(b), true, true
}

// readClient reads what the client sends: subscriptions, and the message
// limit.
func (st *Stream) readClient(ctx context.Context, sc *streamConn) {
	path := sc.c.Request().URL.Path
	var recent []time.Time
	for {
		m, err := sc.c.readAt(ctx)
		if err != nil {
			return
		}
		data := m.data
		st.mu.Lock()
		f := st.feed(path)
		n, per := f.limitN, f.limitD
		st.mu.Unlock()
		if n <= 0 {
			n, per = st.cfg.limitN, st.cfg.limitPer
		}
		if n > 0 {
			now := time.Unix(0, m.at) // counted as it arrived
			i := 0
			for i < len(recent) && now.Sub(recent[i]) >= per {
				i++
			}
			recent = append(recent[i:], now)
			if len(recent) > n {
				st.mu.Lock()
				st.cuts = append(st.cuts, LimitClose{Path: path, Conn: sc.c, At: now, Count: len(recent), Limit: n, Per: per})
				st.mu.Unlock()
				sc.c.Close(1008, "too many requests")
				return
			}
		}
		if !st.cfg.sub {
			continue
		}
		var req struct {
			Op string `json:"op"`
			ID int64  `json:"id"`
		}
		if json.Unmarshal(data, &req) != nil || (req.Op != "subscribe" && req.Op != "unsubscribe") {
			continue
		}
		// The ack goes out through Serve, ahead of any data the
		// subscription lets through.
		st.mu.Lock()
		sc.acks = append(sc.acks, `{"op":"ack","id":`+strconv.FormatInt(req.ID, 10)+`}`)
		if req.Op == "subscribe" && !sc.subbed && !sc.resumed { // live from now
			f := st.feed(sc.c.Request().URL.Path)
			sc.liveFrom, sc.next = f.head+1, f.head+1
		}
		sc.subbed = req.Op == "subscribe"
		signal(sc.wake)
		st.mu.Unlock()
	}
}

// LimitMessages sets the message limit of the stream of path, in place of
// MessageLimit's: a connection whose client sends more than n messages
// within any window of per is closed with 1008 ("too many requests"), as
// exchanges do. It applies from the next message each connection sends;
// n <= 0 goes back to MessageLimit's (or none).
func (st *Stream) LimitMessages(path string, n int, per time.Duration) {
	st.mu.Lock()
	f := st.feed(path)
	f.limitN, f.limitD = n, per
	if n <= 0 {
		f.limitN, f.limitD = 0, 0
	}
	st.mu.Unlock()
}

// LimitClose is a connection a Stream closed with 1008 for the rate of what
// its client sent (MessageLimit, LimitMessages).
type LimitClose struct {
	Path  string    // the stream's path
	Conn  *Conn     // the connection closed
	At    time.Time // when the message over the limit arrived
	Count int       // messages within the window up to it, itself included
	Limit int       // the limit: Limit messages within any window of Per
	Per   time.Duration
}

// LimitCloses returns the connections closed for their message rate so far,
// oldest first.
func (st *Stream) LimitCloses() []LimitClose {
	st.mu.Lock()
	defer st.mu.Unlock()
	return slices.Clone(st.cuts)
}

// Sent returns how many data messages (not subscription acks) the stream of
// path has written to its connections so far, resumes and overlapping
// connections included.
func (st *Stream) Sent(path string) uint64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.feed(path).sent
}

// SnapshotURL returns the URL of the stream's snapshot endpoint: an HTTP GET
// answered with the JSON Snapshot of the stream of path (SnapshotLag and
// SnapshotDelay apply). The endpoint listens on 127.0.0.1 from the first
// call until Close.
func (st *Stream) SnapshotURL(path string) (string, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.hsrv == nil {
		h, err := startSnapshotServer(st)
		if err != nil {
			return "", err
		}
		st.hsrv = h
	}
	return "http://" + st.hsrv.addr + "/snapshot?stream=" + url.QueryEscape(path), nil
}

// SnapshotDelay makes the snapshot endpoint take the snapshot when a request
// arrives and answer it d later, so that the stream has moved on by then.
func (st *Stream) SnapshotDelay(d time.Duration) {
	st.mu.Lock()
	st.delay = d
	st.mu.Unlock()
}

// snapshotServer is the HTTP snapshot endpoint.
type snapshotServer struct {
	addr string
	srv  *http.Server
	done chan struct{}
}

func startSnapshotServer(st *Stream) (*snapshotServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &snapshotServer{addr: ln.Addr().String(), done: make(chan struct{})}
	h.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st.mu.Lock()
		snap := st.snapshotLocked(st.feed(r.URL.Query().Get("stream")))
		d := st.delay
		st.mu.Unlock()
		if d > 0 {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
			case <-r.Context().Done():
				return
			case <-st.stop:
				http.Error(w, "closed", http.StatusServiceUnavailable)
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(snap)
	})}
	go func() {
		defer close(h.done)
		_ = h.srv.Serve(ln)
	}()
	return h, nil
}

// close waits for the requests in flight (they end at once: the Stream is
// closed), then closes the listener and every connection.
func (h *snapshotServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), writeWait)
	defer cancel()
	_ = h.srv.Shutdown(ctx)
	_ = h.srv.Close()
	<-h.done
}

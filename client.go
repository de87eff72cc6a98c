package wspool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/redact"
)

// MessageType is the type of a data message.
type MessageType int

// The data message types (the values of gorilla/websocket's constants).
const (
	TextMessage   MessageType = websocket.TextMessage
	BinaryMessage MessageType = websocket.BinaryMessage
)

// String returns "text", "binary" or a numeric form.
func (t MessageType) String() string {
	switch t {
	case TextMessage:
		return "text"
	case BinaryMessage:
		return "binary"
	}
	return fmt.Sprintf("MessageType(%d)", int(t))
}

// Message is one data message of a feed.
//
// Data is only valid until the handler returns: its bytes are reused (a
// small message is delivered in place, in a socket read buffer that may go on
// to serve another feed). A handler that keeps the message (hands it to
// another goroutine, stores it) must keep a Clone.
type Message struct {
	Type MessageType
	Data []byte
	// Feed is the name of the feed the message arrived on, so that one
	// handler can serve several feeds.
	Feed string
	// Received is when the message's last byte was read from the socket (the
	// time of the read(2) that completed it, so a burst read at once shares
	// one time): latency measurements need no clock call in the handler.
	Received time.Time
	// ConnID numbers the connection the message arrived on: 1 for the
	// feed's first, counting every connection the feed made (reconnects,
	// rotations, standby connections). Conn.ID returns the same number.
	ConnID uint64
	// Decoded is what Sequence.Position decoded from Data to find the
	// message's number (Position.Decoded), handed on so that the handler
	// need not decode it again (Decoded and JSON use it); nil otherwise.
	Decoded any
}

// Clone returns a copy of m whose Data the caller owns.
func (m Message) Clone() Message {
	m.Data = append([]byte(nil), m.Data...)
	return m
}

// A Handler receives a feed's messages, one at a time, in arrival order; it
// is never called concurrently with itself. ctx ends when the feed is closed
// (with Drain, once the drain is over).
//
// Its error means one of two things. An error wrapping ErrReconnect asks for
// a resync: the connection is closed and redialled (see Client.Reconnect),
// and nothing is reported. Any other error (or a panic) is reported — as a
// *HandlerError through WithOnError, the logger and Stats.HandlerErrors —
// and the feed goes on with the next message: a handler error never drops
// the connection by itself.
//
// While the handler runs, the feed's reader waits: a slow handler slows only
// its own feed (and, through TCP, its server), never another feed, and does
// not count against liveness.
type Handler func(ctx context.Context, msg Message) error

// ClientFromContext returns the Client whose callback got ctx: the handler,
// OnConnect and the request func (WithRequestFunc) get a context that
// carries their feed, so that they can reach it (LastSequence for a resume
// point, say) without reading the *Client that Pool.Add returned, which a
// feed added to a running pool may dial before Add has returned. It returns
// nil for any other context.
func ClientFromContext(ctx context.Context) *Client {
	c, _ := ctx.Value(clientKey{}).(*Client)
	return c
}

type clientKey struct{}

// State is a feed's connection state.
type State int32

// The states of a feed.
const (
	StateIdle       State = iota // created, Run not called yet
	StateConnecting              // dialling, handshaking or running OnConnect
	StateConnected               // connected; messages are delivered
	StateBackingOff              // waiting before the next attempt
	StateClosed                  // Run has returned
)

// String returns the state's name as used in logs.
func (s State) String() string {
	switch s {
	case StateIdle:
		return "idle"
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateBackingOff:
		return "backing off"
	case StateClosed:
		return "closed"
	}
	return fmt.Sprintf("State(%d)", int32(s))
}

// StateChange describes one transition of a feed.
type StateChange struct {
	Feed     string
	From, To State
	// Err is the cause: why the connection or the attempt ended (for
	// BackingOff, Connecting after a lost connection, and Closed after a
	// permanent failure); nil for a clean transition.
	Err error
	// Attempt counts consecutive attempts without a stable connection.
	Attempt int
	// Wait is the backoff before the next attempt (BackingOff only).
	Wait time.Duration
	At   time.Time
}

// Client keeps one feed alive: it dials, runs OnConnect, delivers messages to
// its handler, and on any transient failure waits a jittered exponential
// backoff and dials again, until its context ends, Close is called, or a
// permanent failure. All methods are safe for concurrent use.
type Client struct {
	// Configuration: set by NewClient, read-only afterwards.
	name    string
	url     *url.URL
	handler Handler
	cfg     config
	dialer  *websocket.Dialer
	log     *slog.Logger

	// Lifecycle and the current connection: guarded by mu (see the lock
	// table in doc.go).
	mu    sync.Mutex
	state State
	// The feed's flags, packed beside state (an idle feed's memory); each
	// says who owns it.
	pooled    bool  // plain ws:// on unix: reads through internal/socket's pooled buffers; set by NewClient
	started   bool  // mu
	closed    bool  // mu
	finished  bool  // mu: Run is returning, no background goroutine may start
	draining  bool  // mu: Drain was called
	writing   bool  // mu: a goroutine holds the send path's writer role
	reached   bool  // the loop's: the current attempt reached StateConnected
	conn      *Conn // current connection while connected
	cancel    context.CancelFunc
	done      chan struct{} // closed when the feed has stopped (Done)
	lastErr   error
	lastErrAt time.Time
	runErr    error // Run's result, written before done is closed

	// The send path (send.go): guarded by mu.
	sendQ         []*sendReq // messages in line: behind the writer, or waiting for a connection
	sendQBuffered int        // of which waiting for a connection (counted against WithSendBuffer)
	sendQBytes    int        // their payload bytes
	dialedHost    string     // the host of the latest dial (the request func may rewrite it)

	// Delivery: the inbound queue (WithQueue; its own lock) and the
	// sequence state (WithSequence; its own lock).
	inq *inQueue
	seq seqState

	sb *standbySet // WithStandby (standby.go): set by begin; nil without

	// Background goroutines and timer callbacks (send flushers, send-buffer
	// expiry, the event dispatcher, the application heartbeat) that Run
	// waits for; they enter only before finished is set.
	bg     sync.WaitGroup
	events events // OnStateChange and OnError calls waiting for the dispatcher (callback.go)

	// Owned by the goroutine running the feed's loop (one at a time: the
	// loop moves from each connection's reader to the next, see
	// connectLoop), or set once by begin before any goroutine starts.
	spawn     func(func() error) // starts the feed's next goroutine
	feedCtx   context.Context    // Run's context, with the callback mark
	rp        retryPolicy
	failedRun int                // consecutive attempts that failed before reaching connected
	delivered chan struct{}      // closed when deliverQueued returns (WithQueue)
	qcancel   context.CancelFunc // ends the queue handler's context
	qdone     <-chan struct{}    // its Done: ends a reader's wait for queue room

	// Counters: atomics, written by whoever counts, read by Stats.
	stats clientCounters
	admit admitCounters // admission.go
}

type clientCounters struct {
	connects, disconnects, attempts   atomic.Int64
	msgsIn, bytesIn, msgsOut          atomic.Int64
	bytesOut, handlerErrs, replies    atomic.Int64
	sendFailed, rotations, duplicates atomic.Int64
	connSeq                           atomic.Uint64 // numbers connections (Conn.ID)
	gaps, gapMsgs, serverPings, won   atomic.Int64
	delivered, eventsDropped          atomic.Int64
	heldDropped                       atomic.Int64 // read during a failed attempt's OnConnect, never delivered
	primaryPings                      atomic.Int64 // the server pings of serverPings the primary connection answered
	rtt, srtt                         atomic.Int64
}

// dataCount is the number of data messages read so far, heartbeat replies excluded.
func (c *Client) dataCount() int64 {
	return c.stats.msgsIn.Load() - c.stats.replies.Load() - c.stats.primaryPings.Load()
}

// NewClient returns a Client for the ws:// or wss:// URL rawURL, delivering
// to h (nil discards messages). It validates the URL and every option and
// does no I/O; Run starts it.
func NewClient(rawURL string, h Handler, opts ...Option) (*Client, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	return newClient(rawURL, h, cfg)
}

func newClient(rawURL string, h Handler, cfg config) (*Client, error) {
	u, err := parseFeedURL(rawURL)
	if err != nil {
		return nil, err
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := cfg.checkStandby(u); err != nil {
		return nil, err
	}
	cfg.diag = nil
	if h == nil {
		h = func(context.Context, Message) error { return nil }
	}
	if cfg.permanent == nil {
		cfg.permanent = DefaultPermanent
	}
	name := cfg.name
	if name == "" {
		name = redact.URL(u)
	}
	logger := cfg.logger
	if logger == nil {
		logger = discardLogger
	}
	c := &Client{
		name:    name,
		url:     u,
		handler: h,
		cfg:     cfg,
		log:     logger,
		done:    make(chan struct{}),
	}
	if logger != discardLogger {
		c.log = logger.With("feed", name)
	}
	c.dialer = c.buildDialer()
	if cfg.queue != nil {
		c.inq = newInQueue(*cfg.queue)
	}
	return c, nil
}

// discardLogger is the logger of feeds without one (shared: it logs nothing,
// so it needs no "feed" attribute).
var discardLogger = slog.New(slog.DiscardHandler)

func parseFeedURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error includes the raw URL; do not echo what may hold secrets.
		return nil, fmt.Errorf("%w: cannot parse", ErrInvalidURL)
	}
	if err := checkFeedURL(u); err != nil {
		return nil, err
	}
	return u, nil
}

func checkFeedURL(u *url.URL) error {
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return fmt.Errorf("%w: scheme %q, want ws or wss", ErrInvalidURL, u.Scheme)
	}
	if u.Host == "" {
		return fmt.Errorf("%w: no host", ErrInvalidURL)
	}
	return nil
}

// Name returns the feed's name.
func (c *Client) Name() string { return c.name }

// State returns the feed's current state.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Run connects and keeps the feed connected until ctx ends or Close is
// called (it then sends a close frame, waits at most the close timeout, and
// returns nil), or until a failure is permanent or WithMaxAttempts gives up
// (it returns that error). Run may be called once.
//
// The first attempt runs on the caller's goroutine; each connection is then
// read on a goroutine of its own, started fresh for it, so that an idle feed
// holds one small goroutine stack (see bench/BENCHMARKS.md).
//
// Run returns once every goroutine, timer and socket of the feed is gone and
// every callback has returned (Done is closed then too).
func (c *Client) Run(ctx context.Context) error {
	ctx, err := c.begin(ctx, func(f func() error) { go f() })
	if err != nil {
		return err
	}
	c.connectLoop(ctx, nil)
	<-c.done
	return c.runErr
}

// Done returns a channel that is closed once the feed has stopped for good:
// Run has returned (or would return), every goroutine, timer and socket of
// the feed is gone and every callback has returned; for a Client closed
// before Run, once Close has failed its buffered sends. Close, Drain and
// Pool.Remove only start the stop; wait on Done (outside the feed's own
// callbacks) to know it is over.
func (c *Client) Done() <-chan struct{} { return c.done }

// begin marks the feed started under parent; spawn starts the feed's
// goroutines (a Pool runs them under its errgroup).
func (c *Client) begin(parent context.Context, spawn func(func() error)) (context.Context, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if c.started {
		return nil, ErrAlreadyRunning
	}
	c.started = true
	// The feed in the context is ClientFromContext's and the callback mark
	// (callback.go): every context the feed hands to user code derives from
	// this one.
	ctx, cancel := context.WithCancel(context.WithValue(parent, clientKey{}, c))
	c.cancel = cancel
	c.feedCtx = ctx
	c.spawn = spawn
	c.rp = newRetryPolicy(c)
	if c.inq != nil {
		// The queue's handler has a context of its own: it ends with the
		// feed, except that Drain keeps it until the queue is empty or
		// Drain's context ends.
		qctx, qcancel := context.WithCancel(context.WithoutCancel(ctx))
		c.qcancel = qcancel
		c.qdone = qctx.Done()
		context.AfterFunc(ctx, func() {
			c.mu.Lock()
			draining := c.draining
			c.mu.Unlock()
			if !draining {
				qcancel()
			}
		})
		c.delivered = make(chan struct{})
		go c.deliverQueued(qctx, c.delivered)
	}
	c.startLanes(ctx)
	return ctx, nil
}

// finish ends the feed with err (nil after a clean shutdown): Run returns it.
// It runs on the feed's loop goroutine once the last connection is gone.
func (c *Client) finish(err error) error {
	c.mu.Lock()
	c.finished = true // no Send is let in line from now on
	c.mu.Unlock()
	c.stopLanes()
	// Fail what waits before waiting for the queue's handler, which may
	// itself be waiting in Send.
	c.failQueued(ErrClosed)
	if c.inq != nil {
		// After a permanent failure the handler still gets what was queued;
		// on shutdown (ctx ended) the rest is discarded and counted as dropped.
		c.inq.Close()
		<-c.delivered
		c.qcancel()
	}
	c.bg.Wait()             // the event dispatcher included
	c.failQueued(ErrClosed) // a flusher may have put one back before it stopped
	c.setState(StateClosed, err, 0, 0)
	c.dispatch(false) // no dispatcher may start now: the last events, StateClosed among them, are delivered here
	if err != nil {
		c.log.Error("feed stopped", "err", err)
	}
	c.cancel()
	c.runErr = err
	close(c.done)
	return err
}

// bgEnter registers a background goroutine or timer callback; false once
// the feed has finished (it must then do nothing).
func (c *Client) bgEnter() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bgEnterLocked()
}

func (c *Client) bgEnterLocked() bool {
	if c.finished {
		return false
	}
	c.bg.Add(1)
	return true
}

func (c *Client) bgLeave() { c.bg.Done() }

// Drain stops the feed without throwing away what it has received: it
// stops delivering new messages (our close frame goes out, and what arrives
// after it is read but not delivered), lets the handler finish every message
// already queued (WithQueue), then closes the feed like Close. If ctx ends
// first, what is still queued is discarded (counted in Stats.Dropped). Sends
// still buffered fail with ErrClosed. On a feed that never ran, or has
// already stopped, it is Close.
//
// Like Close, Drain only starts the stop and returns nil at once: it never
// waits, so any callback, and any goroutine a callback starts, may call it.
// Done is closed (and Run returns) once the drain is over; Stats.Dropped then
// tells whether ctx cut it short.
func (c *Client) Drain(ctx context.Context) error {
	c.mu.Lock()
	if !c.started || c.finished || c.draining {
		c.mu.Unlock()
		return c.Close() // never ran: nothing received, nothing to wait for
	}
	c.draining = true
	qcancel := c.qcancel
	c.mu.Unlock()
	if qcancel != nil {
		stop := context.AfterFunc(ctx, qcancel) // the deadline: drop the rest
		go func() {
			<-c.done
			stop()
		}()
	}
	return c.Close()
}

// Reconnect ends the current connection and redials with the normal policy
// (the backoff applies as after any connection that ended, so a healthy
// connection is followed by a short, jittered wait), for a resync after a
// gap or when the upstream asks for one. The connection is closed with 1000;
// messages that arrive before the server's answer are still delivered. The
// state change to BackingOff carries an error wrapping ErrReconnect and
// cause. It returns ErrNotConnected if the feed has no connection. A handler
// can ask for the same by returning an error wrapping ErrReconnect. It never
// waits for the reconnect, so it may be called from any callback.
func (c *Client) Reconnect(cause error) error {
	c.mu.Lock()
	conn := c.liveConnLocked()
	c.mu.Unlock()
	if conn == nil {
		return ErrNotConnected
	}
	conn.requestEnd(cause)
	return nil
}

// requestEnd ends the connection at our request: our close frame goes out
// (from a goroutine of its own: it may wait up to the close timeout for the
// writer) and the reader reports reason when the connection ends.
func (cn *Conn) requestEnd(cause error) {
	reason := ErrReconnect
	if cause != nil && !errors.Is(cause, ErrReconnect) {
		reason = fmt.Errorf("%w: %w", ErrReconnect, cause)
	} else if cause != nil {
		reason = cause
	}
	if !cn.endReason.CompareAndSwap(nil, &reason) {
		return
	}
	c := cn.client
	if !c.bgEnter() {
		return // the feed is stopping: its shutdown closes the connection
	}
	go func() { // a goroutine Run waits for (bounded by the close timeout)
		defer c.bgLeave()
		cn.sendClose()
	}()
}

// Close stops the feed: it cancels Run, which sends a close frame (1000) on
// an open connection, waits at most the close timeout for the answer, and
// returns once the feed's goroutines and socket are gone. Close itself only
// starts that and returns nil at once, so every callback, and every goroutine
// a callback starts, may call it (as may anyone else); Done is closed, and Run
// returns, once the feed has stopped. It is idempotent, and a Client closed
// before Run never connects; messages waiting in its send buffer fail with
// ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	if !c.started {
		first := !c.closed
		if first {
			c.closed = true
			c.finished = true
			c.state = StateClosed
		}
		c.mu.Unlock()
		if first {
			c.failQueued(ErrClosed)
			go func() {
				c.bg.Wait() // send-buffer expiry callbacks already running
				close(c.done)
			}()
		}
		return nil
	}
	c.closed = true
	cancel := c.cancel
	c.mu.Unlock()
	cancel()
	return nil
}

// connectLoop is the reconnect loop. cause is why the previous connection or
// attempt ended (nil at the start). It dials until a connection is up and
// released, then returns nil: that connection's reader (a goroutine started
// at its handshake) goes on with this loop when the connection ends (see
// read.go). Or it finishes the feed (ctx ended, a permanent failure,
// attempts exhausted) and returns the feed's error. At any time one
// goroutine runs a feed's loop.
func (c *Client) connectLoop(ctx context.Context, cause error) error {
	for {
		if cause != nil {
			if stop, err := c.backOff(ctx, cause); stop {
				return c.finish(err)
			}
		}
		if ctx.Err() != nil {
			return c.finish(nil)
		}
		if c.inq != nil && c.cfg.queue.DrainBeforeReconnect && cause != nil {
			if !c.inq.WaitDrained(ctx) {
				return c.finish(nil)
			}
		}
		c.setState(StateConnecting, cause, c.rp.failures, 0)
		c.stats.attempts.Add(1)
		c.reached = false
		err := c.connect(ctx)
		if err == nil {
			return nil // the connection's reader goes on with this loop when it ends
		}
		c.failedRun++
		cause = err
	}
}

// backOff handles the end of a connection or attempt with err: it reports
// whether the feed stops (and with what error), or waits out the backoff.
func (c *Client) backOff(ctx context.Context, err error) (stop bool, final error) {
	if ctx.Err() != nil {
		return true, nil
	}
	c.recordError(err)
	if c.isPermanent(err) {
		return true, err
	}
	wait, ok := c.rp.next(err)
	if !ok {
		return true, fmt.Errorf("%w (%d): %w", ErrMaxAttempts, c.rp.failures, err)
	}
	c.setState(StateBackingOff, err, c.rp.failures, wait)
	// In a pool, a feed whose attempt failed before connecting is woken
	// early when another feed reaches the same host after failing to (see
	// wakeHub); the wake is jittered.
	var wake <-chan struct{}
	var he *HandshakeError
	c.mu.Lock()
	host := c.dialedHost
	c.mu.Unlock()
	if !c.reached && host != "" && !(errors.As(err, &he) && he.RetryAfter > 0) {
		wake = c.cfg.wake.register(host, c)
	}
	t := time.NewTimer(wait)
	start := time.Now()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-wake:
		// Spread the woken feeds over up to the initial backoff, never
		// longer than the wait they were in.
		left := wait - time.Since(start)
		if j := min(left, c.cfg.initialBO); j > 0 {
			t.Reset(rand.N(j))
			select {
			case <-ctx.Done():
			case <-t.C:
			}
		}
	}
	t.Stop()
	if wake != nil {
		c.cfg.wake.unregister(host, c)
	}
	return ctx.Err() != nil, nil
}

// isPermanent runs the permanent classification; a panic in a custom one is
// reported and the error treated as transient.
func (c *Client) isPermanent(err error) (perm bool) {
	defer c.recoverCallback("permanent func")
	return c.cfg.permanent(err)
}

// connect makes one connection and hands the feed to it: dial, OnConnect,
// published to Send (buffered sends are flushed in the background), state
// connected, then released (read.go): from then on the connection's reader
// goes on with the feed's loop, and the caller must not touch the loop's
// state.
func (c *Client) connect(ctx context.Context) error {
	conn, err := c.open(ctx, ctx, c.url, nil)
	if err != nil {
		return err
	}
	c.stats.connects.Add(1)
	c.mu.Lock()
	conn.start = time.Now() // read by Stats under mu
	c.mu.Unlock()
	conn.since = conn.start
	c.publish(conn)
	c.reached = true
	c.setState(StateConnected, nil, c.rp.failures, 0)
	if c.failedRun > 0 {
		// This feed failed to reach its host and now did: wake the host's
		// other feeds that are backing off after failing to.
		c.mu.Lock()
		host := c.dialedHost
		c.mu.Unlock()
		c.cfg.wake.wake(host)
	}
	c.failedRun = 0
	c.release(ctx, conn)
	return nil
}

// open dials base and runs OnConnect: a connection ready to serve (the
// feed's, a rotation's replacement, or standby connection l's), still held
// (read.go): the caller releases or aborts it. The connection's reader starts
// at the handshake with rctx (the feed's or the standby connections'
// context); ctx bounds the attempt. If OnConnect fails and the connection has
// ended meanwhile, the attempt fails with the connection's end cause (an
// upstream's close code included) rather than OnConnect's view of it. If
// OnConnect succeeds, the connection is returned even if it has ended since
// (the server closed it, a send broke it): released, it delivers what it
// received before its end, which its reader then reports like any
// connection's.
func (c *Client) open(ctx, rctx context.Context, base *url.URL, l *lane) (*Conn, error) {
	conn, err := c.dial(ctx, base, l)
	if err != nil {
		return nil, err
	}
	conn.lane = l
	octx := c.startReader(rctx, ctx, conn)
	err = c.runOnConnect(ctx, octx, conn)
	conn.hold.cancel(nil)
	if err != nil {
		if dead := conn.deadCause(); dead != nil {
			err = dead
		}
		c.abort(conn, ctx.Err() != nil)
		return nil, err
	}
	return conn, nil
}

// publish makes conn the connection Send writes on; messages already in line
// are written on it by a flusher, after OnConnect's and before later ones.
func (c *Client) publish(conn *Conn) {
	c.mu.Lock()
	c.conn = conn
	c.armRotationLocked(conn)
	if len(c.sendQ) > 0 && !c.writing {
		c.startFlusherLocked()
	}
	c.mu.Unlock()
}

// unpublish withdraws conn from Send once it ended; queued messages that
// cannot wait for the next connection fail.
func (c *Client) unpublish(conn *Conn) {
	c.mu.Lock()
	var failed []*sendReq
	if c.conn == conn {
		c.conn = nil
		if !c.writing && len(c.sendQ) > 0 {
			failed = c.dropUncarriedLocked()
		}
	}
	c.mu.Unlock()
	finishAll(failed, ErrNotConnected)
}

// connEnded releases the feed's connection that ended with cause (the last
// of its chain of rotations) and returns cause, for the loop.
func (c *Client) connEnded(conn *Conn, cause error) error {
	conn.close()
	c.unpublish(conn)
	c.stats.disconnects.Add(1)
	c.rp.connectionEnded(time.Since(conn.since), conn.gotData.Load(), conn.endReason.Load() != nil, cause)
	return cause
}

// handOff goes on with the replacement next once the rotated connection old
// has been read to its end: next's held messages are delivered here, after
// old's last one, and next's reader goes on with the feed.
func (c *Client) handOff(ctx context.Context, old, next *Conn) {
	old.close()
	c.stats.rotations.Add(1)
	c.stats.connects.Add(1)
	c.stats.disconnects.Add(1)
	next.since = old.since
	c.release(ctx, next)
}

// runOnConnect runs OnConnect with a context from hctx (which ends when the
// connection does) bounded by the handshake timeout; ctx is the attempt's.
func (c *Client) runOnConnect(ctx, hctx context.Context, conn *Conn) (err error) {
	if c.cfg.onConnect == nil {
		return nil
	}
	octx, cancel := context.WithTimeout(hctx, c.cfg.onConnectTO)
	defer cancel()
	// On shutdown, a send stuck on a peer that does not read must not hold
	// Close for the write timeout: the close handshake waits at most the
	// close timeout for the writer, then tears the connection down.
	stop := context.AfterFunc(ctx, func() { conn.sendClose() })
	defer stop()
	conn.inOnConnect.Store(true)
	defer conn.inOnConnect.Store(false)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("wspool: OnConnect: %w", c.panicked("OnConnect", r))
		}
	}()
	start := time.Now()
	if err := c.cfg.onConnect(octx, conn); err != nil {
		return fmt.Errorf("wspool: OnConnect: %w", err)
	}
	c.timing(TimingOnConnect, time.Since(start))
	return nil
}

// recoverCallback, deferred around a user callback whose panic needs no
// more than a report, recovers and reports it (see panicked).
func (c *Client) recoverCallback(name string) {
	if r := recover(); r != nil {
		c.panicked(name, r)
	}
}

// panicked reports a panic recovered from the user callback name ("" for
// the handler) as a *HandlerError with its stack, and returns it. Every
// callback's panic goes through here: recover() itself must be called in
// the deferred function of each call site.
func (c *Client) panicked(name string, r any) *HandlerError {
	he := &HandlerError{Feed: c.name, Callback: name, Panic: r, Stack: debug.Stack()}
	c.reportHandlerError(he)
	return he
}

func (c *Client) reportHandlerError(err *HandlerError) {
	c.stats.handlerErrs.Add(1)
	c.recordError(err)
	c.log.Warn("callback failed", "err", err)
	if c.cfg.onError != nil && err.Callback != "OnError" {
		c.post(event{err: err})
	}
}

// callOnError runs the OnError callback; a panic in it is logged and counted.
func (c *Client) callOnError(err error) {
	defer c.recoverCallback("OnError")
	c.cfg.onError(c.name, err)
}

func (c *Client) recordError(err error) {
	if err == nil {
		return
	}
	c.mu.Lock()
	c.lastErr, c.lastErrAt = err, time.Now()
	c.mu.Unlock()
}

func (c *Client) setState(to State, cause error, attempt int, wait time.Duration) {
	c.mu.Lock()
	from := c.state
	c.state = to
	c.mu.Unlock()
	ch := StateChange{Feed: c.name, From: from, To: to, Err: cause, Attempt: attempt, Wait: wait, At: time.Now()}
	switch {
	case to == StateConnected:
		c.log.Info("connected", "attempt", attempt)
	case to == StateBackingOff:
		c.log.Warn("disconnected", "err", cause, "attempt", attempt, "wait", wait)
	default:
		c.log.Debug("state", "from", from, "to", to, "err", cause)
	}
	if c.cfg.onState != nil {
		c.post(event{change: ch})
	}
}

func (c *Client) callOnState(ch StateChange) {
	defer c.recoverCallback("OnStateChange")
	c.cfg.onState(ch)
}

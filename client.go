package wspool

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
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
// Data is only valid until the handler returns: the buffer is reused for the
// next message. A handler that keeps the message (hands it to another
// goroutine, stores it) must keep a Clone.
type Message struct {
	Type MessageType
	Data []byte
	// Feed is the name of the feed the message arrived on, so that one
	// handler can serve several feeds.
	Feed string
}

// Clone returns a copy of m whose Data the caller owns.
func (m Message) Clone() Message {
	m.Data = append([]byte(nil), m.Data...)
	return m
}

// A Handler receives a feed's messages, one at a time, in arrival order; it
// is never called concurrently with itself. ctx ends when the feed is closed.
// An error or a panic is reported (WithOnError, the logger, Stats.HandlerErrors)
// and the feed goes on with the next message. While the handler runs, the
// feed's reader waits: a slow handler slows only its own feed (and, through
// TCP, its server), never another feed, and does not count against liveness.
type Handler func(ctx context.Context, msg Message) error

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
	name    string
	url     *url.URL
	handler Handler
	cfg     config
	dialer  *websocket.Dialer
	log     *slog.Logger

	mu         sync.Mutex
	state      State
	conn       *Conn // current connection while connected
	started    bool
	closed     bool
	finished   bool // Run has returned
	reached    bool // the current attempt reached StateConnected (loop goroutine)
	pooled     bool // reads are buffered from readBufs (see readbuf.go)
	cancel     context.CancelFunc
	done       chan struct{}
	lastErr    error
	lastErrAt  time.Time
	sendQ      []*sendReq // WithSendBuffer: messages waiting for a connection
	sendQBytes int
	inq        *inQueue // WithQueue
	runErr     error    // Run's result, written before done is closed

	// Used by the goroutine running the feed's loop (one at a time).
	spawn     func(func() error) // starts the feed's next goroutine
	rp        retryPolicy
	delivered chan struct{} // closed when deliverQueued returns (WithQueue)

	stats clientCounters
}

type clientCounters struct {
	connects, disconnects, attempts   atomic.Int64
	msgsIn, bytesIn, msgsOut          atomic.Int64
	bytesOut, handlerErrs, replies    atomic.Int64
	sendFailed, rotations, duplicates atomic.Int64
	delivered                         atomic.Int64
	rtt, srtt                         atomic.Int64
}

// dataCount is the number of data messages read so far, heartbeat replies excluded.
func (c *Client) dataCount() int64 { return c.stats.msgsIn.Load() - c.stats.replies.Load() }

// NewClient returns a Client for the ws:// or wss:// URL rawURL, delivering
// to h (nil discards messages). It validates the URL and every option and
// does no I/O; Run starts it.
func NewClient(rawURL string, h Handler, opts ...Option) (*Client, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if po := cfg.poolOnlyGiven(); len(po) > 0 {
		cfg.errorf("%s applies only to a Pool", strings.Join(po, ", "))
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
	cfg.diag = nil
	if h == nil {
		h = func(context.Context, Message) error { return nil }
	}
	if cfg.permanent == nil {
		cfg.permanent = DefaultPermanent
	}
	name := cfg.name
	if name == "" {
		name = redactURL(u)
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
func (c *Client) Run(ctx context.Context) error {
	ctx, err := c.begin(ctx, func(f func() error) { go f() })
	if err != nil {
		return err
	}
	c.connectLoop(ctx, nil)
	<-c.done
	return c.runErr
}

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
	ctx, cancel := context.WithCancel(parent)
	c.cancel = cancel
	c.spawn = spawn
	c.rp = newRetryPolicy(&c.cfg)
	if c.inq != nil {
		c.delivered = make(chan struct{})
		go c.deliverQueued(ctx, c.delivered)
	}
	return ctx, nil
}

// finish ends the feed with err (nil after a clean shutdown): Run returns it.
func (c *Client) finish(err error) error {
	if c.inq != nil {
		// After a permanent failure the handler still gets what was queued;
		// on shutdown (ctx ended) the rest is discarded and counted as dropped.
		c.inq.close()
		<-c.delivered
	}
	c.mu.Lock()
	c.finished = true
	c.mu.Unlock()
	c.failBuffered(ErrClosed)
	c.setState(StateClosed, err, 0, 0)
	if err != nil {
		c.log.Error("feed stopped", "err", err)
	}
	c.cancel()
	c.runErr = err
	close(c.done)
	return err
}

// Close stops the feed: it cancels Run, sends a close frame (1000) on an open
// connection, and returns once Run's goroutines and socket are gone. It is
// idempotent, and a Client closed before Run never connects.
func (c *Client) Close() error {
	c.mu.Lock()
	if !c.started {
		if !c.closed {
			c.closed = true
			c.state = StateClosed
		}
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	cancel := c.cancel
	c.mu.Unlock()
	cancel()
	<-c.done
	return nil
}

// connectLoop is the reconnect loop. cause is why the previous connection or
// attempt ended (nil at the start). It dials until a connection is up, then
// hands that connection to a fresh goroutine (which reads it and, when it
// ends, continues this loop) and returns nil; or it finishes the feed (ctx
// ended, a permanent failure, attempts exhausted) and returns the feed's
// error. At any time one goroutine runs a feed's loop.
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
		if c.inq != nil && c.inq.cfg.DrainBeforeReconnect && cause != nil {
			if !c.inq.waitDrained(ctx) {
				return c.finish(nil)
			}
		}
		c.setState(StateConnecting, cause, c.rp.failures, 0)
		c.stats.attempts.Add(1)
		c.reached = false
		conn, err := c.connect(ctx)
		if err == nil {
			c.spawn(func() error {
				// The ended connection is not kept while the loop goes on
				// (a long backoff) on this goroutine.
				cn := conn
				conn = nil
				return c.connectLoop(ctx, c.serveConn(ctx, cn))
			})
			return nil
		}
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
	if c.cfg.permanent(err) {
		return true, err
	}
	wait, ok := c.rp.next(err)
	if !ok {
		return true, fmt.Errorf("%w (%d): %w", ErrMaxAttempts, c.rp.failures, err)
	}
	c.setState(StateBackingOff, err, c.rp.failures, wait)
	// In a pool, a feed whose attempt failed before connecting is woken
	// early when another feed reaches the same host (see wakeHub).
	var wake <-chan struct{}
	var he *HandshakeError
	if !c.reached && !(errors.As(err, &he) && he.RetryAfter > 0) {
		wake = c.cfg.wake.register(c.url.Host, c)
	}
	t := time.NewTimer(wait)
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-wake:
	}
	t.Stop()
	if wake != nil {
		c.cfg.wake.unregister(c.url.Host, c)
	}
	return ctx.Err() != nil, nil
}

// connect makes one connection ready to serve: dial, OnConnect, buffered
// sends, published to Send, state connected.
func (c *Client) connect(ctx context.Context) (*Conn, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.runOnConnect(ctx, conn); err != nil {
		if ctx.Err() != nil {
			conn.closeHandshake(true)
		}
		conn.close()
		return nil, err
	}
	// Buffered sends go out after OnConnect (subscriptions first) and before
	// the connection is published to Send.
	if err := c.flushAndPublish(ctx, conn); err != nil {
		conn.close()
		return nil, err
	}
	c.stats.connects.Add(1)
	c.mu.Lock()
	conn.start = time.Now() // read by Stats under mu
	c.mu.Unlock()
	c.reached = true
	c.setState(StateConnected, nil, c.rp.failures, 0)
	if c.rp.failures > 0 {
		c.cfg.wake.wake(c.url.Host) // the host is back: wake its other feeds
	}
	return conn, nil
}

// serveConn reads a connection (and its replacements after rotations) to its
// end, releases it, and returns why it ended.
func (c *Client) serveConn(ctx context.Context, conn *Conn) error {
	start := conn.start
	var err error
	for {
		err = c.serve(ctx, conn)
		next := conn.next.Load()
		if next == nil {
			break
		}
		// Rotated: the old connection is drained; go on with the new one.
		conn.close()
		conn = next
		c.stats.rotations.Add(1)
		c.stats.connects.Add(1)
		c.stats.disconnects.Add(1)
		if ctx.Err() != nil {
			conn.closeHandshake(true)
			err = nil
			break
		}
	}

	c.mu.Lock()
	if c.conn == conn {
		c.conn = nil
	}
	c.mu.Unlock()
	c.stats.disconnects.Add(1)
	c.rp.connectionEnded(time.Since(start), conn.gotData.Load())
	conn.close()
	return err
}

func (c *Client) runOnConnect(ctx context.Context, conn *Conn) (err error) {
	if c.cfg.onConnect == nil {
		return nil
	}
	octx, cancel := context.WithTimeout(ctx, c.cfg.handshakeTO)
	defer cancel()
	conn.inOnConnect.Store(true)
	defer conn.inOnConnect.Store(false)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("wspool: OnConnect panicked: %v", r)
		}
	}()
	if err := c.cfg.onConnect(octx, conn); err != nil {
		return fmt.Errorf("wspool: OnConnect: %w", err)
	}
	return nil
}

// serve reads and delivers until the connection ends; it returns the cause.
func (c *Client) serve(ctx context.Context, conn *Conn) error {
	hb := startHeartbeat(conn)
	// On shutdown: send our close frame and give the server closeTimeout to
	// answer; the reader below sees the answer (or the deadline) and returns.
	closerDone := make(chan struct{})
	stopCloser := context.AfterFunc(ctx, func() {
		defer close(closerDone)
		conn.stopping.Store(true)
		conn.closeHandshake(false)
	})
	rot := c.startRotator(ctx, conn)
	defer func() {
		if !stopCloser() {
			<-closerDone
		}
		rot.stop()
		if conn.next.Load() == nil {
			conn.close() // unblocks heartbeat writes before stop waits for them
		}
		hb.stop()
	}()
	filterDups := conn.afterRotation.Load() && c.cfg.dupFilter != nil

	var isReply func(Message) bool
	dropReplies := false
	if hbc := c.cfg.heartbeat; hbc != nil {
		isReply, dropReplies = hbc.IsReply, hbc.DropReplies
	}
	var buf []byte
	for {
		typ, r, err := conn.ws.NextReader()
		if err != nil {
			return conn.causeOf(err)
		}
		buf, err = readAll(r, buf[:0])
		if err != nil {
			return conn.causeOf(err)
		}
		msg := Message{Type: MessageType(typ), Data: buf, Feed: c.name}
		deliver := !conn.stopping.Load() // shutting down: drain until the close frame
		if isReply != nil && isReply(msg) {
			c.stats.replies.Add(1)
			deliver = deliver && !dropReplies
		} else {
			if filterDups {
				if c.cfg.dupFilter(msg) {
					c.stats.duplicates.Add(1)
					deliver = false
				} else {
					filterDups = false
				}
			}
			if !conn.gotData.Load() {
				conn.gotData.Store(true)
			}
		}
		if deliver {
			conn.delivering.Store(true)
			if c.inq != nil {
				c.enqueue(ctx, conn, msg)
			} else {
				c.deliver(ctx, msg)
			}
			conn.delivering.Store(false)
		}
		// Counted after delivery: the heartbeat reads msgsIn as proof that the
		// reader made progress, including a delivery that held it back.
		c.stats.bytesIn.Add(int64(len(buf)))
		c.stats.msgsIn.Add(1)
		if cap(buf) > maxKeptReadBuffer {
			buf = nil // do not pin one huge message's buffer for the life of the feed
		}
	}
}

// maxKeptReadBuffer is the largest read buffer kept between messages.
const maxKeptReadBuffer = 256 << 10

// readAll appends everything from r to buf, growing it as needed.
func readAll(r io.Reader, buf []byte) ([]byte, error) {
	if cap(buf) == 0 {
		buf = make([]byte, 0, 512)
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			if err == io.EOF {
				return buf, nil
			}
			return buf, err
		}
	}
}

// enqueue hands a copy of msg to the queue; under Block it waits for room
// (TCP then pushes back on the server) until shutdown or the connection dies.
func (c *Client) enqueue(ctx context.Context, conn *Conn, msg Message) {
	msg.Data = append([]byte(nil), msg.Data...)
	_, started := c.inq.push(msg, ctx.Done())
	if started {
		err := fmt.Errorf("%w: queue full (%d messages), dropping (%v)", ErrSlowConsumer, c.inq.cfg.Messages, c.inq.cfg.Policy)
		c.recordError(err)
		c.log.Warn("slow consumer", "err", err)
		if c.cfg.onError != nil {
			c.cfg.onError(c.name, err)
		}
	}
}

// deliverQueued runs the handler on queued messages until the queue is
// closed or ctx ends; what is left then is counted as dropped.
func (c *Client) deliverQueued(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	for {
		m, ok := c.inq.pop(ctx)
		if !ok {
			c.inq.discardAll()
			return
		}
		c.deliver(ctx, m)
		c.inq.delivered()
	}
}

func (c *Client) deliver(ctx context.Context, msg Message) {
	defer func() { // one deferred call per message: count, and recover a panic
		c.stats.delivered.Add(1)
		if r := recover(); r != nil {
			c.reportHandlerError(&HandlerError{Feed: c.name, Panic: r, Stack: debug.Stack()})
		}
	}()
	if err := c.handler(ctx, msg); err != nil {
		c.reportHandlerError(&HandlerError{Feed: c.name, Err: err})
	}
}

func (c *Client) reportHandlerError(err *HandlerError) {
	c.stats.handlerErrs.Add(1)
	c.recordError(err)
	c.log.Warn("handler failed", "err", err)
	if c.cfg.onError != nil {
		c.cfg.onError(c.name, err)
	}
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
		c.cfg.onState(ch)
	}
}

// dial makes one connection attempt, bounded by the handshake timeout and the
// pool's dial limit.
func (c *Client) dial(ctx context.Context) (*Conn, error) {
	u := *c.url
	h := c.cfg.header.Clone()
	if h == nil {
		h = http.Header{}
	}
	if c.cfg.requestFunc != nil {
		if err := c.cfg.requestFunc(ctx, &u, h); err != nil {
			return nil, fmt.Errorf("wspool: request func: %w", err)
		}
		if err := checkFeedURL(&u); err != nil {
			return nil, err
		}
		// gorilla parses the URL's string again; catch what it would reject
		// here, without quoting the URL (its query may hold secrets).
		if _, err := url.Parse(u.String()); err != nil {
			return nil, fmt.Errorf("%w: the request func produced a URL that does not parse", ErrInvalidURL)
		}
	}
	// gorilla rejects userinfo in a ws URL: send it as HTTP Basic auth, the
	// way browsers and net/http treat it, unless Authorization is already set.
	if u.User != nil {
		if h.Get("Authorization") == "" {
			pass, _ := u.User.Password()
			h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pass)))
		}
		u.User = nil
	}
	if err := c.cfg.dialSem.acquire(ctx); err != nil {
		return nil, err
	}
	defer c.cfg.dialSem.release()
	dctx, cancel := context.WithTimeout(ctx, c.cfg.handshakeTO)
	defer cancel()
	slot := &dialSlot{client: c}
	dctx = context.WithValue(dctx, dialSlotKey{}, slot)
	// gorilla bounds the upgrade by the context's deadline but does not watch
	// its cancellation: on shutdown, cut a stuck handshake at once.
	stopCut := context.AfterFunc(ctx, func() {
		if nc := slot.conn.Load(); nc != nil {
			_ = nc.SetDeadline(time.Now())
		}
	})
	ws, resp, err := c.dialer.DialContext(dctx, u.String(), h)
	stopCut()
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusSwitchingProtocols {
			return nil, fmt.Errorf("wspool: handshake: invalid 101 response (Upgrade, Connection or Sec-WebSocket-Accept wrong): %w", err)
		}
		if resp != nil && errors.Is(err, websocket.ErrBadHandshake) {
			he := &HandshakeError{StatusCode: resp.StatusCode, Err: err}
			if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
				he.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
			}
			return nil, he
		}
		// The socket's deadline (the context's) may fire just before the
		// context itself: judge by the clock.
		if dl, ok := dctx.Deadline(); ok && ctx.Err() == nil && !time.Now().Before(dl) {
			return nil, fmt.Errorf("wspool: dial: handshake timeout (%v): %w: %w", c.cfg.handshakeTO, context.DeadlineExceeded, err)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			// A *url.Error quotes the whole URL; keep the reason only.
			return nil, fmt.Errorf("wspool: dial: %s %s: %w", ue.Op, redactURL(&u), ue.Err)
		}
		return nil, fmt.Errorf("wspool: dial: %w", shortError(err))
	}
	tc := slot.conn.Load()
	if tc == nil {
		// A custom dial path bypassed our wrapper; liveness still works from
		// complete frames, just without byte-level progress.
		tc = &trackedConn{Conn: ws.UnderlyingConn()}
	}
	tc.handshook.Store(true)
	ws.SetReadLimit(c.cfg.readLimit)
	return newConn(c, ws, tc), nil
}

type dialSlotKey struct{}

// dialSlot carries the dialing feed into the dial functions and its tracked
// socket out of the dialer.
type dialSlot struct {
	client *Client
	conn   atomic.Pointer[trackedConn]
}

// sharedDialers serve every feed with neither WithDialer nor
// WithSubprotocols: plain ws:// (pooled reads) and the rest. The dial
// functions find the feed in the dial's context, so feeds can share them.
var sharedDialers [2]struct {
	once sync.Once
	d    *websocket.Dialer
}

// buildDialer returns the feed's dialer: a copy of the configured one whose
// dial functions give every socket keepalive tuning and byte-level liveness
// tracking (and pooled reads for plain ws:// on unix).
func (c *Client) buildDialer() *websocket.Dialer {
	c.pooled = pooledReadsSupported && c.url.Scheme == "ws" && (c.cfg.dialer == nil || c.cfg.dialer.ReadBufferSize == 0)
	if c.cfg.dialer != nil || c.cfg.subprotocols != nil {
		return newDialer(c.cfg.dialer, c.cfg.subprotocols, c.pooled)
	}
	i := 0
	if c.pooled {
		i = 1
	}
	sd := &sharedDialers[i]
	sd.once.Do(func() { sd.d = newDialer(nil, nil, c.pooled) })
	return sd.d
}

func newDialer(base *websocket.Dialer, subprotocols []string, pooled bool) *websocket.Dialer {
	var d websocket.Dialer
	if base != nil {
		d = *base
	} else {
		d = *websocket.DefaultDialer
	}
	dial := d.NetDialContext
	if dial == nil && d.NetDial != nil {
		nd := d.NetDial
		dial = func(_ context.Context, network, addr string) (net.Conn, error) { return nd(network, addr) }
	}
	if dial == nil {
		nd := &net.Dialer{KeepAlive: -1} // keepalive is applied by tuneSocket
		dial = nd.DialContext
	}
	d.NetDial = nil
	d.NetDialContext = wrapDial(dial)
	if d.NetDialTLSContext != nil {
		d.NetDialTLSContext = wrapDial(d.NetDialTLSContext)
	}
	d.HandshakeTimeout = 0 // bounded by our own context
	if pooled {
		d.ReadBufferSize = pooledGorillaBuffer
	}
	if d.WriteBufferPool == nil && d.WriteBufferSize == 0 {
		d.WriteBufferPool = sharedWriteBuffers
	}
	if subprotocols != nil {
		d.Subprotocols = subprotocols
	}
	return &d
}

func wrapDial(base func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := base(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		slot, _ := ctx.Value(dialSlotKey{}).(*dialSlot)
		if slot == nil {
			return nc, nil // not our dial (cannot happen: dialers are not exported)
		}
		c := slot.client
		if err := tuneSocket(nc, c.cfg.keepAlive); err != nil {
			c.log.Warn("tcp keepalive not applied", "err", err)
		}
		tc := &trackedConn{Conn: nc}
		if c.pooled {
			tc.enablePooledReads()
		}
		slot.conn.Store(tc)
		return tc, nil
	}
}

// sharedWriteBuffers lends write buffers to connections only while they
// write, so an idle feed holds none (gorilla's default buffer size).
var sharedWriteBuffers = &sync.Pool{}

// trackedConn counts bytes read from the socket: any inbound byte is proof the
// peer is alive, even in the middle of a large, slow message.
type trackedConn struct {
	net.Conn
	bytesIn   atomic.Int64
	handshook atomic.Bool // the upgrade is done: no more cap on bytes read

	rc   syscall.RawConn // set when reads are pooled (readbuf.go)
	pool pooledState

	hsw *[]byte // handshake writes not yet sent (borrowed from handshakeBufs)
}

// handshakeBufs hold what a dial writes (the upgrade request, a proxy's
// CONNECT, TLS records) until it next reads. net/http's Request.Write would
// otherwise allocate a 4 KiB bufio.Writer per dial, which at 10,000 feeds
// coming back from an outage is 40 MB of garbage.
var handshakeBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, 4096)
	return &b
}}

// Write sends p; before the upgrade completes it buffers p until the next
// Read (every handshake step that writes then waits for an answer).
func (t *trackedConn) Write(p []byte) (int, error) {
	if t.handshook.Load() {
		return t.Conn.Write(p)
	}
	b := t.pending()
	*b = append(*b, p...)
	return len(p), nil
}

// pending returns the buffer of handshake writes, borrowing one on first use.
func (t *trackedConn) pending() *[]byte {
	if t.hsw == nil {
		t.hsw = handshakeBufs.Get().(*[]byte)
	}
	return t.hsw
}

// WriteByte and WriteString make trackedConn an io.ByteWriter and
// io.StringWriter like the bufio.Writer net/http would otherwise wrap it in,
// so that the upgrade request goes into the handshake buffer piece by piece
// without a copy per piece.
func (t *trackedConn) WriteByte(b byte) error {
	_, err := t.Write([]byte{b})
	return err
}

func (t *trackedConn) WriteString(s string) (int, error) {
	if t.handshook.Load() {
		return t.Conn.Write([]byte(s))
	}
	b := t.pending()
	*b = append(*b, s...)
	return len(s), nil
}

// flushHandshake sends buffered handshake writes.
func (t *trackedConn) flushHandshake() error {
	b := t.hsw
	if b == nil {
		return nil
	}
	t.hsw = nil
	_, err := t.Conn.Write(*b)
	if cap(*b) <= 64<<10 {
		*b = (*b)[:0]
		handshakeBufs.Put(b)
	}
	return err
}

// maxHandshakeBytes bounds what a server may send before the upgrade
// completes (an endless header line would otherwise be buffered until the
// handshake timeout).
const maxHandshakeBytes = 1 << 20

// errHandshakeTooLarge is returned when the handshake response exceeds maxHandshakeBytes.
var errHandshakeTooLarge = errors.New("wspool: handshake response over 1 MiB")

// Read reads from the socket and counts the bytes.
func (t *trackedConn) Read(p []byte) (int, error) {
	if t.hsw != nil {
		if err := t.flushHandshake(); err != nil {
			return 0, err
		}
	}
	var n int
	var err error
	if t.rc != nil {
		n, err = t.pooledRead(p)
	} else {
		n, err = t.Conn.Read(p)
	}
	if n > 0 {
		if t.bytesIn.Add(int64(n)) > maxHandshakeBytes && !t.handshook.Load() {
			return n, errHandshakeTooLarge
		}
	}
	return n, err
}

// NetConn returns the wrapped connection.
func (t *trackedConn) NetConn() net.Conn { return t.Conn }

// Conn is one live connection of a feed. The OnConnect hook gets it to
// subscribe, authenticate or resume; it is valid until the connection ends.
type Conn struct {
	client *Client
	ws     *websocket.Conn
	nc     *trackedConn

	wlock chan struct{} // one writer at a time, waitable with a context
	dead  chan struct{} // closed when the connection is torn down
	once  sync.Once
	cause error // why it was torn down; written before dead is closed

	inOnConnect   atomic.Bool // ReadMessage is allowed
	closing       atomic.Bool // our close frame is being or has been sent
	stopping      atomic.Bool // the feed is shutting down: deliver nothing more
	delivering    atomic.Bool // the reader is held back by the handler
	closeOnce     sync.Once
	gotData       atomic.Bool          // a data message (not a heartbeat reply) arrived
	next          atomic.Pointer[Conn] // the replacement after a rotation
	afterRotation atomic.Bool          // this connection replaced a rotated one
	pingSeq       atomic.Uint64
	pingSent      atomic.Int64
	start         time.Time // when it reached the connected state (written under client.mu)
}

func newConn(c *Client, ws *websocket.Conn, nc *trackedConn) *Conn {
	return &Conn{client: c, ws: ws, nc: nc, wlock: make(chan struct{}, 1), dead: make(chan struct{})}
}

// Feed returns the name of the feed the connection belongs to.
func (cn *Conn) Feed() string { return cn.client.name }

// Subprotocol returns the subprotocol the server chose, if any.
func (cn *Conn) Subprotocol() string { return cn.ws.Subprotocol() }

// Send writes one message on this connection; see Client.Send.
func (cn *Conn) Send(ctx context.Context, typ MessageType, data []byte) error {
	if err := checkType(typ); err != nil {
		return err
	}
	select {
	case cn.wlock <- struct{}{}:
	case <-cn.dead:
		return ErrNotConnected
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-cn.wlock }()
	select {
	case <-cn.dead:
		return ErrNotConnected
	default:
	}
	if cn.closing.Load() {
		return ErrClosed
	}
	if err := cn.ws.SetWriteDeadline(time.Now().Add(cn.client.cfg.writeTimeout)); err != nil {
		cn.kill(err)
		return fmt.Errorf("wspool: send: %w", err)
	}
	if err := cn.ws.WriteMessage(int(typ), data); err != nil {
		err = fmt.Errorf("wspool: send: %w", err)
		cn.kill(err)
		return err
	}
	cn.client.stats.msgsOut.Add(1)
	cn.client.stats.bytesOut.Add(int64(len(data)))
	return nil
}

// writePing writes a ping frame unless another message is being written
// (then it returns false). It goes through the connection's writer like a
// data message, not gorilla's WriteControl, which allocates a frame buffer
// and a timer per call: at 10,000 idle feeds that was most of the garbage an
// idle pool makes.
func (cn *Conn) writePing(payload []byte) (sent bool, err error) {
	select {
	case cn.wlock <- struct{}{}:
	default:
		return false, nil
	}
	defer func() { <-cn.wlock }()
	if cn.closing.Load() {
		return true, nil // our close frame is out: no more pings
	}
	if err := cn.ws.SetWriteDeadline(time.Now().Add(cn.client.cfg.writeTimeout)); err != nil {
		return false, err
	}
	return true, cn.ws.WriteMessage(websocket.PingMessage, payload)
}

// ReadMessage reads the next message directly from the connection, for
// request-reply exchanges inside OnConnect (e.g. wait for "authenticated").
// Messages read this way are not passed to the handler. It may only be called
// from OnConnect; ctx bounds the wait.
func (cn *Conn) ReadMessage(ctx context.Context) (Message, error) {
	if !cn.inOnConnect.Load() {
		return Message{}, errors.New("wspool: Conn.ReadMessage called outside OnConnect")
	}
	// When ctx ends the OnConnect attempt fails anyway, so a read deadline in
	// the past (which leaves the connection unusable) is the right interrupt.
	stop := context.AfterFunc(ctx, func() { _ = cn.ws.SetReadDeadline(time.Now()) })
	typ, data, err := cn.ws.ReadMessage()
	stop()
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return Message{}, fmt.Errorf("wspool: read: %w", err)
	}
	cn.client.stats.msgsIn.Add(1)
	cn.client.stats.bytesIn.Add(int64(len(data)))
	return Message{Type: MessageType(typ), Data: data, Feed: cn.client.name}, nil
}

// kill tears the connection down with cause; the first cause wins. It
// unblocks the reader and any writer.
func (cn *Conn) kill(cause error) {
	cn.once.Do(func() {
		cn.cause = cause
		close(cn.dead)
		_ = cn.nc.Close()
	})
}

// causeOf turns the reader's error into the connection's end cause: the reason
// the connection was killed if it was, else the read error.
func (cn *Conn) causeOf(readErr error) error {
	select {
	case <-cn.dead:
		if cn.cause != nil {
			return cn.cause
		}
	default:
	}
	if errors.Is(readErr, websocket.ErrReadLimit) {
		return fmt.Errorf("wspool: message over read limit (%d bytes; closed with 1009 where the frame allowed): %w", cn.client.cfg.readLimit, readErr)
	}
	return fmt.Errorf("wspool: read: %w", readErr)
}

// closeHandshake sends a close frame (1000) and gives the server the close
// timeout to answer. With drain it reads the answer itself (no reader is
// running); otherwise the running reader sees it.
func (cn *Conn) closeHandshake(drain bool) {
	cn.closeOnce.Do(func() {
		cn.closing.Store(true)
		// The close timeout bounds the whole handshake, our write included
		// (a peer that stopped reading must not stretch it to the write timeout).
		deadline := time.Now().Add(cn.client.cfg.closeTimeout)
		msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
		if err := cn.ws.WriteControl(websocket.CloseMessage, msg, deadline); err != nil {
			cn.kill(ErrClosed)
			return
		}
		_ = cn.ws.SetReadDeadline(deadline)
		if drain {
			for {
				if _, _, err := cn.ws.NextReader(); err != nil {
					return
				}
			}
		}
	})
}

// close releases the socket.
func (cn *Conn) close() { cn.kill(ErrConnectionClosed) }

// shortError keeps a hostile server's bytes quoted in an error (an endless
// header line, say) from bloating logs and Stats: the message is cut at
// maxErrorText; errors.Is/As still see the original.
func shortError(err error) error {
	if len(err.Error()) <= maxErrorText {
		return err
	}
	return &truncatedError{err}
}

const maxErrorText = 512

type truncatedError struct{ err error }

func (e *truncatedError) Error() string {
	msg := e.err.Error()
	return fmt.Sprintf("%s… (%d bytes)", strings.ToValidUTF8(msg[:maxErrorText], ""), len(msg))
}

func (e *truncatedError) Unwrap() error { return e.err }

// redactURL renders u for names and logs: no userinfo, no fragment, and
// secret-looking query values replaced.
func redactURL(u *url.URL) string {
	r := *u
	r.User = nil
	r.Fragment = ""
	r.RawFragment = ""
	if r.RawQuery != "" {
		q, err := url.ParseQuery(r.RawQuery)
		if err != nil {
			r.RawQuery = "REDACTED"
		} else {
			for k := range q {
				if secretKey(k) {
					q[k] = []string{"REDACTED"}
				}
			}
			r.RawQuery = q.Encode()
		}
	}
	return r.String()
}

var secretWords = []string{"token", "key", "secret", "pass", "pwd", "auth", "sig", "session", "credential", "jwt", "bearer", "cookie", "code"}

func secretKey(k string) bool {
	k = strings.ToLower(k)
	for _, w := range secretWords {
		if strings.Contains(k, w) {
			return true
		}
	}
	return false
}

package wspool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"reflect"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/admission"
)

// Defaults. Each is documented with its reason in the README's defaults table.
const (
	// DefaultHandshakeTimeout bounds the TCP dial, TLS and HTTP upgrade of one attempt.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultOnConnectTimeout bounds one run of the OnConnect hook.
	DefaultOnConnectTimeout = 10 * time.Second
	// DefaultReadLimit is the largest message accepted; a larger one closes the
	// connection with 1009 (message too big) and is reported.
	DefaultReadLimit = 16 << 20
	// DefaultWriteTimeout bounds one write to the socket (Send, ping, close frame).
	DefaultWriteTimeout = 10 * time.Second
	// DefaultCloseTimeout bounds how long shutdown waits for the server to answer
	// our close frame.
	DefaultCloseTimeout = 5 * time.Second
	// DefaultInitialBackoff is the mean first wait after a failure.
	DefaultInitialBackoff = 500 * time.Millisecond
	// DefaultMaxBackoff caps the mean wait between attempts.
	DefaultMaxBackoff = 30 * time.Second
	// DefaultMinUptime is how long a connection that delivered no data must
	// stay up before the backoff resets.
	DefaultMinUptime = 10 * time.Second
	// DefaultMaxRetryAfter caps how long a server's Retry-After can park a feed.
	DefaultMaxRetryAfter = 10 * time.Minute
	// DefaultPingInterval is the time between ping control frames.
	DefaultPingInterval = 15 * time.Second
	// DefaultPongTimeout is how long after a ping the connection may stay silent
	// before it is declared dead.
	DefaultPongTimeout = 10 * time.Second
	// DefaultMaxConcurrentDials is the pool-wide cap on handshakes in flight.
	DefaultMaxConcurrentDials = 32
	// DefaultKeepAliveIdle, DefaultKeepAliveInterval and DefaultKeepAliveCount
	// configure TCP keepalive on every dialed socket; on Linux TCP_USER_TIMEOUT is
	// set to Idle+Interval*Count.
	DefaultKeepAliveIdle     = 15 * time.Second
	DefaultKeepAliveInterval = 5 * time.Second
	DefaultKeepAliveCount    = 3
)

// An Option configures a Client, or a Pool. Options given to NewPool are
// defaults for every feed of the pool; options given to Pool.Add override them
// for one feed. The options marked "pool only" are PoolOptions, which
// NewClient and Pool.Add do not take.
type Option func(*config)

// A PoolOption configures a Pool (NewPool): every Option is one (a default
// for every feed of the pool, which Add may override), and so are the
// pool-only options (WithMaxConcurrentDials, WithFailFast, WithAdmission,
// WithAdmissionFor), which a Client cannot take: passing one to NewClient or
// Pool.Add does not compile.
type PoolOption interface {
	applyPool(*config)
}

func (o Option) applyPool(c *config) { o(c) }

// poolOption is a pool-only option.
type poolOption func(*config)

func (o poolOption) applyPool(c *config) { o(c) }

// config is the resolved configuration of one feed (and, for pool-only fields, of a pool).
type config struct {
	diag *optionDiag // problems found while applying options; nil when none

	name          string
	dialer        *websocket.Dialer
	header        http.Header
	subprotocols  []string
	compression   bool
	noUTF8Check   bool
	requestFunc   func(ctx context.Context, u *url.URL, h http.Header) error
	handshakeTO   time.Duration
	onConnectTO   time.Duration
	readLimit     int64
	writeTimeout  time.Duration
	closeTimeout  time.Duration
	initialBO     time.Duration
	maxBO         time.Duration
	minUptime     time.Duration
	maxRetryAfter time.Duration
	maxAttempts   int
	permanent     func(error) bool
	pingInterval  time.Duration
	pongTimeout   time.Duration
	pongSet       bool // WithPongTimeout was given
	heartbeat     *Heartbeat
	staleTimeout  time.Duration
	queue         *Queue
	sendBuffer    *SendBuffer
	healthy       Health
	maxAge        time.Duration
	dupFilter     func(Message) bool
	sequence      *Sequence
	serverPing    *ServerPing
	standby       *Standby
	timings       func(Timing)
	keepAlive     KeepAlive
	logger        *slog.Logger
	onConnect     func(ctx context.Context, c *Conn) error
	onState       func(StateChange)
	onError       func(feed string, err error)
	retryFunc     func(attempt int, err error) (time.Duration, bool)
	pacing        *SendPacing

	// pool only
	maxDials int
	failFast bool
	gate     *admission.Gate // set by the pool
	rules    *admissionRules // WithAdmission, WithAdmissionFor
	wake     *wakeHub        // set by the pool
}

func defaultConfig() config {
	return config{
		handshakeTO:   DefaultHandshakeTimeout,
		onConnectTO:   DefaultOnConnectTimeout,
		readLimit:     DefaultReadLimit,
		writeTimeout:  DefaultWriteTimeout,
		closeTimeout:  DefaultCloseTimeout,
		initialBO:     DefaultInitialBackoff,
		maxBO:         DefaultMaxBackoff,
		minUptime:     DefaultMinUptime,
		maxRetryAfter: DefaultMaxRetryAfter,
		pingInterval:  DefaultPingInterval,
		pongTimeout:   DefaultPongTimeout,
		keepAlive: KeepAlive{
			Idle:     DefaultKeepAliveIdle,
			Interval: DefaultKeepAliveInterval,
			Count:    DefaultKeepAliveCount,
		},
		maxDials: DefaultMaxConcurrentDials,
		// healthy 0: the default rule (data or the minimum uptime; see
		// WithHealthyWhen)
	}
}

// OptionsOverlap reports whether one of opts sets something that o sets too
// (the feed's name, its OnConnect, ...), so that the later of the two would
// silently override the other. A package that builds feeds with options of
// its own and its user's uses it to reject, at construction, user options
// that could not apply (package topics: WithName, WithOnConnect and
// WithOnStateChange in Config.Options).
func OptionsOverlap(o Option, opts ...Option) bool {
	var mine, theirs config
	o(&mine)
	for _, x := range opts {
		x(&theirs)
	}
	mine.diag, theirs.diag = nil, nil // errors, not settings
	return bothSet(reflect.ValueOf(mine), reflect.ValueOf(theirs))
}

// bothSet reports whether a and b (values of one struct type, applied to
// zero values) have a field set in both, looking into nested structs field
// by field.
func bothSet(a, b reflect.Value) bool {
	if a.Kind() != reflect.Struct {
		return !a.IsZero() && !b.IsZero()
	}
	for i := range a.NumField() {
		if bothSet(a.Field(i), b.Field(i)) {
			return true
		}
	}
	return false
}

// optionDiag collects what applying options found wrong; kept out of line
// since a valid config (every feed's, for its lifetime) needs none.
type optionDiag struct {
	errs []error // invalid values
}

func (c *config) errorf(format string, args ...any) {
	if c.diag == nil {
		c.diag = &optionDiag{}
	}
	c.diag.errs = append(c.diag.errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOption}, args...)...))
}

func (c *config) validate() error {
	if !c.pongSet && c.pingInterval > 0 {
		c.pongTimeout = min(DefaultPongTimeout, c.pingInterval)
	}
	if c.maxBO < c.initialBO {
		c.errorf("max backoff %v is below initial backoff %v", c.maxBO, c.initialBO)
	}
	if c.diag == nil {
		return nil
	}
	return errors.Join(c.diag.errs...)
}

func positive(c *config, name string, d time.Duration) bool {
	if d <= 0 {
		c.errorf("%s must be positive, got %v", name, d)
		return false
	}
	return true
}

// WithName sets the feed's name, used in logs, errors, Stats and Pool.Remove.
// The default is the URL without userinfo and fragment, with secret-looking
// parts replaced by "REDACTED": the values of query keys that name a secret
// (containing token, key, secret, pass, pwd, auth, sig, session, credential,
// jwt, bearer, cookie, code, ticket, access, private, hmac or nonce in any
// case, or being pw, pin, otp, sid, ak, sk or cred once case, "-" and "_"
// are ignored), path segments and query values that look like a random token
// (only letters, digits and "-_.~+=", with a letter and a digit, and at least
// 24 characters, or at least 16 mixing upper case, lower case and digits:
// listen keys, API keys, JWTs, UUIDs), and a whole query that does not parse.
// Names must be unique within a pool, so NewPool refuses WithName as a
// default for every feed.
func WithName(name string) Option {
	return func(c *config) {
		if name == "" {
			c.errorf("name must not be empty")
			return
		}
		c.name = name
	}
}

// WithDialer sets the websocket.Dialer used for every attempt: TLS
// configuration, HTTP(S) proxy, compression, buffer sizes, cookie jar. The
// dialer is copied; its TLSClientConfig is cloned. The default is a copy of
// websocket.DefaultDialer (proxy from the environment, TLS verification on).
// wspool wraps the dialer's NetDialContext (or NetDial) to tune TCP keepalive
// and to observe inbound bytes for liveness, and does the proxy step (HTTP
// CONNECT, or SOCKS5 for socks5:// and socks5h:// proxy URLs) and the TLS
// handshake itself, so that the server's 101 response is checked before
// gorilla parses it (see NegotiationError). A NetDialTLSContext replaces the
// TCP, proxy and TLS steps of wss:// dials (no Proxy is applied to them); it
// is wrapped the same way. Note that a Dialer's nil Proxy means no proxy: set
// Proxy to http.ProxyFromEnvironment to keep honouring HTTP_PROXY and
// HTTPS_PROXY.
func WithDialer(d *websocket.Dialer) Option {
	return func(c *config) {
		if d == nil {
			c.errorf("dialer must not be nil")
			return
		}
		cp := *d
		if d.TLSClientConfig != nil {
			cp.TLSClientConfig = d.TLSClientConfig.Clone()
		}
		c.dialer = &cp
	}
}

// WithHeader sets HTTP headers sent with every handshake. The header is cloned.
// Authorization, Cookie and similar headers are never logged.
func WithHeader(h http.Header) Option {
	return func(c *config) { c.header = h.Clone() }
}

// WithSubprotocols sets the subprotocols offered in the handshake.
func WithSubprotocols(protos ...string) Option {
	return func(c *config) { c.subprotocols = append([]string(nil), protos...) }
}

// WithCompression offers permessage-deflate (RFC 7692) in the handshake, as
// "permessage-deflate; server_no_context_takeover;
// client_no_context_takeover" (gorilla's implementation; a Dialer with
// EnableCompression offers the same). The server may accept it with any
// response RFC 7692 allows for that offer: server_no_context_takeover
// (required), and optionally client_no_context_takeover and
// server_max_window_bits. A response the client cannot honour (keeping the
// server's context across messages, client_max_window_bits, unknown
// parameters) fails the attempt with a permanent *NegotiationError naming
// what the server sent. A decompressed message counts against the read limit
// like any other. Without compression offered, a server that names an
// extension fails the attempt the same way. Default off.
func WithCompression(on bool) Option {
	return func(c *config) { c.compression = on }
}

// WithUTF8Validation turns the check of text messages for valid UTF-8 on
// (the default) or off. With it on, a text message (whole or fragmented)
// that is not valid UTF-8 — overlong forms, surrogates, code points above
// U+10FFFF, a sequence cut off at the end of the message — is never
// delivered: the connection is closed with 1007 (RFC 6455 section 8.1), the
// cause wraps ErrInvalidUTF8, and the feed redials. The check runs on the
// bytes as they are read (ASCII 16 bytes at a time). Turn it off for a server
// known to send text frames that are not UTF-8 and a handler that copes.
func WithUTF8Validation(on bool) Option {
	return func(c *config) { c.noUTF8Check = !on }
}

// WithRequestFunc sets a function called before every dial with a fresh copy
// of the feed's URL and headers, which it may change: a fresh auth token, a
// resume cursor in the query. An error from it counts as a failed attempt and
// goes through the retry classification; the URL must stay ws or wss.
func WithRequestFunc(f func(ctx context.Context, u *url.URL, h http.Header) error) Option {
	return func(c *config) { c.requestFunc = f }
}

// WithHandshakeTimeout bounds one dial attempt: TCP connect, proxy, TLS and
// the HTTP upgrade, up to the 101 response. It does not bound OnConnect (see
// WithOnConnectTimeout), nor the wait for admission or a handshake slot
// before the dial. Default DefaultHandshakeTimeout.
func WithHandshakeTimeout(d time.Duration) Option {
	return func(c *config) {
		if positive(c, "handshake timeout", d) {
			c.handshakeTO = d
		}
	}
}

// WithOnConnectTimeout bounds one run of the OnConnect hook (WithOnConnect):
// its ctx ends after d, and an OnConnect still running then fails the
// attempt, which is retried. It is separate from the handshake timeout so
// that a long resubscribe (many paced sends, waits for acknowledgements) can
// be given minutes while a stuck dial still fails in seconds. Default
// DefaultOnConnectTimeout.
func WithOnConnectTimeout(d time.Duration) Option {
	return func(c *config) {
		if positive(c, "OnConnect timeout", d) {
			c.onConnectTO = d
		}
	}
}

// WithReadLimit sets the largest inbound message in bytes. A larger message
// closes the connection with status 1009 and is reported as an error; the feed
// then reconnects. Default DefaultReadLimit (16 MiB). It cannot be disabled.
func WithReadLimit(n int64) Option {
	return func(c *config) {
		if n <= 0 {
			c.errorf("read limit must be positive, got %d", n)
			return
		}
		c.readLimit = n
	}
}

// WithWriteTimeout bounds each write to the socket. A write that does not
// complete in time fails and the connection is redialled. Default
// DefaultWriteTimeout.
func WithWriteTimeout(d time.Duration) Option {
	return func(c *config) {
		if positive(c, "write timeout", d) {
			c.writeTimeout = d
		}
	}
}

// WithCloseTimeout bounds how long shutdown waits for the server's close frame
// after sending ours (status 1000). Default DefaultCloseTimeout.
func WithCloseTimeout(d time.Duration) Option {
	return func(c *config) {
		if positive(c, "close timeout", d) {
			c.closeTimeout = d
		}
	}
}

// WithBackoff sets the mean first wait after a failure and the cap on the mean
// wait. Waits grow by 1.5x per consecutive failure and are randomised by ±50%.
// Defaults DefaultInitialBackoff and DefaultMaxBackoff.
func WithBackoff(initial, max time.Duration) Option {
	return func(c *config) {
		if positive(c, "initial backoff", initial) && positive(c, "max backoff", max) {
			c.initialBO, c.maxBO = initial, max
		}
	}
}

// WithMinUptime sets how long a connection that delivered no data message
// must stay up before the backoff is reset (one that delivered data resets it
// at once; see WithHealthyWhen), so that a server that accepts and then drops
// at once is retried with growing waits instead of in a tight loop. Default
// DefaultMinUptime.
func WithMinUptime(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.errorf("min uptime must not be negative, got %v", d)
			return
		}
		c.minUptime = d
	}
}

// WithMaxRetryAfter caps the wait a server can impose with Retry-After on a
// 429 or 503 handshake answer. Default DefaultMaxRetryAfter.
func WithMaxRetryAfter(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.errorf("max retry-after must not be negative, got %v", d)
			return
		}
		c.maxRetryAfter = d
	}
}

// WithMaxAttempts makes a feed give up after n consecutive failed attempts
// (the last error is returned from Run). The default, 0, retries forever.
func WithMaxAttempts(n int) Option {
	return func(c *config) {
		if n < 0 {
			c.errorf("max attempts must not be negative, got %d", n)
			return
		}
		c.maxAttempts = n
	}
}

// WithPermanentFunc overrides which errors end a feed instead of being
// retried. The function sees every failure of a dial or of a connection; it
// returning true ends Run with that error. DefaultPermanent is the default, and
// a custom function may call it.
func WithPermanentFunc(f func(err error) bool) Option {
	return func(c *config) {
		if f == nil {
			c.errorf("permanent func must not be nil")
			return
		}
		c.permanent = f
	}
}

// WithLogger sets the slog logger. By default nothing is logged. Credentials in
// URLs and headers are never logged.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger = l }
}

// WithOnConnect sets a hook run after every successful handshake and before any
// message of that connection reaches the handler: subscribe, authenticate,
// resume from a cursor. Its context ends after the OnConnect timeout
// (WithOnConnectTimeout) or on shutdown. If it returns an error the connection is closed and the attempt
// counts as failed (and is retried unless the error is permanent). Write with
// the Conn's Send: the feed is not connected yet, so Client.Send would fail
// or wait in the send buffer until after OnConnect. The connection is read
// while the hook runs: messages are held for it (Conn.ReadMessage) and then
// for the handler, and if the connection ends meanwhile (the server's close
// frame, a read error) ctx ends at once and the attempt fails with the
// connection's end cause, whatever the hook returns: an upstream's 1008 or
// 1013 then holds its admission key as anywhere else.
func WithOnConnect(f func(ctx context.Context, c *Conn) error) Option {
	return func(c *config) { c.onConnect = f }
}

// WithOnStateChange sets a callback for every state transition of a feed, with
// its cause. It is called in order on the feed's own goroutine, outside any lock;
// it should return quickly, since the feed waits for it.
func WithOnStateChange(f func(StateChange)) Option {
	return func(c *config) { c.onState = f }
}

// WithOnError sets a callback for errors that do not change the feed's state:
// a handler that returned an error or panicked (*HandlerError). It is called on
// the goroutine that runs the handler.
func WithOnError(f func(feed string, err error)) Option {
	return func(c *config) { c.onError = f }
}

// Liveness: pings, heartbeats, stale data, TCP keepalive.

// WithPingInterval sets the time between ping control frames. Zero disables
// pings (and with them dead-peer detection above TCP). Default
// DefaultPingInterval. Unless WithPongTimeout is given too, the pong timeout
// becomes the smaller of DefaultPongTimeout and d, so that pings really go out
// every d (pings go out every max(PingInterval, PongTimeout)).
func WithPingInterval(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.errorf("ping interval must not be negative, got %v", d)
			return
		}
		c.pingInterval = d
	}
}

// WithPongTimeout sets how long after a ping the connection may stay silent
// before it is declared dead and redialled (ErrPongTimeout). Any inbound byte
// counts as an answer, so a large message arriving slowly is not a dead peer,
// and time during which the feed's own handler holds the reader back is never
// blamed on the peer. Pings go out every max(PingInterval, PongTimeout).
// Default DefaultPongTimeout.
func WithPongTimeout(d time.Duration) Option {
	return func(c *config) {
		if positive(c, "pong timeout", d) {
			c.pongTimeout = d
			c.pongSet = true
		}
	}
}

// WithHeartbeat enables an application-level heartbeat message for the feed.
// Interval and Message are required, and DropReplies needs IsReply.
func WithHeartbeat(hb Heartbeat) Option {
	return func(c *config) {
		if hb.Interval <= 0 {
			c.errorf("heartbeat interval must be positive, got %v", hb.Interval)
			return
		}
		if hb.Message == nil {
			c.errorf("heartbeat needs a Message func")
			return
		}
		if hb.DropReplies && hb.IsReply == nil {
			c.errorf("heartbeat DropReplies needs an IsReply func to recognise the replies")
			return
		}
		c.heartbeat = &hb
	}
}

// WithStaleTimeout enables the stale-data watchdog: if no data message (a
// heartbeat reply does not count) arrives for d, the connection is redialled
// with ErrStaleData, for upstreams that still answer pings but stopped
// publishing. The check runs every d/4, so it fires between d and 1.25·d.
// Zero, the default, disables it.
func WithStaleTimeout(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.errorf("stale timeout must not be negative, got %v", d)
			return
		}
		c.staleTimeout = d
	}
}

// WithKeepAlive sets the TCP keepalive of the feed's sockets.
func WithKeepAlive(ka KeepAlive) Option {
	return func(c *config) {
		if ka.Idle == 0 {
			ka.Idle = DefaultKeepAliveIdle
		}
		if ka.Interval == 0 {
			ka.Interval = DefaultKeepAliveInterval
		}
		if ka.Count == 0 {
			ka.Count = DefaultKeepAliveCount
		}
		c.keepAlive = ka
	}
}

// Failure accounting and retries.

// WithHealthyWhen sets when a connection that ended counts as healthy (not a
// failed attempt: the backoff resets); every condition given must hold. By
// default a connection is healthy once it delivered a data message or stayed
// up for the minimum uptime (WithMinUptime), whichever comes first, so a
// stream that breaks every few seconds is redialled after the initial backoff
// each time, while an upstream that accepts and drops before sending anything
// sees the waits grow. HealthMinUptime alone (v0.1.0's rule)
// keeps the waits growing also against an upstream that sends a little and
// then kicks the feed; HealthMinUptime|HealthFirstMessage requires both; use
// HealthOnConnect alone for upstreams that legitimately close short sessions.
// Whatever the conditions, a connection that ended because a reconnect was
// asked for (Reconnect, a handler's ErrReconnect, a resync) is never a
// failure, and one the upstream closed with 1008 or 1013 always is.
func WithHealthyWhen(h Health) Option {
	return func(c *config) {
		if h == 0 || h&^(HealthMinUptime|HealthOnConnect|HealthFirstMessage) != 0 {
			c.errorf("invalid health condition %d", h)
			return
		}
		c.healthy = h
	}
}

// WithRetryPolicy replaces the built-in backoff curve (×1.5 per failure,
// ±50 % jitter, capped by WithBackoff's max) with f, which reads the failure
// and decides: it returns how long to wait before the next attempt, or
// retry=false to end the feed (Run then returns an error wrapping
// ErrMaxAttempts and err). attempt counts consecutive failed attempts,
// this one included; it is 0 when a connection that had been healthy (see
// WithHealthyWhen) ended. err is the failure: use errors.As with
// *HandshakeError for the HTTP status and Retry-After, CloseStatus for the
// close code.
//
// f runs on the feed's own goroutine after the permanent classification
// (WithPermanentFunc), which still ends the feed first. What the library
// enforces either way: WithMaxAttempts, a server's Retry-After as the
// least wait, the pool's admission and its penalties (WithAdmission), and
// the wake after an outage. A panic in f is reported and the built-in
// curve used for that failure. Without this option the built-in curve
// applies, with a short random wait (up to the initial backoff) after a
// 1012 (service restart) close.
func WithRetryPolicy(f func(attempt int, err error) (wait time.Duration, retry bool)) Option {
	return func(c *config) {
		if f == nil {
			c.errorf("retry policy must not be nil")
			return
		}
		c.retryFunc = f
	}
}

// Delivery and sending: the inbound queue, the outbound buffer, pacing.

// WithQueue puts a bounded queue between the feed's reader and its handler.
// Without it (the default) the handler runs on the reader's goroutine: no
// copy, no extra goroutine, and the same lossless backpressure as Block with
// a queue of zero. With a queue, every queued message is a copy the handler
// owns, and the handler runs on a second goroutine of the feed.
//
// When a feed starts dropping, an error wrapping ErrSlowConsumer is reported
// through WithOnError and the logger, once until the queue next drains; Stats
// count every dropped message.
func WithQueue(q Queue) Option {
	return func(c *config) {
		if q.Messages <= 0 {
			c.errorf("queue needs Messages > 0, got %d", q.Messages)
			return
		}
		if q.Bytes < 0 {
			c.errorf("queue Bytes must not be negative, got %d", q.Bytes)
			return
		}
		if q.Policy < Block || q.Policy > DropNewest {
			c.errorf("unknown overflow policy %d", q.Policy)
			return
		}
		if q.Bytes == 0 {
			q.Bytes = q.Messages * (64 << 10)
		}
		c.queue = &q
	}
}

// WithSendBuffer makes Send wait in a bounded buffer while the feed is not
// connected instead of failing at once with ErrNotConnected (the default).
// A message that does not fit fails at once with ErrSendBufferFull.
func WithSendBuffer(b SendBuffer) Option {
	return func(c *config) {
		if b.Messages <= 0 {
			c.errorf("send buffer needs Messages > 0, got %d", b.Messages)
			return
		}
		if b.Bytes < 0 || b.MaxAge < 0 {
			c.errorf("send buffer Bytes and MaxAge must not be negative")
			return
		}
		if b.Bytes == 0 {
			b.Bytes = b.Messages * (64 << 10)
		}
		c.sendBuffer = &b
	}
}

// WithSendPacing paces what the library writes on a connection for the
// user: OnConnect's Conn.Send, the flush of the send buffer after a
// reconnect, Send and SendAsync, heartbeat messages, replies to server pings
// (WithServerPing), and with Pings ping frames; a new connection starts a
// fresh count. Close frames are not paced.
//
// The limit holds at the receiver: the library lets a message start only
// while fewer than Messages writes ended within the last Per+Margin, so as
// long as the delay from a write's end to the upstream's count of it varies
// by less than Margin, no window of Per at the upstream holds more than
// Messages, however the writes were delayed on the way (see SendPacing).
// The window's memory follows use, not Messages (internal/ratewindow).
//
// A write waits for its turn without holding the writer role's lock, and
// the wait ends if the connection dies (the message is then carried to the
// next connection or fails, as without pacing) or, for Send and Conn.Send,
// if ctx ends (Send returns ctx.Err(); nothing was written). Pacing waits
// are waits for a turn, never for a connection, so a Send from a callback
// may wait for them. A reply to a server ping that finds no room is written
// later by a goroutine of the connection: the reader never waits for a
// turn, so neither Close nor the dead-peer check waits for one. Note the
// OnConnect hook's context (WithOnConnectTimeout) bounds a paced
// resubscription done there: 500 subscriptions at 100 per second need an
// OnConnect timeout above 5 s, or go through the send buffer (SendAsync
// while disconnected), which has no such bound.
func WithSendPacing(p SendPacing) Option {
	return func(c *config) {
		if p.Messages <= 0 || p.Per <= 0 || p.Margin < 0 {
			c.errorf("send pacing needs Messages > 0, Per > 0 and Margin >= 0, got %d per %v (margin %v)", p.Messages, p.Per, p.Margin)
			return
		}
		if p.Margin == 0 {
			p.Margin = p.Per / 10
		}
		c.pacing = &p
	}
}

// Continuity: rotation, duplicates, sequences, server pings, hot standby.

// WithMaxConnectionAge makes the feed replace each connection after about d
// (randomised by up to -10% so a fleet does not rotate in step), for
// upstreams that cut connections at a fixed age. Replacement is
// make-before-break: a new connection is dialled and its OnConnect run while
// the old one keeps delivering; then Send switches to the new connection, the
// old one is closed with 1000 and drained to its end, and delivery continues
// from the new one. There is no gap; the two connections overlap, so messages
// published during the switch may arrive on both — see WithDuplicateFilter.
// The new connection is read from its handshake on: what it receives until
// the old one has been drained is held (bounded as for OnConnect, see
// Conn.ReadMessage) and delivered after the old connection's last message.
// If the new connection cannot be made, the old one is kept and the
// replacement retried after d/10. Zero, the default, never rotates.
func WithMaxConnectionAge(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.errorf("max connection age must not be negative, got %v", d)
			return
		}
		c.maxAge = d
	}
}

// WithDuplicateFilter sets a function consulted, after a rotation, for the
// first messages of the new connection: each message for which it returns
// true is dropped as a duplicate of one the old connection delivered, until it
// first returns false. Typically it compares a sequence number with the last
// one the handler saw. It runs on the feed's reader, before the queue: with
// WithQueue the handler lags behind the reader, so a filter that compares
// with what the handler has handled lets some duplicates through to the
// handler, which must then drop them itself.
func WithDuplicateFilter(isDup func(Message) bool) Option {
	return func(c *config) { c.dupFilter = isDup }
}

// WithSequence makes the feed sequence-aware: per stream key it remembers the
// last number delivered (and the epoch), drops messages numbered at or below
// it (duplicates from a resume that replays, a rotation's overlap or a
// standby connection: the first copy wins) and reports gaps, broken links
// and restarts of the upstream's numbering (OnGap, Stats.Gaps,
// Stats.Restarts). The state lives as long as the feed, across reconnects,
// rotations and standby connections. With WithStandby it is what merges the
// connections into one stream.
func WithSequence(s Sequence) Option {
	return func(c *config) {
		switch {
		case s.Extract == nil && s.Position == nil:
			c.errorf("sequence needs an Extract or a Position func")
			return
		case s.Extract != nil && s.Position != nil:
			c.errorf("sequence takes an Extract or a Position func, not both")
			return
		case s.Extract != nil && s.Shape != SingleNumber:
			c.errorf("sequence Extract reads single numbers; shape %v needs a Position func", s.Shape)
			return
		case s.Shape > LinkedIDs:
			c.errorf("unknown sequence shape %v", s.Shape)
			return
		case s.MaxKeys < 0:
			c.errorf("sequence MaxKeys must not be negative, got %d", s.MaxKeys)
			return
		}
		if s.MaxKeys == 0 {
			s.MaxKeys = 4096
		}
		if s.Restart == 0 {
			s.Restart = 1024
		}
		c.sequence = &s
	}
}

// WithServerPing answers an upstream's data-level pings on the feed's reader,
// before the queue and the handler: with WithQueue a ping is answered at once
// even while the handler is busy with a backlog (without a queue the reader
// waits for the handler, as for every message). The reply is written on the
// connection the ping came on, ahead of nothing it must follow (it does not
// wait behind buffered sends). Pings count as proof of life like any inbound
// frame, are counted in Stats.ServerPings, and do not hold off the stale-data
// watchdog.
func WithServerPing(p ServerPing) Option {
	return func(c *config) {
		if p.Reply == nil {
			c.errorf("server ping needs a Reply func")
			return
		}
		c.serverPing = &p
	}
}

// WithStandby keeps extra connections to the same stream, each with its own
// dial, OnConnect, liveness checks and reconnect loop, read at the same time
// as the primary connection and merged into the one handler stream by
// WithSequence (required): the first copy of each number wins, later copies
// are dropped as duplicates. Losing any connection while another lives loses
// nothing, and the stream stalls no longer than the surviving connection's
// lag behind the lost one. The handler is still never called concurrently
// with itself: the connections take turns to deliver.
//
// The primary connection is the feed's: its state is the feed's state, Send
// writes on it, and rotation (WithMaxConnectionAge, Rotate) and Reconnect
// apply to it. Standby connections only read (their OnConnect may Send on
// its Conn to subscribe). Stats.Standby reports each one.
func WithStandby(s Standby) Option {
	return func(c *config) {
		if s.Connections < 1 {
			c.errorf("standby needs Connections >= 1, got %d", s.Connections)
			return
		}
		for _, raw := range s.URLs {
			if _, err := parseFeedURL(raw); err != nil {
				c.errorf("standby URL: %v", err)
				return
			}
		}
		s.URLs = append([]string(nil), s.URLs...)
		c.standby = &s
	}
}

// Observability.

// WithTimings reports timings (handshake, OnConnect, time to first message,
// handler time, queue wait) to f, for histograms: f is called synchronously
// on the feed's goroutines, once per event (handler and queue timings once
// per message), so it must be quick and must not block (a histogram's
// Observe is). It costs two clock reads per message while set, nothing
// otherwise. A panic in f is reported like any callback's.
func WithTimings(f func(Timing)) Option {
	return func(c *config) {
		if f == nil {
			c.errorf("timings func must not be nil")
			return
		}
		c.timings = f
	}
}

// Pool only.

// WithMaxConcurrentDials caps, pool-wide, the handshakes in flight at once, so
// that thousands of feeds coming back after an outage reach servers at a
// bounded rate. Pool only. Default DefaultMaxConcurrentDials.
//
// The slots are shared by host: the last r = max(1, n/8) are kept for hosts
// with no handshake in flight (a host takes a slot beyond its first only
// while more than r stay free). So one host alone has at most n-r
// handshakes in flight (28 of the default 32), a host that stalls every
// handshake holds no more, and a dial to another host never waits for a
// stalled handshake until r+1 hosts stall at once (5 of 32). A freed slot
// goes to the waiting host with the fewest handshakes in flight.
func WithMaxConcurrentDials(n int) PoolOption {
	return poolOption(func(c *config) {
		if n <= 0 {
			c.errorf("max concurrent dials must be positive, got %d", n)
			return
		}
		c.maxDials = n
	})
}

// WithFailFast makes a feed that fails for good end Pool.Run with its error
// (cancelling every other feed). Pool only. By default such a feed is reported
// (state closed with the error, log, Stats) and the other feeds go on.
func WithFailFast(on bool) PoolOption {
	return poolOption(func(c *config) { c.failFast = on })
}

// WithAdmission limits new connections per upstream key, pool-wide (see
// Admission), for every key that WithAdmissionFor does not name. Pool only.
// By default there is no admission limit; the pool's handshake slots
// (WithMaxConcurrentDials) are shared by host either way.
func WithAdmission(a Admission) PoolOption {
	return poolOption(func(c *config) {
		if checkAdmission(c, &a) {
			c.admissionRules().all = &a
		}
	})
}

// WithAdmissionFor sets the admission limits of one upstream key (what
// WithAdmission's Key returns, by default the host as the dial's URL has
// it: "a.example" or "a.example:9443"), in place of WithAdmission's, so that
// one pool holds feeds of several upstreams with different limits: each key
// its own rate, burst, concurrency and penalty, one line per key, the pool's
// handshake slots shared by host across all of them, one set of Stats. It
// may be given once per key; a.Key must be nil (keys are chosen by
// WithAdmission's Key). Keys without limits of their own get WithAdmission's,
// or none. Pool only.
func WithAdmissionFor(key string, a Admission) PoolOption {
	return poolOption(func(c *config) {
		switch r := c.admissionRules(); {
		case key == "":
			c.errorf("WithAdmissionFor needs a key")
		case a.Key != nil:
			c.errorf("WithAdmissionFor(%q): Key maps dials to keys for the whole pool; set it in WithAdmission", key)
		case r.perKey[key] != nil:
			c.errorf("WithAdmissionFor(%q) given twice", key)
		case checkAdmission(c, &a):
			if r.perKey == nil {
				r.perKey = map[string]*Admission{}
			}
			r.perKey[key] = &a
		}
	})
}

// Package wspool keeps many long-lived upstream WebSocket feeds alive at
// once, unattended, for weeks: market data, IoT gateways, monitoring agents,
// exchange bridges.
//
// # Overview
//
// A [Pool] supervises many independent feeds under an errgroup. Each feed is a
// [Client] with its own reconnect loop, heartbeats, TCP keepalive tuning and
// [Handler]:
//
//	pool, err := wspool.NewPool(wspool.WithLogger(slog.Default()))
//	pool.Add("wss://a.example/stream", handleA, wspool.WithPingInterval(10*time.Second))
//	pool.Add("wss://b.example/ticker", handleB, wspool.WithOnConnect(subscribeB))
//	err = pool.Run(ctx) // nil when ctx ends; an error only with WithFailFast
//
// A Client can also be used on its own: NewClient, then Run.
//
// # Lifecycle
//
// A feed moves through [StateIdle], [StateConnecting], [StateConnected],
// [StateBackingOff] and [StateClosed]. Every transition is reported, with its
// cause, to the WithOnStateChange callback, in order, by the feed's event
// dispatcher (see "Concurrency and callbacks"); State reads the current one.
// Cancelling Run's context (or Close) sends a close frame (1000) and waits at
// most the close timeout for the server's answer; Run returns, and Done is
// closed, once no goroutine, timer or socket of the feed is left. Close (like
// every stopping method) only starts this and returns at once.
//
// # Reconnect
//
// Any transient failure — dial error, handshake answered 408, 429 or 5xx,
// abnormal close, read error, a message over the read limit, missed pong,
// stale data, a failing OnConnect — leads to a new dial after a jittered
// exponential backoff (backoff/v4: mean 500ms growing 1.5x to 30s, ±50%).
// What counts as a failure, and so grows the backoff, is the table under
// "Failure accounting": in short, a connection that delivered data is not a
// failure, so a server that accepts and drops at once is not hammered while a
// stream that breaks every few seconds is back within the initial backoff.
// Retry-After on 429 and 503 is honoured (capped by WithMaxRetryAfter).
// Failures retrying cannot fix are permanent: 401, 403 and 404 at the
// handshake, an invalid URL from a request func, and errors wrapped with
// [Permanent]. [DefaultPermanent] documents the rule; WithPermanentFunc
// replaces it. Retrying forever is the default; WithMaxAttempts bounds it.
// A pool caps concurrent handshakes (WithMaxConcurrentDials), shared by
// host, so that feeds coming back together after an outage reach servers at
// a bounded rate; the last eighth of the slots is kept for hosts with no
// handshake in flight, so a host that stalls handshakes never delays
// another host's dial.
// WithRetryPolicy replaces the backoff curve with a func of the attempt and
// the error.
//
// # Failure accounting
//
// One rule for the feed's own connection and for each standby connection
// (each runs its own retry loop and backoff):
//
//	event                                       failed attempt?  backoff       against WithMaxAttempts
//	dial, proxy, TLS or handshake error         yes              grows         counts
//	OnConnect failed (error, panic, timeout)    yes              grows         counts
//	connection ended, no data, under MinUptime  yes              grows         counts
//	connection closed by upstream 1008/1013     yes              grows         counts (and a penalty)
//	connection that delivered a data message    no               resets        resets the count
//	connection up for WithMinUptime             no               resets        resets the count
//	reconnect asked for on a connected feed     no               resets        resets the count
//	(Client.Reconnect, a handler's ErrReconnect, an OnGap resync, a topic set's ack timeout)
//
// After a reset the next wait is the initial backoff (±50%). WithHealthyWhen
// replaces the "data or minimum uptime" condition (its conditions must all
// hold); the rows for requested reconnects and 1008/1013 apply whatever it
// says. Heartbeat replies and answered server pings are not data.
//
// Retrying stops when: the failure is permanent (DefaultPermanent, or
// WithPermanentFunc); WithMaxAttempts consecutive failed attempts; or
// WithRetryPolicy says stop. For the feed's own loop that ends the feed (Run
// returns the error); for a standby connection it stops that connection
// only, reported through WithOnError and Stats.Standby, and the feed goes on.
//
// A penalty (a 429 or 418 answer, a 1008 or 1013 close; WithAdmission) is
// charged to the admission key of the connection that was told, whichever
// connection of the feed that was (primary, rotation or standby), whenever it
// arrives: at the handshake, during OnConnect or later.
//
// # Upstream limits
//
// WithAdmission (pool only) admits new connections per upstream key (the
// host dialled, or a key func) at a rate with a burst and a concurrency cap,
// and WithAdmissionFor sets other limits for named keys, so one pool serves
// upstreams with different limits: every dial waits its turn, first
// connects, reconnects, rotations, standby connections and woken feeds
// alike, in order. A 429 without Retry-After, a 418, or a close with 1008 or
// 1013 holds the whole key of the connection that got it for the key's
// penalty time; 1012 is retried soon. WithSendPacing bounds the messages
// written on one connection as the upstream counts them (a sliding window at
// the receiver, with a margin), the library's own writes included
// (OnConnect, the send-buffer flush, heartbeats, server-ping replies and,
// optionally, pings). See the README's "Upstream limits" for a worked
// example.
//
// # Liveness
//
// A ping control frame goes out every ping interval; if nothing at all
// arrives within the pong timeout after it, the peer is declared dead
// ([ErrPongTimeout]) and the feed redials. Any inbound byte counts, so a large
// message arriving slowly is not mistaken for a dead peer, and time during which
// the feed's own handler holds the reader back is never blamed on the peer. At
// the defaults (15s interval, 10s timeout) a silently dead peer is detected
// within 25s, and traffic every 15s keeps intermediaries that drop idle
// connections after 60s from doing so. Note: WithPingInterval alone also
// lowers the pong timeout to the interval when that is shorter than 10s
// (pings go out every max(interval, pong timeout), so a 2s interval really
// pings every 2s); give WithPongTimeout to set it yourself. WithHeartbeat adds an
// application-level heartbeat message; WithStaleTimeout redials when no data
// message arrives for a while. Every dialed socket gets TCP keepalive, and on
// Linux TCP_USER_TIMEOUT, so unacknowledged writes cannot hang for the
// kernel's default of about 15 minutes. Stats report the ping round-trip time.
//
// # Delivery
//
// A feed's handler gets that feed's messages in arrival order and is never
// called concurrently with itself. Message.Data is valid only until the
// handler returns (the buffer is reused); keep a [Message.Clone] if needed.
// While the handler runs the feed's reader waits, so a slow handler slows only
// its own feed (TCP pushes back on its server) and never another feed. A
// handler's error or panic is reported as a [HandlerError] (WithOnError, the
// logger, Stats.HandlerErrors) and the feed goes on with the next message;
// an error wrapping [ErrReconnect] instead asks for a reconnect (a resync).
// Text messages are checked for valid UTF-8 (1007 and a redial otherwise;
// WithUTF8Validation(false) turns it off).
//
// With WithQueue a bounded queue sits between reader and handler (the reader
// keeps reading while the handler works through a burst) with a stated
// overflow policy: Block (lossless; TCP pushes back), DropOldest or
// DropNewest, with counters in Stats and an ErrSlowConsumer report when a feed
// starts dropping. Queued messages are copies the handler owns.
//
// # Resume
//
// WithOnConnect runs after every handshake and before any message of that
// connection is delivered; it gets the [Conn] to subscribe, authenticate (it
// may read replies with Conn.ReadMessage) or resume from a cursor. If it fails,
// the connection is dropped and retried. The connection is read while it
// runs: a close from the server ends its context at once and the attempt
// fails with that close (a 1008's penalty applies), and messages are held,
// up to 256 or 1 MiB (then TCP pushes back), for Conn.ReadMessage and then,
// in order, for the handler. WithRequestFunc computes the URL and
// headers of every dial (a fresh token, a resume cursor).
//
// # Sending
//
// Client.Send is safe from any goroutine. One writer at a time writes a
// feed's messages, in the order Send and SendAsync were called, each write
// bounded by the write timeout. While the feed is not connected, Send fails
// at once with [ErrNotConnected], or, with WithSendBuffer, waits in a bounded
// buffer that is written in order on the next connection, after OnConnect and
// before any later message (by a goroutine of the library, while the new
// connection is already being read). Client.SendAsync reports the outcome
// through a callback. Every message is either written to the socket or
// reported failed, exactly once; a message marked [NoReplay] is never
// carried over to a later connection. A send that races a reconnect or a
// rotation goes out once: on the old connection before its close frame, or
// on the new one, still in order. A connected feed never holds buffered
// messages that nothing will write.
//
// # Continuity
//
// A connection kept alive is not yet a correct stream. Client.Reconnect and
// Client.Rotate replace the connection on demand (break-and-redial, or
// make-before-break); a handler asks for a reconnect by returning an error
// wrapping [ErrReconnect]. Every [Message] carries the time its last byte
// was read from the socket and the number of the connection it came on.
// WithSequence gives the feed the messages' stream keys and numbers: per key
// it drops duplicates (a resume that replays, a rotation's overlap, a
// standby's copies: the first copy wins) and reports gaps, with OnGap able to
// ask for a resync that fills the gap from a resume point (a request func
// resuming from Client.LastSequence). WithStandby keeps extra connections to
// the same stream, read at once and merged by sequence, so that losing one
// loses nothing and stalls the stream only as long as the survivor lags
// (measured in examples/standby: median about the message interval, worst
// under 250 ms on a loaded 2-core machine). WithServerPing answers an
// upstream's data-level pings on the reader, ahead of a busy handler.
// Client.Drain and Pool.Drain stop without throwing queued messages away.
// The guarantees, exactly: with WithSequence, the handler never sees a
// number at or below one it saw for the same key; it sees a number more than
// one above the last only after OnGap accepted the gap (or with no OnGap);
// with a resume point from LastSequence and OnGap asking for a resync, it
// sees every number exactly once, in order, as long as the upstream can
// replay from the resume point.
//
// # Rotation
//
// WithMaxConnectionAge replaces a connection before an upstream's age limit
// cuts it: the new connection is dialled and subscribed while the old one
// keeps delivering, then Send switches to the new one, the old one is closed
// and drained to its end, and delivery goes on from the new one.
// WithDuplicateFilter drops messages the overlap delivered twice.
//
// # Concurrency and callbacks
//
// Every exported method of Pool and Client is safe for concurrent use, and
// every callback — and every goroutine a callback starts — may call every
// exported method of its Client and Pool without deadlock. This holds by
// construction; the library never asks which goroutine is calling (Go has
// no goroutine identity, and the design needs none):
//
//   - Stopping never waits. Close, Drain, Pool.Close, Pool.Drain and
//     Pool.Remove start the stop and return at once; Client.Done and
//     Pool.Done (and Run's return) say when it is over. Wait on them outside
//     the feed's own callbacks.
//   - What must differ inside a callback is read from the context the
//     library passed to it (the handler's, OnConnect's, the request func's),
//     and from every context a callback derives from it for the goroutines
//     it starts: Send with such a context never waits for a connection
//     (while the feed is not connected it fails at once with an error
//     wrapping [ErrNotConnected], even with WithSendBuffer), and Rotate with
//     one starts the rotation and returns. Send also never waits for a
//     connection while the feed's reader is running user code, whatever the
//     context, because the next connection waits for that code. SendAsync
//     buffers from anywhere.
//   - OnStateChange and OnError are called in order by one dispatcher
//     goroutine per feed, started while events wait: the reconnect loop
//     never waits for them. The handler (with WithQueue, on the queue's
//     goroutine) and the filters run on the feed's reader: they delay only
//     their own feed.
//   - No library lock is held while user code runs, but for the merge turn
//     below, which no exported method takes.
//   - Run and Pool.Run report ErrAlreadyRunning; Stats, State and Add work
//     as anywhere.
//
// The locks, each with what it guards; a goroutine that holds one may take
// only those listed after it (Pool.mu, then events.mu, then Client.mu, then
// the leaf locks), and none is held across network I/O except the writer:
//
//	lock                 guards                                                     held while
//	Pool.mu              the feeds map, started/stopping/closed                      map and flag updates; starting a feed (takes Client.mu)
//	Client.events.mu     the queue of OnStateChange/OnError calls                    queueing (takes Client.mu to start the dispatcher)
//	Client.mu            state, current Conn, send queue and writer role,             short updates; never I/O or user code
//	                     lifecycle flags, last error, dialled host
//	merge turn           standby: which connection delivers next (first copy wins)   the sequence check and the handler call of one message
//	Conn writer          the socket's write side (one writer at a time)               one frame write, bounded by the write timeout
//	leaf locks           heartbeat timers, pacing window, sequence state, queue,     short updates of their own state
//	                     admission gate, wake hub, standby stats, a connection's
//	                     hold buffer (read.go)
//
// The merge turn is how the handler is "never called concurrently with
// itself" when standby connections deliver too: their readers take turns.
// User code runs inside it, but nothing waits for it except another standby
// reader, so user code cannot deadlock on it.
//
// A panic in any callback is recovered and reported as a [HandlerError]
// whose Callback field names it (WithOnError, the logger, Stats.HandlerErrors);
// the feed goes on (a panicking OnConnect or request func fails that attempt).
//
// # Observability
//
// Client.Stats and Pool.Stats return snapshots (Pool.Totals the sums alone,
// cheaply); WithTimings reports handshake, OnConnect, time to first message,
// handler and queue-wait durations to a func, for histograms (see
// examples/prometheus); CloseStatus reads the close code of an error as a
// [CloseCode].
//
// # Around the library
//
// Package wspooltest is a small test kit for code built on wspool: a
// scripted loopback server, sequenced streams with a resume point, and a
// fault-injecting proxy. Package topics spreads a set of topics over as many
// feeds of a Pool as a per-connection cap needs, replays each feed's topics
// on every connection and applies live changes with acknowledgements.
// Module cluster/natsjs shares feeds among replicas with leases in NATS
// JetStream.
//
// # Resources
//
// An idle connected feed costs one goroutine, blocked reading its socket and
// started fresh for each connection (the dial, the handshake and the backoff
// waits run on the previous connection's goroutine, which then ends), so its
// stack stays at the runtime's 4 KiB; a Pool makes every such goroutine a
// member of its errgroup. Pings and the other liveness checks are timers
// (time.AfterFunc), not goroutines. On unix, plain ws:// connections hold no
// read buffer while idle (gorilla's 128-byte one serves the handshake only):
// they wait for data holding none and borrow a shared 16 KiB buffer while
// reading, in which wspool's frame reader (internal/frameread) parses frames
// and hands a message of one frame to the handler in place; a larger or
// fragmented message is assembled in the feed's own buffer, over 256 KiB in a
// shared one. Compressed connections, wss:// and a Dialer with ReadBufferSize
// set are read by gorilla's reader with its own buffering. Write buffers are
// lent from a shared pool while writing. WithQueue adds one goroutine per feed, and
// WithStandby one per standby connection; the send-buffer flush, a rotation
// and a requested close run on goroutines of their own only while they
// work. At 10,000
// idle feeds this is about 12-13 KiB resident per feed (bench/BENCHMARKS.md).
//
// # Security
//
// TLS certificates are verified (supply a Dialer with a TLSClientConfig to
// add a CA). A read limit (16 MiB) is always on and counts what the handler
// gets, after decompression: a larger message closes the connection with 1009
// and is reported. Text messages are checked for valid UTF-8 as they are read
// (1007, ErrInvalidUTF8; WithUTF8Validation turns it off). The server's 101
// is checked before gorilla parses it: an extension or subprotocol that was
// not offered, compression parameters the client cannot honour, or a
// negotiation header over 4 KiB fail the attempt with a permanent
// NegotiationError (permessage-deflate is opt-in: WithCompression). Panics
// inside a dial become errors. Proxies (HTTP CONNECT and SOCKS5) come from the environment as
// in net/http (HTTP_PROXY for ws://, HTTPS_PROXY for wss://, NO_PROXY; read
// once per process; loopback targets are never proxied) unless WithDialer
// supplies a Dialer, whose Proxy field then decides (nil: no proxy). URL
// userinfo is sent as HTTP Basic authorization. Feed names, logs and errors
// never contain URL userinfo, secret-looking query values or random-looking
// path segments (listen keys, API keys; see WithName), and headers are never
// logged.
package wspool

// Package firehose is a WebSocket server built to make the client the
// bottleneck. After the handshake it writes pre-encoded server frames (text
// frames built once per connection) in large batches with one net.Conn.Write
// per batch, so serving a message costs the server almost nothing.
//
// Modes, chosen per server and overridable per connection in the URL query
// (?mode=idle&size=64&count=1000&rate=0&delay=0&stamp=1):
//
//   - firehose: stream messages of Size bytes, Count per connection (0 = until
//     the client leaves), at Rate messages per second per connection (0 = as
//     fast as the socket takes them). Pings are answered between batches.
//     With Stamp, every message starts with its send time (see Stamp): the
//     latency benchmark.
//   - idle: send nothing; answer pings and the close handshake.
//   - echo: send every data frame back, batching replies until the socket has
//     no more input buffered.
//
// The server counts connections, completed upgrades and handshakes in flight
// (from accept to the 101 response written), with the peak, and serves them as
// JSON at GET /stats (a plain HTTP request).
//
// Only loopback addresses are accepted.
package firehose

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Modes.
const (
	ModeFirehose = "firehose"
	ModeIdle     = "idle"
	ModeEcho     = "echo"
)

// Config is the default behaviour of a server's connections.
type Config struct {
	Mode  string // ModeFirehose (default), ModeIdle or ModeEcho
	Size  int    // payload bytes per message (firehose); default 64
	Count int64  // messages per connection (firehose); 0 = unlimited
	Rate  int    // messages per second per connection (firehose); 0 = unlimited
	// Batch is the target bytes per Write (firehose); default 64 KiB.
	Batch int
	// HandshakeDelay is slept inside every handshake (to make concurrency
	// of handshakes observable in tests).
	HandshakeDelay time.Duration
	// Binary sends binary frames instead of text frames.
	Binary bool
	// Stamp writes the send time into the first StampLen bytes of every
	// message (Size must be at least StampLen): the messages of one write
	// carry the time taken just before it.
	Stamp bool
}

// StampLen is the length of a send-time stamp: the wall clock's Unix
// nanoseconds as 16 lower-case hex digits (text, valid UTF-8).
const StampLen = 16

// putStamp writes ns as a stamp into b[:StampLen].
func putStamp(b []byte, ns int64) {
	const hex = "0123456789abcdef"
	for i := StampLen - 1; i >= 0; i-- {
		b[i] = hex[ns&0xF]
		ns >>= 4
	}
}

// ParseStamp returns the send time stamped at the start of a message, as
// Unix nanoseconds; ok is false if b does not start with a stamp.
func ParseStamp(b []byte) (ns int64, ok bool) {
	if len(b) < StampLen {
		return 0, false
	}
	for _, c := range b[:StampLen] {
		switch {
		case c >= '0' && c <= '9':
			ns = ns<<4 | int64(c-'0')
		case c >= 'a' && c <= 'f':
			ns = ns<<4 | int64(c-'a'+10)
		default:
			return 0, false
		}
	}
	return ns, true
}

func (c Config) withDefaults() Config {
	if c.Mode == "" {
		c.Mode = ModeFirehose
	}
	if c.Size <= 0 {
		c.Size = 64
	}
	if c.Batch <= 0 {
		c.Batch = 64 << 10
	}
	return c
}

func (c Config) validate() error {
	switch c.Mode {
	case ModeFirehose, ModeIdle, ModeEcho:
	default:
		return fmt.Errorf("firehose: unknown mode %q", c.Mode)
	}
	if c.Size > maxClientFrame {
		return fmt.Errorf("firehose: size %d too large", c.Size)
	}
	if c.Stamp && c.Size < StampLen {
		return fmt.Errorf("firehose: size %d too small for a stamp (%d bytes)", c.Size, StampLen)
	}
	if c.Count < 0 || c.Rate < 0 || c.HandshakeDelay < 0 {
		return errors.New("firehose: negative count, rate or delay")
	}
	return nil
}

// Stats are the server's counters.
type Stats struct {
	Accepted     int64 // TCP connections accepted
	Upgrades     int64 // completed WebSocket handshakes
	Active       int64 // upgraded connections open now
	InFlight     int64 // handshakes in progress now
	PeakInFlight int64 // most handshakes in progress at once
	MsgsOut      int64 // data messages written (firehose and echo)
	BytesOut     int64 // payload bytes written
	MsgsIn       int64 // data frames received
	Pings        int64 // pings answered
	// ListenAt is when the listener was opened, LastUpgradeAt when the latest
	// handshake completed, as Unix nanoseconds.
	ListenAt      int64
	LastUpgradeAt int64
}

// Server is a firehose server on a loopback address.
type Server struct {
	cfg      Config
	ln       net.Listener
	listenAt time.Time

	accepted, upgrades, active atomic.Int64
	inFlight, peakInFlight     atomic.Int64
	msgsOut, bytesOut, msgsIn  atomic.Int64
	pings, lastUpgradeAt       atomic.Int64

	mu         sync.Mutex
	conns      map[net.Conn]struct{}
	closed     bool
	wg         sync.WaitGroup
	acceptDone chan struct{}
	serveOnce  sync.Once
	stopCtx    context.Context
	stop       context.CancelFunc

	handshakeTimeout, writeTimeout time.Duration
}

// Listen opens a loopback listener on addr (host:port; port 0 picks one) and
// returns a server that serves it once Serve is called.
func Listen(addr string, cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("firehose: address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("firehose: address %q is not a loopback IP; only loopback is allowed", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:              cfg,
		ln:               ln,
		listenAt:         time.Now(),
		conns:            make(map[net.Conn]struct{}),
		acceptDone:       make(chan struct{}),
		stopCtx:          ctx,
		stop:             cancel,
		handshakeTimeout: 10 * time.Second,
		writeTimeout:     60 * time.Second,
	}, nil
}

// Start listens on addr and serves in the background.
func Start(addr string, cfg Config) (*Server, error) {
	s, err := Listen(addr, cfg)
	if err != nil {
		return nil, err
	}
	go s.Serve()
	return s, nil
}

// Addr returns the listener's host:port.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL returns ws://host:port/ for the server.
func (s *Server) URL() string { return "ws://" + s.Addr() + "/" }

// ListenAt returns when the listener was opened.
func (s *Server) ListenAt() time.Time { return s.listenAt }

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	return Stats{
		Accepted:      s.accepted.Load(),
		Upgrades:      s.upgrades.Load(),
		Active:        s.active.Load(),
		InFlight:      s.inFlight.Load(),
		PeakInFlight:  s.peakInFlight.Load(),
		MsgsOut:       s.msgsOut.Load(),
		BytesOut:      s.bytesOut.Load(),
		MsgsIn:        s.msgsIn.Load(),
		Pings:         s.pings.Load(),
		ListenAt:      s.listenAt.UnixNano(),
		LastUpgradeAt: s.lastUpgradeAt.Load(),
	}
}

// ResetPeak sets the peak of concurrent handshakes to the current count.
func (s *Server) ResetPeak() { s.peakInFlight.Store(s.inFlight.Load()) }

// Serve accepts connections until Close. It returns nil after Close.
func (s *Server) Serve() error {
	started := false
	s.serveOnce.Do(func() { started = true })
	if !started {
		return errors.New("firehose: Serve called twice")
	}
	defer close(s.acceptDone)
	backoff := time.Millisecond
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			if s.stopCtx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// Out of file descriptors and the like: wait and retry.
				select {
				case <-time.After(backoff):
				case <-s.stopCtx.Done():
					return nil
				}
				backoff = min(2*backoff, 100*time.Millisecond)
				continue
			}
			return err
		}
		backoff = time.Millisecond
		s.accepted.Add(1)
		if !s.track(nc, true) {
			nc.Close()
			return nil
		}
		s.wg.Add(1)
		go s.handle(nc)
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// track adds (add) or removes a connection; it reports false once closed.
func (s *Server) track(nc net.Conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.closed {
			return false
		}
		s.conns[nc] = struct{}{}
		return true
	}
	delete(s.conns, nc)
	return true
}

// Close stops accepting, closes every connection and waits for their
// goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.stop()
	err := s.ln.Close()
	for nc := range s.conns {
		nc.Close()
	}
	s.mu.Unlock()
	started := true
	s.serveOnce.Do(func() { started = false; close(s.acceptDone) })
	if started {
		<-s.acceptDone
	}
	s.wg.Wait()
	return err
}

func (s *Server) enterHandshake() {
	n := s.inFlight.Add(1)
	for i := 0; i < 1000; i++ {
		p := s.peakInFlight.Load()
		if n <= p || s.peakInFlight.CompareAndSwap(p, n) {
			return
		}
	}
}

func (s *Server) handle(nc net.Conn) {
	defer s.wg.Done()
	defer s.track(nc, false)
	defer nc.Close()

	s.enterHandshake()
	inHandshake := true
	defer func() {
		if inHandshake {
			s.inFlight.Add(-1)
		}
	}()
	_ = nc.SetDeadline(time.Now().Add(s.handshakeTimeout))
	br := bufio.NewReaderSize(nc, 4096)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	if !headerHas(req.Header, "Upgrade", "websocket") {
		s.serveHTTP(nc, req)
		return
	}
	cfg, err := s.connConfig(req)
	key := req.Header.Get("Sec-WebSocket-Key")
	if err != nil || req.Method != http.MethodGet || key == "" ||
		req.Header.Get("Sec-WebSocket-Version") != "13" || !headerHas(req.Header, "Connection", "upgrade") {
		msg := "bad websocket handshake"
		if err != nil {
			msg = err.Error()
		}
		fmt.Fprintf(nc, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(msg), msg)
		return
	}
	if cfg.HandshakeDelay > 0 {
		select {
		case <-time.After(cfg.HandshakeDelay):
		case <-s.stopCtx.Done():
			return
		}
	}
	resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acceptKey(key) + "\r\n\r\n"
	if _, err := nc.Write([]byte(resp)); err != nil {
		return
	}
	_ = nc.SetDeadline(time.Time{})
	inHandshake = false
	s.inFlight.Add(-1)
	s.upgrades.Add(1)
	s.lastUpgradeAt.Store(time.Now().UnixNano())
	s.active.Add(1)
	defer s.active.Add(-1)

	switch cfg.Mode {
	case ModeFirehose:
		s.firehose(nc, br, cfg)
	case ModeIdle:
		s.idle(nc, br)
	case ModeEcho:
		s.echo(nc, br)
	}
}

// serveHTTP answers a plain HTTP request: GET /stats returns the counters.
func (s *Server) serveHTTP(nc net.Conn, req *http.Request) {
	if req.URL.Path != "/stats" {
		fmt.Fprintf(nc, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		return
	}
	// This request was counted as a handshake in flight; do not let a stats
	// query show up in the peak it reports.
	st := s.Stats()
	st.InFlight--
	b, _ := json.Marshal(st)
	fmt.Fprintf(nc, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(b), b)
}

// connConfig applies the URL query's overrides to the server's config.
func (s *Server) connConfig(req *http.Request) (Config, error) {
	cfg := s.cfg
	q := req.URL.Query()
	if v := q.Get("mode"); v != "" {
		cfg.Mode = v
	}
	var err error
	intParam := func(name string, dst *int) {
		if v := q.Get(name); v != "" && err == nil {
			*dst, err = strconv.Atoi(v)
		}
	}
	intParam("size", &cfg.Size)
	intParam("rate", &cfg.Rate)
	intParam("batch", &cfg.Batch)
	if v := q.Get("count"); v != "" && err == nil {
		cfg.Count, err = strconv.ParseInt(v, 10, 64)
	}
	if v := q.Get("delay"); v != "" && err == nil {
		cfg.HandshakeDelay, err = time.ParseDuration(v)
	}
	if v := q.Get("binary"); v != "" && err == nil {
		cfg.Binary, err = strconv.ParseBool(v)
	}
	if v := q.Get("stamp"); v != "" && err == nil {
		cfg.Stamp, err = strconv.ParseBool(v)
	}
	if err != nil {
		return cfg, fmt.Errorf("firehose: bad query: %w", err)
	}
	cfg = cfg.withDefaults()
	return cfg, cfg.validate()
}

func headerHas(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

func acceptKey(key string) string {
	h := sha1.New()
	h.Write([]byte(key))
	h.Write([]byte("258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// idle answers pings and the close handshake and sends nothing.
func (s *Server) idle(nc net.Conn, br *bufio.Reader) {
	var buf []byte
	for {
		f, b, err := readFrame(br, buf)
		buf = b
		if err != nil {
			return
		}
		switch f.op {
		case opPing:
			s.pings.Add(1)
			if s.write(nc, encodeFrame(true, opPong, f.payload)) != nil {
				return
			}
		case opClose:
			_ = s.write(nc, closeReply(f.payload))
			return
		case opText, opBinary, opContinuation:
			if f.fin {
				s.msgsIn.Add(1)
			}
		}
	}
}

func (s *Server) write(nc net.Conn, b []byte) error {
	_ = nc.SetWriteDeadline(time.Now().Add(s.writeTimeout))
	_, err := nc.Write(b)
	return err
}

// echo sends every data frame back as it came (fragments stay fragments),
// flushing when no more input is buffered.
func (s *Server) echo(nc net.Conn, br *bufio.Reader) {
	bw := bufio.NewWriterSize(nc, 64<<10)
	var buf []byte
	for {
		f, b, err := readFrame(br, buf)
		buf = b
		if err != nil {
			return
		}
		switch f.op {
		case opPing:
			s.pings.Add(1)
			bw.Write(encodeFrame(true, opPong, f.payload))
		case opClose:
			bw.Write(closeReply(f.payload))
			_ = nc.SetWriteDeadline(time.Now().Add(s.writeTimeout))
			bw.Flush()
			return
		case opText, opBinary, opContinuation:
			hdr := appendFrameHeader(make([]byte, 0, 10), f.fin, f.op, len(f.payload))
			bw.Write(hdr)
			bw.Write(f.payload)
			if f.fin {
				s.msgsIn.Add(1)
				s.msgsOut.Add(1)
			}
			s.bytesOut.Add(int64(len(f.payload)))
		}
		if br.Buffered() == 0 {
			_ = nc.SetWriteDeadline(time.Now().Add(s.writeTimeout))
			if bw.Flush() != nil {
				return
			}
		}
	}
}

// firehose streams pre-encoded frames. A reader goroutine handles the
// client's frames: pings are answered by the writer between batches, and a
// close frame ends the stream.
func (s *Server) firehose(nc net.Conn, br *bufio.Reader, cfg Config) {
	op := byte(opText)
	if cfg.Binary {
		op = opBinary
	}
	payload := make([]byte, cfg.Size)
	for i := range payload {
		payload[i] = 'a' + byte(i%26)
	}
	one := encodeFrame(true, op, payload)
	hdrLen := len(one) - len(payload)
	perBatch := max(1, cfg.Batch/len(one))
	batch := make([]byte, 0, perBatch*len(one))
	for range perBatch {
		batch = append(batch, one...)
	}

	pongs := make(chan []byte, 4)
	closing := make(chan []byte, 1) // the client's close payload
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		var buf []byte
		for {
			f, b, err := readFrame(br, buf)
			buf = b
			if err != nil {
				closing <- nil
				return
			}
			switch f.op {
			case opPing:
				s.pings.Add(1)
				select {
				case pongs <- encodeFrame(true, opPong, f.payload):
				default: // the writer is behind; a later pong answers too
				}
			case opClose:
				closing <- append([]byte(nil), f.payload...)
				return
			case opText, opBinary, opContinuation:
				if f.fin {
					s.msgsIn.Add(1)
				}
			}
		}
	}()
	defer func() {
		nc.Close()
		<-readerDone
	}()

	remaining := cfg.Count // messages left; meaningful only if cfg.Count > 0
	// Rate-limited, the writer sleeps until the next message is due (a
	// timer, as fine as the runtime's timers are) and then writes every
	// message due by then in one batch.
	var timer *time.Timer
	var tick <-chan time.Time // nil unless rate-limited and not behind
	var start time.Time
	var sent int64
	if cfg.Rate > 0 {
		timer = time.NewTimer(time.Hour)
		defer timer.Stop()
		start = time.Now()
	}
	for {
		finished := cfg.Count > 0 && remaining == 0
		behind := false
		if timer != nil && !finished {
			due := int64(time.Since(start).Seconds()*float64(cfg.Rate)) - sent
			behind = due > 0
			if !behind {
				next := start.Add(time.Duration(float64(sent+1) / float64(cfg.Rate) * 1e9))
				timer.Reset(time.Until(next))
			}
		}
		// Wait for something to do: the next message's time when
		// rate-limited, any control frame; do not wait while there is data
		// to send.
		wait := finished || (timer != nil && !behind)
		tick = nil
		if timer != nil && !finished && !behind {
			tick = timer.C
		}
		var stopCh <-chan struct{}
		if wait {
			stopCh = s.stopCtx.Done()
		}
		if wait {
			select {
			case p := <-pongs:
				if s.write(nc, p) != nil {
					return
				}
				continue
			case cp := <-closing:
				s.finish(nc, pongs, cp)
				return
			case <-tick:
				continue
			case <-stopCh:
				return
			}
		}
		select {
		case p := <-pongs:
			if s.write(nc, p) != nil {
				return
			}
			continue
		case cp := <-closing:
			s.finish(nc, pongs, cp)
			return
		default:
		}
		n := int64(perBatch)
		if timer != nil {
			n = min(n, int64(time.Since(start).Seconds()*float64(cfg.Rate))-sent)
		}
		if cfg.Count > 0 {
			n = min(n, remaining)
		}
		if n <= 0 {
			continue
		}
		if cfg.Stamp {
			now := time.Now().UnixNano()
			for i := range int(n) {
				putStamp(batch[i*len(one)+hdrLen:], now)
			}
		}
		if s.write(nc, batch[:int(n)*len(one)]) != nil {
			return
		}
		sent += n
		remaining -= n
		s.msgsOut.Add(n)
		s.bytesOut.Add(n * int64(cfg.Size))
	}
}

// finish answers the pings that came before the client's close frame, then
// the close frame itself (cp nil: the client left without one).
func (s *Server) finish(nc net.Conn, pongs <-chan []byte, cp []byte) {
	for range cap(pongs) {
		select {
		case p := <-pongs:
			if s.write(nc, p) != nil {
				return
			}
			continue
		default:
		}
		break
	}
	if cp != nil {
		_ = s.write(nc, closeReply(cp))
	}
}

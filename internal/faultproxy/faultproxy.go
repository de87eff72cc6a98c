// Package faultproxy implements a fault-injecting TCP proxy for tests.
//
// A Proxy listens on a loopback port and forwards every accepted connection
// to a target address. While connections are open, a test can pause
// forwarding (Blackhole), add latency, limit bandwidth, split data into tiny
// writes, reset or close connections, or make new connections fail. It is
// intended only for exercising network code (such as a reconnecting
// WebSocket client) against a real server on 127.0.0.1; it is not meant for
// production traffic.
package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// readBufSize is the largest chunk read from a socket in one call.
	readBufSize = 32 << 10
	// maxInFlight bounds the bytes that have been read from one side but not
	// yet written to the other, per direction of each connection. When it is
	// reached the proxy stops reading until the writer catches up.
	maxInFlight = 1 << 20
	// paceSlots is how many writes per second, at most, the bandwidth
	// limiter aims for: writes are capped at bytesPerSec/paceSlots bytes so
	// that pacing stays smooth.
	paceSlots = 50
	// dialTimeout bounds connecting to the target.
	dialTimeout = 10 * time.Second
)

// Mode selects whether a Proxy forwards data.
type Mode int

const (
	// PassThrough forwards data in both directions.
	PassThrough Mode = iota
	// Blackhole keeps both sockets of every connection open but forwards
	// nothing: the proxy stops reading, so TCP buffers fill up, and any
	// data (or half-close) it has already read is held. Nothing is
	// discarded; switching back to PassThrough resumes forwarding where it
	// stopped.
	Blackhole
)

// String returns the name of the mode.
func (m Mode) String() string {
	switch m {
	case PassThrough:
		return "PassThrough"
	case Blackhole:
		return "Blackhole"
	default:
		return fmt.Sprintf("Mode(%d)", int(m))
	}
}

// settings is a snapshot of the live knobs of a Proxy.
type settings struct {
	mode      Mode
	latency   time.Duration
	bandwidth int
	slice     int
	// changed is closed when any knob changes after this snapshot.
	changed <-chan struct{}
}

// Proxy forwards TCP connections from a loopback listener to a target address.
// All methods are safe for concurrent use.
type Proxy struct {
	ln     *net.TCPListener
	ctx    context.Context // canceled by Close; aborts dials
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the proxy starts

	accepted atomic.Int64
	up, down atomic.Int64

	mu        sync.Mutex
	target    string
	mode      Mode
	latency   time.Duration
	bandwidth int
	slice     int
	refuse    bool
	changed   chan struct{} // closed and replaced on every knob change
	conns     map[*conn]struct{}
	closed    bool

	closeOnce sync.Once
	closeErr  error
}

// New starts a proxy listening on 127.0.0.1 with an ephemeral port that
// forwards connections to target (a "host:port" address). It starts
// accepting connections immediately, in PassThrough mode with no faults.
// Call Close to release it.
func New(target string) (*Proxy, error) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		ln:      ln,
		ctx:     ctx,
		cancel:  cancel,
		target:  target,
		changed: make(chan struct{}),
		conns:   make(map[*conn]struct{}),
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the "127.0.0.1:port" address clients should connect to.
func (p *Proxy) Addr() string {
	return p.ln.Addr().String()
}

// SetTarget changes the address that new connections are forwarded to.
// Open connections are unaffected.
func (p *Proxy) SetTarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

// SetMode switches between PassThrough and Blackhole. It applies to open and
// future connections and can be called at any time; no bytes are lost when
// switching back to PassThrough. Values other than Blackhole forward data.
func (p *Proxy) SetMode(m Mode) {
	p.update(func() { p.mode = m })
}

// SetLatency adds a one-way delay d to every chunk of data in each
// direction: a chunk read at time t is written no earlier than t+d. Reading
// continues while writes are delayed (up to an in-flight bound). Zero
// disables it. It applies to open and future connections.
func (p *Proxy) SetLatency(d time.Duration) {
	if d < 0 {
		d = 0
	}
	p.update(func() { p.latency = d })
}

// SetBandwidth limits each direction of each connection to about
// bytesPerSec bytes per second. Zero (or a negative value) means unlimited.
// It applies to open and future connections.
func (p *Proxy) SetBandwidth(bytesPerSec int) {
	if bytesPerSec < 0 {
		bytesPerSec = 0
	}
	p.update(func() { p.bandwidth = bytesPerSec })
}

// SetSlice makes the proxy forward data in writes of at most n bytes, to
// exercise peers with tiny reads. Zero (or a negative value) turns it off.
// It applies to open and future connections.
func (p *Proxy) SetSlice(n int) {
	if n < 0 {
		n = 0
	}
	p.update(func() { p.slice = n })
}

// SetRefuse, when on, makes the proxy reset every newly accepted connection
// at once, simulating a server that is down while the port stays open.
// Existing connections are unaffected.
func (p *Proxy) SetRefuse(on bool) {
	p.mu.Lock()
	p.refuse = on
	p.mu.Unlock()
}

// ResetAll aborts every open connection, sending a TCP RST to both the
// client and the server.
func (p *Proxy) ResetAll() {
	for _, c := range p.snapshotConns() {
		c.shutdown(true)
	}
}

// CloseAll closes every open connection gracefully: both the client and the
// server see an orderly close (FIN).
func (p *Proxy) CloseAll() {
	for _, c := range p.snapshotConns() {
		c.shutdown(false)
	}
}

// ConnCount returns the number of proxied connections currently open,
// including accepted ones whose connection to the target is still being
// established.
func (p *Proxy) ConnCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Accepted returns the total number of connections accepted, including
// refused ones.
func (p *Proxy) Accepted() int64 {
	return p.accepted.Load()
}

// BytesForwarded returns the total bytes written to servers (up,
// client->server) and to clients (down, server->client) over all
// connections.
func (p *Proxy) BytesForwarded() (up, down int64) {
	return p.up.Load(), p.down.Load()
}

// Close stops listening, resets every open connection and waits for all of
// the proxy's goroutines to exit. It is idempotent; later calls wait for the
// first to finish and return its result.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.cancel()
		if err := p.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			p.closeErr = err
		}
		p.ResetAll()
		p.wg.Wait()
	})
	return p.closeErr
}

// update applies f to the knobs under the lock and wakes everything waiting
// on the previous settings.
func (p *Proxy) update(f func()) {
	p.mu.Lock()
	f()
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

func (p *Proxy) settings() settings {
	p.mu.Lock()
	defer p.mu.Unlock()
	return settings{
		mode:      p.mode,
		latency:   p.latency,
		bandwidth: p.bandwidth,
		slice:     p.slice,
		changed:   p.changed,
	}
}

func (p *Proxy) snapshotConns() []*conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	cs := make([]*conn, 0, len(p.conns))
	for c := range p.conns {
		cs = append(cs, c)
	}
	return cs
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	var backoff time.Duration
	for {
		cc, err := p.ln.AcceptTCP()
		if err != nil {
			if p.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Unexpected (e.g. out of file descriptors): back off,
			// interruptibly, and retry.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff *= 2; backoff > time.Second {
				backoff = time.Second
			}
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-p.ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		backoff = 0
		p.accepted.Add(1)

		p.mu.Lock()
		if p.closed || p.refuse {
			p.mu.Unlock()
			closeTCP(cc, true)
			continue
		}
		c := &conn{p: p, client: cc, done: make(chan struct{})}
		p.conns[c] = struct{}{}
		target := p.target
		p.wg.Add(1)
		p.mu.Unlock()
		go c.start(target)
	}
}

// closeTCP closes c, with an RST instead of a FIN if reset is set.
func closeTCP(c *net.TCPConn, reset bool) {
	if reset {
		_ = c.SetLinger(0)
	}
	_ = c.Close()
}

// conn is one proxied connection.
type conn struct {
	p      *Proxy
	client *net.TCPConn
	done   chan struct{} // closed by shutdown

	// Guarded by p.mu.
	server   *net.TCPConn // nil until dialed
	closed   bool
	finished int // directions that ended cleanly (EOF forwarded)
}

// start dials the target and, on success, starts the four pump goroutines.
// It runs in its own goroutine, counted in p.wg.
func (c *conn) start(target string) {
	p := c.p
	defer p.wg.Done()
	d := net.Dialer{Timeout: dialTimeout}
	nc, err := d.DialContext(p.ctx, "tcp", target)
	if err != nil {
		// Target down: reset the client, like a refused connection.
		c.shutdown(true)
		return
	}
	sc, ok := nc.(*net.TCPConn)
	if !ok {
		_ = nc.Close()
		c.shutdown(true)
		return
	}
	p.mu.Lock()
	if c.closed {
		p.mu.Unlock()
		closeTCP(sc, true)
		return
	}
	c.server = sc
	upQ, downQ := newQueue(), newQueue()
	p.wg.Add(4)
	p.mu.Unlock()

	go c.readLoop(c.client, upQ)
	go c.writeLoop(sc, upQ, &p.up)
	go c.readLoop(sc, downQ)
	go c.writeLoop(c.client, downQ, &p.down)
}

// shutdown closes both sockets (with RST if reset) and wakes every goroutine
// of the connection. Only the first call has an effect.
func (c *conn) shutdown(reset bool) {
	p := c.p
	p.mu.Lock()
	if c.closed {
		p.mu.Unlock()
		return
	}
	c.closed = true
	delete(p.conns, c)
	close(c.done)
	sc := c.server
	p.mu.Unlock()

	closeTCP(c.client, reset)
	if sc != nil {
		closeTCP(sc, reset)
	}
}

// directionDone records that one direction forwarded its EOF; when both
// have, the connection is closed.
func (c *conn) directionDone() {
	p := c.p
	p.mu.Lock()
	c.finished++
	both := c.finished == 2
	p.mu.Unlock()
	if both {
		c.shutdown(false)
	}
}

// wait blocks until d elapses (forever if d < 0), changed is closed, or the
// connection is shut down. It reports false in the last case.
func (c *conn) wait(d time.Duration, changed <-chan struct{}) bool {
	var tc <-chan time.Time
	if d >= 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		tc = t.C
	}
	select {
	case <-tc:
		return true
	case <-changed:
		return true
	case <-c.done:
		return false
	}
}

// readLoop reads from src into q until EOF or error. It does not read while
// the proxy is in Blackhole mode, nor while q is full.
func (c *conn) readLoop(src *net.TCPConn, q *queue) {
	defer c.p.wg.Done()
	buf := make([]byte, readBufSize)
	for {
		for {
			s := c.p.settings()
			if s.mode != Blackhole {
				break
			}
			if !c.wait(-1, s.changed) {
				return
			}
		}
		n, err := src.Read(buf)
		if n > 0 {
			data := make([]byte, n)
			copy(data, buf[:n])
			if !q.push(chunk{data: data, at: time.Now()}, c.done) {
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				q.closeEOF()
			} else {
				// Includes ECONNRESET from the peer (propagated as a
				// reset) and errors caused by our own shutdown (no-op).
				c.shutdown(true)
			}
			return
		}
	}
}

// writeLoop writes the chunks of q to dst, applying the proxy's knobs, and
// half-closes dst once q reports EOF.
func (c *conn) writeLoop(dst *net.TCPConn, q *queue, counter *atomic.Int64) {
	defer c.p.wg.Done()
	var pace pacer
	for {
		ch, ok, alive := q.pop(c.done)
		if !alive {
			return
		}
		if !ok {
			// EOF from the source and everything before it forwarded.
			// The FIN is subject to Blackhole and latency like data.
			if _, alive := c.waitReady(ch.at, &pace); !alive {
				return
			}
			if err := dst.CloseWrite(); err != nil {
				c.shutdown(true)
				return
			}
			c.directionDone()
			return
		}
		data := ch.data
		for len(data) > 0 {
			s, alive := c.waitReady(ch.at, &pace)
			if !alive {
				return
			}
			n := len(data)
			if s.slice > 0 && n > s.slice {
				n = s.slice
			}
			if s.bandwidth > 0 {
				n = min(n, max(s.bandwidth/paceSlots, 1))
			}
			w, err := dst.Write(data[:n])
			counter.Add(int64(w))
			if err != nil {
				c.shutdown(true)
				return
			}
			pace.sent(w)
			data = data[n:]
		}
		q.release(len(ch.data))
	}
}

// waitReady blocks until the next piece of a chunk read at time at may be
// written: the proxy is not in Blackhole, the latency has elapsed and the
// bandwidth limiter allows it. It returns the settings to write with, or
// false if the connection was shut down.
func (c *conn) waitReady(at time.Time, pace *pacer) (settings, bool) {
	for {
		s := c.p.settings()
		if s.mode == Blackhole {
			if !c.wait(-1, s.changed) {
				return s, false
			}
			continue
		}
		if s.latency > 0 {
			if d := time.Until(at.Add(s.latency)); d > 0 {
				if !c.wait(d, s.changed) {
					return s, false
				}
				continue
			}
		}
		if d := pace.delay(s.bandwidth); d > 0 {
			if !c.wait(d, s.changed) {
				return s, false
			}
			continue
		}
		return s, true
	}
}

// pacer spaces writes so that one direction averages at most rate bytes per
// second. After sending n bytes, the next write may start n/rate later.
type pacer struct {
	rate int       // bytes per second the schedule was computed for; 0 = off
	next time.Time // earliest start of the next write
}

// delay returns how long to wait before writing at the given rate.
func (pc *pacer) delay(rate int) time.Duration {
	if rate != pc.rate { // limit changed: restart the schedule
		pc.rate = rate
		pc.next = time.Time{}
	}
	if rate <= 0 || pc.next.IsZero() {
		return 0
	}
	return time.Until(pc.next)
}

// sent records that n bytes were written.
func (pc *pacer) sent(n int) {
	if pc.rate <= 0 {
		return
	}
	now := time.Now()
	if pc.next.Before(now) {
		pc.next = now
	}
	pc.next = pc.next.Add(time.Duration(int64(n) * int64(time.Second) / int64(pc.rate)))
}

// chunk is data read from one side at time at.
type chunk struct {
	data []byte
	at   time.Time
}

// queue is a FIFO of chunks between the reader and the writer of one
// direction, bounded to maxInFlight bytes. It has a single producer and a
// single consumer. A popped chunk keeps counting against the bound until
// the consumer releases it.
type queue struct {
	mu       sync.Mutex
	items    []chunk
	bytes    int
	eof      bool
	eofAt    time.Time     // when EOF was read
	notEmpty chan struct{} // capacity 1: wakes the consumer
	notFull  chan struct{} // capacity 1: wakes the producer
}

func newQueue() *queue {
	return &queue{
		notEmpty: make(chan struct{}, 1),
		notFull:  make(chan struct{}, 1),
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// push appends ch, blocking while the queue is full. It reports false if
// done was closed first.
func (q *queue) push(ch chunk, done <-chan struct{}) bool {
	for {
		q.mu.Lock()
		if q.bytes == 0 || q.bytes+len(ch.data) <= maxInFlight {
			q.items = append(q.items, ch)
			q.bytes += len(ch.data)
			q.mu.Unlock()
			signal(q.notEmpty)
			return true
		}
		q.mu.Unlock()
		select {
		case <-q.notFull:
		case <-done:
			return false
		}
	}
}

// closeEOF marks the end of the stream.
func (q *queue) closeEOF() {
	q.mu.Lock()
	q.eof = true
	q.eofAt = time.Now()
	q.mu.Unlock()
	signal(q.notEmpty)
}

// pop removes the oldest chunk, blocking while the queue is empty. ok is
// false at end of stream, and then ch.at is when EOF was read; alive is
// false if done was closed first.
func (q *queue) pop(done <-chan struct{}) (ch chunk, ok, alive bool) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			ch = q.items[0]
			q.items[0] = chunk{}
			q.items = q.items[1:]
			q.mu.Unlock()
			return ch, true, true
		}
		eof, eofAt := q.eof, q.eofAt
		q.mu.Unlock()
		if eof {
			return chunk{at: eofAt}, false, true
		}
		select {
		case <-q.notEmpty:
		case <-done:
			return chunk{}, false, false
		}
	}
}

// release returns n bytes of a popped chunk to the in-flight budget.
func (q *queue) release(n int) {
	q.mu.Lock()
	q.bytes -= n
	q.mu.Unlock()
	signal(q.notFull)
}

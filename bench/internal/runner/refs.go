package runner

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/lxzan/gws"
	"github.com/wspool/wspool"
)

// Reference clients: other Go WebSocket clients on the same workload.
const (
	// ModeGws is github.com/lxzan/gws with its defaults (a 4 KiB read
	// buffer, no UTF-8 check), one ReadLoop goroutine per connection and
	// an OnMessage that releases the message at once.
	ModeGws = "gws"
	// ModeFrames is a bare frame loop on github.com/gobwas/ws: read a frame
	// header, read its payload into one reused buffer, nothing else (no
	// UTF-8 check, no control-frame handling beyond stopping at close).
	// The practical limit for a Go client.
	ModeFrames = "gobwas"
)

// framesReadBuffer is the frame loop's bufio.Reader size in throughput runs
// (the size of wspool's pooled reads); idle runs use gobwas's default 4 KiB.
const framesReadBuffer = 16 << 10

// gwsFeed is one gws connection's event handler.
type gwsFeed struct {
	gws.BuiltinEventHandler
	n *atomic.Int64
	// on, if set, is called with every message's payload.
	on func([]byte)
	// onPong, if set, runs on every pong (the idle keepalive).
	onPong func(*gws.Conn)
}

func (h *gwsFeed) OnMessage(_ *gws.Conn, m *gws.Message) {
	if h.on != nil {
		h.on(m.Bytes())
	}
	h.n.Add(1)
	m.Close()
}

func (h *gwsFeed) OnPong(c *gws.Conn, _ []byte) {
	if h.onPong != nil {
		h.onPong(c)
	}
}

// dialGws dials one gws client connection.
func dialGws(url string, h gws.Event) (*gws.Conn, error) {
	c, _, err := gws.NewClient(h, &gws.ClientOption{Addr: url, HandshakeTimeout: 10 * time.Second})
	return c, err
}

func startGws(ctx context.Context, url string, feeds int, on onMessage) (*Receiver, error) {
	counters := make([]paddedCounter, feeds)
	conns := make([]*gws.Conn, feeds)
	var wg sync.WaitGroup
	closeAll := func() {
		for _, c := range conns {
			if c != nil {
				_ = c.NetConn().Close()
			}
		}
		wg.Wait()
	}
	// As many handshakes at once as wspool's default, as the raw client.
	err := parallel(ctx, feeds, wspool.DefaultMaxConcurrentDials, func(i int) error {
		h := &gwsFeed{n: &counters[i].n}
		if on != nil {
			h.on = on(i)
		}
		c, err := dialGws(url, h)
		if err != nil {
			return fmt.Errorf("runner: gws dial %d: %w", i, err)
		}
		conns[i] = c
		wg.Go(c.ReadLoop)
		return nil
	})
	if err != nil {
		closeAll()
		return nil, err
	}
	r := &Receiver{Mode: ModeGws, Feeds: feeds, errs: make(chan error, 1), close: closeAll}
	r.perFeed = countersOf(counters)
	return r, nil
}

func countersOf(counters []paddedCounter) func(dst []int64) []int64 {
	return func(dst []int64) []int64 {
		for i := range counters {
			dst = append(dst, counters[i].n.Load())
		}
		return dst
	}
}

// dialFrames dials one gobwas connection and returns it with a reader of
// bufSize bytes that holds whatever the server sent after its 101.
func dialFrames(ctx context.Context, url string, bufSize int) (net.Conn, *bufio.Reader, error) {
	d := ws.Dialer{ReadBufferSize: bufSize, Timeout: 10 * time.Second}
	c, br, _, err := d.Dial(ctx, url)
	if err != nil {
		return nil, nil, err
	}
	if br == nil {
		br = bufio.NewReaderSize(c, bufSize)
	}
	return c, br, nil
}

// frameLoop reads frames until an error or a close frame; n counts data
// messages (frames with FIN set, not control frames), and on, if set, is
// called with each such frame's payload.
func frameLoop(br *bufio.Reader, n *atomic.Int64, on func([]byte)) error {
	var buf []byte
	for {
		h, err := ws.ReadHeader(br)
		if err != nil {
			return err
		}
		if h.Length > int64(cap(buf)) {
			buf = make([]byte, h.Length)
		}
		p := buf[:h.Length]
		if _, err := io.ReadFull(br, p); err != nil {
			return err
		}
		switch {
		case h.OpCode == ws.OpClose:
			return io.EOF
		case h.OpCode.IsControl():
		case h.Fin:
			if on != nil {
				on(p)
			}
			n.Add(1)
		}
	}
}

func startFrames(ctx context.Context, url string, feeds int, on onMessage) (*Receiver, error) {
	counters := make([]paddedCounter, feeds)
	conns := make([]net.Conn, feeds)
	var wg sync.WaitGroup
	closeAll := func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
		wg.Wait()
	}
	err := parallel(ctx, feeds, wspool.DefaultMaxConcurrentDials, func(i int) error {
		c, br, err := dialFrames(ctx, url, framesReadBuffer)
		if err != nil {
			return fmt.Errorf("runner: gobwas dial %d: %w", i, err)
		}
		conns[i] = c
		n := &counters[i].n
		var f func([]byte)
		if on != nil {
			f = on(i)
		}
		wg.Go(func() { _ = frameLoop(br, n, f) })
		return nil
	})
	if err != nil {
		closeAll()
		return nil, err
	}
	r := &Receiver{Mode: ModeFrames, Feeds: feeds, errs: make(chan error, 1), close: closeAll}
	r.perFeed = countersOf(counters)
	return r, nil
}

// parallel runs f(0..n-1) on at most par goroutines; it stops at the first
// error or when ctx ends, and returns that error.
func parallel(ctx context.Context, n, par int, f func(i int) error) error {
	var next atomic.Int64
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range min(par, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := f(i); err != nil {
					select {
					case errs <- err:
					default:
					}
					next.Store(int64(n))
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return ctx.Err()
	}
}

// idleRefs connects feeds reference clients (gws or the gobwas frame loop)
// for an idle run, each with a ping every wspool.DefaultPingInterval from a
// time.AfterFunc started when it connects, and a read deadline of ping
// interval + pong timeout that every pong (gws) or frame (gobwas) pushes
// forward: the keepalive each library's documentation suggests. It returns
// the live count and a closer.
func idleRefs(ctx context.Context, mode, url string, feeds int) (connected func() int, closeAll func(), err error) {
	var (
		alive   sync.WaitGroup
		live    atomic.Int64
		mu      sync.Mutex // guards closers and timers
		closers []func()
		timers  []*time.Timer
	)
	const deadline = wspool.DefaultPingInterval + wspool.DefaultPongTimeout
	closeAll = func() {
		mu.Lock()
		for _, t := range timers {
			t.Stop()
		}
		cs := closers
		mu.Unlock()
		for _, c := range cs {
			c()
		}
		alive.Wait()
	}
	// track registers a connection's closer and starts its ping timer.
	track := func(closer func(), ping func() error) {
		mu.Lock()
		defer mu.Unlock()
		var t *time.Timer
		t = time.AfterFunc(wspool.DefaultPingInterval, func() {
			if ping() == nil {
				mu.Lock()
				t.Reset(wspool.DefaultPingInterval)
				mu.Unlock()
			}
		})
		closers = append(closers, closer)
		timers = append(timers, t)
	}
	payload := []byte("ping")
	dial := func(i int) error {
		switch mode {
		case ModeGws:
			h := &gwsFeed{n: new(atomic.Int64), onPong: func(c *gws.Conn) { _ = c.SetReadDeadline(time.Now().Add(deadline)) }}
			c, err := dialGws(url, h)
			if err != nil {
				return fmt.Errorf("runner: gws dial %d: %w", i, err)
			}
			_ = c.SetReadDeadline(time.Now().Add(deadline))
			live.Add(1)
			alive.Go(func() { defer live.Add(-1); c.ReadLoop() })
			track(func() { _ = c.NetConn().Close() }, func() error { return c.WritePing(payload) })
		case ModeFrames:
			c, br, err := dialFrames(ctx, url, ws.DefaultClientReadBufferSize)
			if err != nil {
				return fmt.Errorf("runner: gobwas dial %d: %w", i, err)
			}
			_ = c.SetReadDeadline(time.Now().Add(deadline))
			live.Add(1)
			alive.Go(func() {
				defer live.Add(-1)
				for {
					// Idle: only pongs arrive; any frame is proof of life.
					h, err := ws.ReadHeader(br)
					if err != nil || h.OpCode == ws.OpClose {
						return
					}
					_ = c.SetReadDeadline(time.Now().Add(deadline))
					if _, err := br.Discard(int(h.Length)); err != nil {
						return
					}
				}
			})
			ping := ws.MustCompileFrame(ws.MaskFrame(ws.NewPingFrame(payload)))
			// The reader never writes (pongs are not answered: the server
			// sends no pings), so the timer is the only writer.
			track(func() { _ = c.Close() }, func() error {
				_ = c.SetWriteDeadline(time.Now().Add(wspool.DefaultWriteTimeout))
				_, err := c.Write(ping)
				return err
			})
		default:
			return fmt.Errorf("runner: unknown mode %q", mode)
		}
		return nil
	}
	if err := parallel(ctx, feeds, wspool.DefaultMaxConcurrentDials, dial); err != nil {
		closeAll()
		return nil, nil, err
	}
	return func() int { return int(live.Load()) }, closeAll, nil
}

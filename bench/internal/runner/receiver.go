// Package runner holds the client side of the benchmarks: the same workload
// driven through wspool (Client or Pool) or through raw gorilla connections,
// and the measurements around it. The wsbench command runs each in its own
// process; the Go benchmarks in this package run them in-process.
package runner

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
)

// Modes of a client.
const (
	ModeWspool = "wspool"
	ModeRaw    = "raw"
	// ModeRawPing (idle only) is raw plus a ping every
	// wspool.DefaultPingInterval from a time.AfterFunc per connection: the
	// least a client with heartbeats can do.
	ModeRawPing = "raw+ping"
)

// Tuning applies to both wspool and raw clients of a run (not to the
// reference clients, which run with their own defaults).
type Tuning struct {
	// ReadBuffer is the gorilla read buffer size (Dialer.ReadBufferSize);
	// 0 keeps gorilla's default (4096).
	ReadBuffer int
}

// dialer returns the gorilla dialer for raw connections.
func (t Tuning) dialer() *websocket.Dialer {
	if t.ReadBuffer == 0 {
		return websocket.DefaultDialer
	}
	d := *websocket.DefaultDialer
	d.ReadBufferSize = t.ReadBuffer
	return &d
}

// options returns the wspool options for the tuning.
func (t Tuning) options() []wspool.Option {
	if t.ReadBuffer == 0 {
		return nil
	}
	d := *websocket.DefaultDialer
	d.ReadBufferSize = t.ReadBuffer
	return []wspool.Option{wspool.WithDialer(&d)}
}

// WithQuery returns base with the query parameters kv (name, value, ...) set.
func WithQuery(base string, kv ...string) string {
	u, err := url.Parse(base)
	if err != nil {
		return base
	}
	q := u.Query()
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// paddedCounter keeps each raw feed's counter on its own cache line.
type paddedCounter struct {
	n atomic.Int64
	_ [56]byte
}

// Receiver is a set of feeds reading from a server with a no-op handler.
type Receiver struct {
	Mode  string
	Feeds int
	// perFeed returns each feed's message count.
	perFeed func(dst []int64) []int64
	close   func()
	// Client and Pool are set in wspool mode (Client for one feed, Pool for
	// more); Conns in raw mode.
	Client *wspool.Client
	Pool   *wspool.Pool
	Conns  []*websocket.Conn
	errs   chan error
}

// Total returns the messages received by all feeds.
func (r *Receiver) Total() int64 {
	var t int64
	for _, n := range r.perFeed(nil) {
		t += n
	}
	return t
}

// WaitAll waits until every feed has received at least one message.
func (r *Receiver) WaitAll(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var buf []int64
	for time.Now().Before(deadline) {
		buf = r.perFeed(buf[:0])
		ok := true
		for _, n := range buf {
			if n == 0 {
				ok = false
				break
			}
		}
		if ok {
			return nil
		}
		select {
		case err := <-r.errs:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return fmt.Errorf("runner: not every %s feed received a message within %v", r.Mode, timeout)
}

// Close stops every feed and waits for its goroutines.
func (r *Receiver) Close() { r.close() }

// noop is the handler of the throughput benchmarks.
func noop(context.Context, wspool.Message) error { return nil }

// StartReceiver connects feeds feeds to url in the given mode.
func StartReceiver(ctx context.Context, mode, url string, feeds int, tune Tuning) (*Receiver, error) {
	return startReceiver(ctx, mode, url, feeds, tune, nil)
}

// onMessage, if not nil, returns feed i's function called with each data
// message's payload as soon as the client hands it over (the handler's
// first statement); the payload is valid only during the call.
type onMessage func(i int) func(data []byte)

// ModeWspoolQueue (latency only) is wspool with a queue between the reader
// and the handler: WithQueue(Queue{Messages: 1024}), Block.
const ModeWspoolQueue = "wspool+queue"

func startReceiver(ctx context.Context, mode, url string, feeds int, tune Tuning, on onMessage) (*Receiver, error) {
	switch mode {
	case ModeWspool:
		return startWspool(ctx, url, feeds, on, tune.options()...)
	case ModeWspoolQueue:
		r, err := startWspool(ctx, url, feeds, on, append(tune.options(), wspool.WithQueue(wspool.Queue{Messages: 1024}))...)
		if r != nil {
			r.Mode = mode
		}
		return r, err
	case ModeRaw:
		return startRaw(ctx, url, feeds, tune.dialer(), on)
	case ModeGws:
		return startGws(ctx, url, feeds, on)
	case ModeFrames:
		return startFrames(ctx, url, feeds, on)
	}
	return nil, fmt.Errorf("runner: unknown mode %q", mode)
}

// handlerFor returns feed i's handler: the no-op, or one that passes the
// payload to on(i).
func handlerFor(on onMessage, i int) wspool.Handler {
	if on == nil {
		return noop
	}
	f := on(i)
	return func(_ context.Context, m wspool.Message) error {
		f(m.Data)
		return nil
	}
}

func startWspool(ctx context.Context, url string, feeds int, on onMessage, opts ...wspool.Option) (*Receiver, error) {
	r := &Receiver{Mode: ModeWspool, Feeds: feeds, errs: make(chan error, 1)}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	if feeds == 1 {
		c, err := wspool.NewClient(url, handlerFor(on, 0), append(opts, wspool.WithName("f0"))...)
		if err != nil {
			cancel()
			return nil, err
		}
		r.Client = c
		wg.Go(func() {
			if err := c.Run(ctx); err != nil {
				r.errs <- err
			}
		})
		r.perFeed = func(dst []int64) []int64 { return append(dst, c.Stats().MessagesIn) }
		r.close = func() { c.Close(); cancel(); wg.Wait() }
		return r, nil
	}
	popts := make([]wspool.PoolOption, len(opts))
	for i, o := range opts {
		popts[i] = o
	}
	p, err := wspool.NewPool(popts...)
	if err != nil {
		cancel()
		return nil, err
	}
	cs := make([]*wspool.Client, feeds)
	for i := range cs {
		cs[i], err = p.Add(url, handlerFor(on, i), wspool.WithName(fmt.Sprintf("f%d", i)))
		if err != nil {
			cancel()
			return nil, err
		}
	}
	r.Pool = p
	wg.Go(func() {
		if err := p.Run(ctx); err != nil {
			r.errs <- err
		}
	})
	r.perFeed = func(dst []int64) []int64 {
		for _, c := range cs {
			dst = append(dst, c.Stats().MessagesIn)
		}
		return dst
	}
	r.close = func() { p.Close(); cancel(); wg.Wait() }
	return r, nil
}

// dialRaw dials n gorilla connections with at most par handshakes at once.
// onConn, if set, is called with each connection as soon as it is up.
func dialRaw(ctx context.Context, d *websocket.Dialer, url string, n, par int, onConn func(i int, c *websocket.Conn)) ([]*websocket.Conn, error) {
	conns := make([]*websocket.Conn, n)
	errs := make(chan error, 1)
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range min(par, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				c, _, err := d.DialContext(ctx, url, nil)
				if err != nil {
					select {
					case errs <- fmt.Errorf("runner: raw dial %d: %w", i, err):
					default:
					}
					next.Store(int64(n))
					return
				}
				conns[i] = c
				if onConn != nil {
					onConn(i, c)
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		return nil, err
	default:
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return conns, nil
}

func startRaw(ctx context.Context, url string, feeds int, d *websocket.Dialer, on onMessage) (*Receiver, error) {
	conns, err := dialRaw(ctx, d, url, feeds, wspool.DefaultMaxConcurrentDials, nil)
	if err != nil {
		return nil, err
	}
	r := &Receiver{Mode: ModeRaw, Feeds: feeds, Conns: conns, errs: make(chan error, 1)}
	counters := make([]paddedCounter, feeds)
	var wg sync.WaitGroup
	for i, c := range conns {
		ctr := &counters[i].n
		var f func([]byte)
		if on != nil {
			f = on(i)
		}
		wg.Go(func() {
			for {
				_, data, err := c.ReadMessage()
				if err != nil {
					return
				}
				if f != nil {
					f(data)
				}
				ctr.Add(1)
			}
		})
	}
	r.perFeed = func(dst []int64) []int64 {
		for i := range counters {
			dst = append(dst, counters[i].n.Load())
		}
		return dst
	}
	r.close = func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}
	return r, nil
}

// errTimeout is returned when a bounded wait runs out.
var errTimeout = errors.New("runner: timed out")

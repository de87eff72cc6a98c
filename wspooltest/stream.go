package wspooltest

import (
	"strconv"
	"sync"
	"time"
)

// Stream is a script for a Server that serves sequenced streams: each URL
// path is one stream of the numbers 1, 2, 3, ..., one produced every
// interval, sent as decimal text messages. A connection whose URL has a
// resume point (?from=N) gets N and every number after it (from the
// stream's history, then live); without one it starts at the live head. A
// stream starts producing when it is first connected to.
//
//	st := wspooltest.NewStream(10 * time.Millisecond)
//	defer st.Close()
//	srv, err := wspooltest.NewServer(st.Serve)
type Stream struct {
	interval time.Duration
	stop     chan struct{}
	stopped  chan struct{}
	once     sync.Once

	mu    sync.Mutex
	feeds map[string]*stream
}

type stream struct {
	head    uint64
	skip    int             // live numbers still to leave out
	skipped map[uint64]bool // numbers left out of the live stream
	wakes   map[chan struct{}]struct{}
}

// NewStream returns a Stream producing one number per interval on every
// stream connected to so far. Close stops it.
func NewStream(interval time.Duration) *Stream {
	st := &Stream{interval: interval, stop: make(chan struct{}), stopped: make(chan struct{}), feeds: map[string]*stream{}}
	go st.produce()
	return st
}

// Close stops producing and makes every Serve return.
func (st *Stream) Close() {
	st.once.Do(func() { close(st.stop) })
	<-st.stopped
}

// Head returns the newest number produced on the stream of path.
func (st *Stream) Head(path string) uint64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.feed(path).head
}

// Skip leaves the next n numbers of the stream of path out of what is sent
// live to the connections open while they are produced: a gap. They stay in
// the history, so a connection resuming from before them gets them.
func (st *Stream) Skip(path string, n int) {
	st.mu.Lock()
	st.feed(path).skip += n
	st.mu.Unlock()
}

func (st *Stream) feed(path string) *stream {
	f := st.feeds[path]
	if f == nil {
		f = &stream{skipped: map[uint64]bool{}, wakes: map[chan struct{}]struct{}{}}
		st.feeds[path] = f
	}
	return f
}

func (st *Stream) produce() {
	defer close(st.stopped)
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
			f.head++
			if f.skip > 0 {
				f.skip--
				f.skipped[f.head] = true
			}
			for w := range f.wakes {
				select {
				case w <- struct{}{}:
				default:
				}
			}
		}
		st.mu.Unlock()
	}
}

// Serve is the script that streams to c: pass it to NewServer. It returns
// when the connection ends or the Stream is closed.
func (st *Stream) Serve(c *Conn) {
	path := c.Request().URL.Path
	wake := make(chan struct{}, 1)
	wake <- struct{}{}
	st.mu.Lock()
	f := st.feed(path)
	liveFrom := f.head + 1
	next := liveFrom
	if from, err := strconv.ParseUint(c.Request().URL.Query().Get("from"), 10, 64); err == nil && from > 0 {
		next = from
	}
	f.wakes[wake] = struct{}{}
	st.mu.Unlock()
	defer func() {
		st.mu.Lock()
		delete(f.wakes, wake)
		st.mu.Unlock()
	}()
	for {
		select {
		case <-c.Done():
			return
		case <-st.stop:
			return
		case <-wake:
		}
		st.mu.Lock()
		head := f.head
		st.mu.Unlock()
		for ; next <= head; next++ {
			st.mu.Lock()
			skip := next >= liveFrom && f.skipped[next]
			st.mu.Unlock()
			if skip {
				continue
			}
			if c.SendText(strconv.FormatUint(next, 10)) != nil {
				return
			}
		}
	}
}

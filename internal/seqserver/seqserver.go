// Package seqserver is a sequenced feed server for tests and examples: each
// feed (the URL path) has one stream of numbers 1, 2, 3, ... produced at a
// steady rate; a connection streams from the resume point in its URL
// (?from=N: N and everything after it, replayed from history, then live) or,
// without one, from the live head. The server can skip numbers on the live
// stream, drop connections and freeze them (stop writing while still
// answering pings), so that tests can check gap-free continuity. Messages are
// the decimal number as a text message.
package seqserver

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/wstest"
)

// Server is a sequenced feed server on loopback.
type Server struct {
	*wstest.Server
	interval time.Duration

	mu      sync.Mutex
	feeds   map[string]*feed
	nextID  int64
	stop    chan struct{}
	stopped chan struct{}

	conns atomic.Int64
}

type feed struct {
	head    uint64
	skip    int             // live numbers still to skip
	skipped map[uint64]bool // numbers left out of the live stream
	conns   map[*Conn]struct{}
}

// Conn is one client connection of the server.
type Conn struct {
	s        *Server
	ID       int64
	Feed     string
	ws       *websocket.Conn
	next     uint64 // next number to send
	liveFrom uint64 // numbers from here on were live for this connection
	frozen   atomic.Bool
	wake     chan struct{}
	done     chan struct{}
}

// New starts a server that produces one number per interval on every feed
// that has been connected to.
func New(interval time.Duration) (*Server, error) {
	s := &Server{interval: interval, feeds: map[string]*feed{}, stop: make(chan struct{}), stopped: make(chan struct{})}
	ws, err := wstest.New(s.handle)
	if err != nil {
		return nil, err
	}
	s.Server = ws
	go s.produce()
	return s, nil
}

// Close stops producing and closes the server and every connection.
func (s *Server) Close() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.stopped
	s.Server.Close()
}

func (s *Server) feedLocked(name string) *feed {
	f := s.feeds[name]
	if f == nil {
		f = &feed{skipped: map[uint64]bool{}, conns: map[*Conn]struct{}{}}
		s.feeds[name] = f
	}
	return f
}

// produce advances every feed's head once per interval and wakes its
// connections.
func (s *Server) produce() {
	defer close(s.stopped)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		s.mu.Lock()
		for _, f := range s.feeds {
			f.head++
			if f.skip > 0 {
				f.skip--
				f.skipped[f.head] = true
			}
			for c := range f.conns {
				select {
				case c.wake <- struct{}{}:
				default:
				}
			}
		}
		s.mu.Unlock()
	}
}

// Head returns the newest number of feed.
func (s *Server) Head(feed string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.feedLocked(feed).head
}

// Skip leaves the next n numbers of feed out of the live stream of every
// connection open while they are produced; they stay in the history, so a
// connection that resumes from before them gets them.
func (s *Server) Skip(feed string, n int) {
	s.mu.Lock()
	s.feedLocked(feed).skip += n
	s.mu.Unlock()
}

// Conns returns the feed's open connections.
func (s *Server) Conns(feed string) []*Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*Conn
	for c := range s.feedLocked(feed).conns {
		out = append(out, c)
	}
	return out
}

// Connections counts the connections accepted so far.
func (s *Server) Connections() int64 { return s.conns.Load() }

// Drop closes the connection abruptly (no close frame).
func (c *Conn) Drop() { _ = c.ws.UnderlyingConn().Close() }

// Freeze stops (true) or resumes (false) writing data on the connection; a
// frozen connection still answers pings, like an upstream that stopped
// publishing but is alive.
func (c *Conn) Freeze(on bool) {
	c.frozen.Store(on)
	if !on {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

func (s *Server) handle(ws *websocket.Conn, r *http.Request) {
	name := r.URL.Path
	s.conns.Add(1)
	c := &Conn{s: s, Feed: name, ws: ws, wake: make(chan struct{}, 1), done: make(chan struct{})}
	s.mu.Lock()
	s.nextID++
	c.ID = s.nextID
	f := s.feedLocked(name)
	c.liveFrom = f.head + 1
	c.next = c.liveFrom
	if from, err := strconv.ParseUint(r.URL.Query().Get("from"), 10, 64); err == nil && from > 0 {
		c.next = from
	}
	f.conns[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(f.conns, c)
		s.mu.Unlock()
	}()
	go func() { // reads, so that pings are answered and the close handshake works
		defer close(c.done)
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	}()
	select { // the producer may have woken it already
	case c.wake <- struct{}{}:
	default:
	}
	for {
		select {
		case <-c.done:
			return
		case <-s.stop:
			return
		case <-c.wake:
		}
		if c.frozen.Load() {
			continue
		}
		s.mu.Lock()
		head := f.head
		s.mu.Unlock()
		for ; c.next <= head; c.next++ {
			n := c.next
			s.mu.Lock()
			skip := n >= c.liveFrom && f.skipped[n]
			s.mu.Unlock()
			if skip {
				continue
			}
			_ = ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if ws.WriteMessage(websocket.TextMessage, strconv.AppendUint(nil, n, 10)) != nil {
				return
			}
		}
	}
}

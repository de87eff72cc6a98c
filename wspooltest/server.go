package wspooltest

import (
	"context"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/wstest"
)

// Server is a WebSocket server on a free port of 127.0.0.1. Each connection
// is served by the server's script; with no script it stays open until the
// client or the test ends it.
type Server struct {
	ws     *wstest.Server
	script func(*Conn)

	mu       sync.Mutex
	accepted []*Conn // every connection, in accept order
	next     int     // the next one Accept returns
	arrived  chan struct{}
	open     map[*Conn]struct{}
	refuse   int
	retry    time.Duration
	limitN   int
	limitPer time.Duration
	recent   []time.Time // upgrades admitted within limitPer
}

// NewServer starts a server that runs script for every connection, on the
// connection's own goroutine. When script returns, the connection is closed
// with status 1000 (unless it already ended). script should return once Send
// or Read fail. With a nil script each connection stays open until the
// client closes it or the test ends it (Conn.Close, Conn.Drop, Stop, Close).
func NewServer(script func(c *Conn)) (*Server, error) {
	s := &Server{script: script, arrived: make(chan struct{}), open: map[*Conn]struct{}{}}
	ws, err := wstest.New(s.serve)
	if err != nil {
		return nil, err
	}
	ws.SetReject(s.admit)
	s.ws = ws
	return s, nil
}

// URL returns "ws://127.0.0.1:port" followed by path (a leading "/" is added
// if missing). The port stays the same across Stop and Start.
func (s *Server) URL(path string) string { return s.ws.URL(path) }

// Addr returns the server's "127.0.0.1:port".
func (s *Server) Addr() string { return s.ws.Addr() }

// Accept returns the next connection the server accepted that Accept has not
// returned yet, waiting for one until ctx ends (then it returns ctx.Err()).
// Connections are returned in the order they were accepted, whether or not
// they are still open.
func (s *Server) Accept(ctx context.Context) (*Conn, error) {
	for {
		s.mu.Lock()
		if s.next < len(s.accepted) {
			c := s.accepted[s.next]
			s.accepted[s.next] = nil
			s.next++
			s.mu.Unlock()
			return c, nil
		}
		arrived := s.arrived
		s.mu.Unlock()
		select {
		case <-arrived:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Conns returns the connections open now.
func (s *Server) Conns() []*Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Conn, 0, len(s.open))
	for c := range s.open {
		out = append(out, c)
	}
	return out
}

// Accepted returns how many connections were upgraded so far.
func (s *Server) Accepted() int { return int(s.ws.Accepted()) }

// Handshakes returns how many upgrade requests arrived so far, refused ones
// included.
func (s *Server) Handshakes() int { return int(s.ws.Handshakes()) }

// Refuse makes the server answer every upgrade request with the HTTP status
// (401, 404, 429, 503, ...) instead of upgrading, with a Retry-After header
// of retryAfter rounded up to whole seconds if it is positive. Status 0
// accepts upgrades again. Open connections are not affected.
func (s *Server) Refuse(status int, retryAfter time.Duration) {
	s.mu.Lock()
	s.refuse, s.retry = status, retryAfter
	s.mu.Unlock()
}

// LimitUpgrades makes the server accept at most n upgrades within any window
// of length per, and answer the requests over the limit with 429 Too Many
// Requests and a Retry-After (in whole seconds, at least 1) saying when the
// window has room again, as exchanges do. n <= 0 removes the limit.
func (s *Server) LimitUpgrades(n int, per time.Duration) {
	s.mu.Lock()
	s.limitN, s.limitPer, s.recent = n, per, nil
	s.mu.Unlock()
}

func (s *Server) admit(*http.Request) (int, http.Header) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refuse != 0 {
		return s.refuse, retryAfter(s.retry)
	}
	if s.limitN <= 0 {
		return 0, nil
	}
	now := time.Now()
	i := 0
	for i < len(s.recent) && now.Sub(s.recent[i]) >= s.limitPer {
		i++
	}
	s.recent = s.recent[i:]
	if len(s.recent) >= s.limitN {
		return http.StatusTooManyRequests, retryAfter(s.limitPer - now.Sub(s.recent[0]))
	}
	s.recent = append(s.recent, now)
	return 0, nil
}

func retryAfter(d time.Duration) http.Header {
	if d <= 0 {
		return nil
	}
	secs := max(int64(math.Ceil(d.Seconds())), 1)
	return http.Header{"Retry-After": {strconv.FormatInt(secs, 10)}}
}

func (s *Server) serve(ws *websocket.Conn, r *http.Request) {
	c := newConn(ws, r)
	s.mu.Lock()
	s.accepted = append(s.accepted, c)
	s.open[c] = struct{}{}
	close(s.arrived)
	s.arrived = make(chan struct{})
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.open, c)
		s.mu.Unlock()
		c.Drop()
		<-c.done
	}()
	if s.script == nil {
		<-c.done
		return
	}
	s.script(c)
	c.Close(websocket.CloseNormalClosure, "")
}

// Stop stops listening (new connections are refused) and drops every open
// connection abruptly, without a close frame, like a server process that
// died; it returns once every script has returned. Start listens again.
func (s *Server) Stop() { s.ws.Stop() }

// Start listens again on the same port after Stop.
func (s *Server) Start() error { return s.ws.Start() }

// Close stops the server for good, as Stop does.
func (s *Server) Close() { s.ws.Close() }

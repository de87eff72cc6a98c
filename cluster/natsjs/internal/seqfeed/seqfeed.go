// Package seqfeed is a sequenced WebSocket feed server on loopback for the
// cluster tests and example: every connection to /<name>?from=N streams the
// text messages "N", "N+1", ... at a fixed interval, so a client that
// reconnects with the next number it needs loses nothing and a test can check
// what arrived downstream for gaps, duplicates and order.
package seqfeed

import (
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Server is a sequenced feed server on 127.0.0.1.
type Server struct {
	interval time.Duration
	up       websocket.Upgrader
	srv      *http.Server
	ln       net.Listener

	mu     sync.Mutex
	conns  map[*websocket.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
	served sync.WaitGroup

	accepted atomic.Int64
}

// Start listens on a free loopback port (or addr, if not empty) and streams
// one message per interval on every connection.
func Start(addr string, interval time.Duration) (*Server, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{interval: interval, ln: ln, conns: map[*websocket.Conn]struct{}{}}
	s.up.CheckOrigin = func(*http.Request) bool { return true }
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.served.Add(1)
	go func() {
		defer s.served.Done()
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

// URL returns the ws:// URL of the named feed (without a resume point).
func (s *Server) URL(name string) string {
	return "ws://" + s.ln.Addr().String() + "/" + name
}

// Accepted returns how many connections were upgraded.
func (s *Server) Accepted() int64 { return s.accepted.Load() }

// ServeHTTP upgrades and streams.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	from := uint64(1)
	if v := r.URL.Query().Get("from"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			http.Error(w, "bad from", http.StatusBadRequest)
			return
		}
		from = n
	}
	if strings.Trim(r.URL.Path, "/") == "" {
		http.NotFound(w, r)
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		http.Error(w, "closing", http.StatusServiceUnavailable)
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	c, err := s.up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	s.accepted.Add(1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	// A reader answers pings and notices the close.
	gone := make(chan struct{})
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
		<-gone
	}()
	go func() {
		defer close(gone)
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}()
	t := time.NewTicker(s.interval)
	defer t.Stop()
	buf := make([]byte, 0, 20)
	for seq := from; ; seq++ {
		buf = strconv.AppendUint(buf[:0], seq, 10)
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := c.WriteMessage(websocket.TextMessage, buf); err != nil {
			return
		}
		select {
		case <-gone:
			return
		case <-t.C:
		}
	}
}

// Close stops listening, closes every connection and waits for their
// handlers.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.srv.Close()
	s.served.Wait()
	s.wg.Wait()
}

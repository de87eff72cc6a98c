// Package seqfeed is a sequenced WebSocket feed server on loopback for the
// cluster tests and example. Each feed (/<name>) numbers its messages on its
// own clock, like a live upstream: message n is due (n-1) intervals after
// the feed's first connection. A connection to /<name>?from=N gets the text
// messages "N" up to the number due now at once, then each next one when it
// is due; so every connection of a feed gets a number at the same moment, a
// client that reconnects with the next number it needs loses nothing, and a
// test can check what arrived downstream for gaps, duplicates and order.
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
	epochs map[string]time.Time // each feed's first connection: when "1" was due
	closed bool
	wg     sync.WaitGroup
	served sync.WaitGroup

	accepted atomic.Int64
}

// Start listens on a free loopback port (or addr, if not empty); each feed
// gets one number per interval.
func Start(addr string, interval time.Duration) (*Server, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{interval: interval, ln: ln, conns: map[*websocket.Conn]struct{}{}, epochs: map[string]time.Time{}}
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
	name := strings.Trim(r.URL.Path, "/")
	if name == "" {
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
	epoch := s.epoch(name)
	t := time.NewTimer(time.Hour) // reset before every wait
	defer t.Stop()
	buf := make([]byte, 0, 20)
	sent := 0
	for next := from; ; {
		// Everything due by now, then wait for the next number.
		for due := uint64(time.Since(epoch)/s.interval) + 1; next <= due; next++ {
			buf = strconv.AppendUint(buf[:0], next, 10)
			// A client that stops reading is dropped after 10-13 s; the
			// deadline is moved on every 64 messages rather than every
			// message (with thousands of connections, a timer update per
			// write is a noticeable share of this server's CPU).
			if sent%64 == 0 {
				c.SetWriteDeadline(time.Now().Add(10*time.Second + 64*s.interval))
			}
			sent++
			if err := c.WriteMessage(websocket.TextMessage, buf); err != nil {
				return
			}
		}
		t.Reset(time.Until(epoch.Add(time.Duration(next-1) * s.interval)))
		select {
		case <-gone:
			return
		case <-t.C:
		}
	}
}

// epoch returns when the feed's first number was due: at its first
// connection.
func (s *Server) epoch(name string) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.epochs[name]
	if !ok {
		e = time.Now()
		s.epochs[name] = e
	}
	return e
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

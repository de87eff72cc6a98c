package main

// The embedded upstream: a gorilla WebSocket server on 127.0.0.1, one path
// per feed, each behaving so that some metric moves:
//
//	/ticker  {"seq":N,"price":P} every 50ms; every 10th message is not valid
//	         JSON (handler errors). Reads whatever the client sends.
//	/flaky   the same stream, but the connection is dropped abruptly (no close
//	         frame) after dropEvery (disconnects, reconnects).
//	/burst   {"seq":N} 2,000 times a second, for a slow handler behind a small
//	         DropOldest queue (dropped messages, queue depth).
//	/down    answers the upgrade with 503 and Retry-After: 1 (failed attempts,
//	         backing off, buffered and failed sends).
//
// It is written here rather than shared with the root module's tests, since
// this example is a module of its own.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

type feedServer struct {
	dropEvery time.Duration
	url       string // ws://127.0.0.1:port
	srv       *http.Server
	upgrader  websocket.Upgrader
	serveDone chan struct{}

	mu     sync.Mutex
	closed bool
	conns  map[*websocket.Conn]struct{}
	wg     sync.WaitGroup // connection handlers
}

func startFeedServer(dropEvery time.Duration) (*feedServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &feedServer{
		dropEvery: dropEvery,
		url:       "ws://" + ln.Addr().String(),
		conns:     map[*websocket.Conn]struct{}{},
		serveDone: make(chan struct{}),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/down", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
	})
	for _, path := range []string{"/ticker", "/flaky", "/burst"} {
		mux.HandleFunc(path, s.upgrade)
	}
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		defer close(s.serveDone)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

// URL returns the WebSocket URL of path.
func (s *feedServer) URL(path string) string { return s.url + path }

// Close stops the server and every connection, and waits for their handlers.
func (s *feedServer) Close() {
	_ = s.srv.Shutdown(context.Background()) // listener and idle HTTP connections
	<-s.serveDone
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.NetConn().Close() // hijacked: Shutdown does not close them
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *feedServer) upgrade(w http.ResponseWriter, r *http.Request) {
	c, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade answered the request
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.NetConn().Close()
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.NetConn().Close()
		s.wg.Done()
	}()
	s.serve(c, r.URL.Path)
}

// serve streams messages on one connection until it fails or is dropped.
func (s *feedServer) serve(c *websocket.Conn, path string) {
	// Keep reading: client messages, pings and the close handshake.
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		for {
			if _, _, err := c.NextReader(); err != nil {
				return
			}
		}
	}()
	defer func() {
		c.NetConn().Close()
		<-gone
	}()

	every, perTick := 50*time.Millisecond, 1
	var drop <-chan time.Time
	switch path {
	case "/flaky":
		t := time.NewTimer(s.dropEvery)
		defer t.Stop()
		drop = t.C
	case "/burst":
		every, perTick = 5*time.Millisecond, 10
	}
	tk := time.NewTicker(every)
	defer tk.Stop()
	price := 100.0
	for seq := 1; ; {
		select {
		case <-gone:
			return
		case <-drop:
			return // abrupt: no close frame
		case <-tk.C:
		}
		for range perTick {
			var msg []byte
			switch {
			case path == "/burst":
				msg = fmt.Appendf(nil, `{"seq":%d}`, seq)
			case seq%10 == 0:
				msg = fmt.Appendf(nil, `{"seq":%d,"price":`, seq) // truncated: a decode error
			default:
				price += float64(seq%7-3) * 0.01
				msg = fmt.Appendf(nil, `{"seq":%d,"price":%.2f}`, seq, price)
			}
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if err := c.WriteMessage(websocket.TextMessage, msg); err != nil {
				return
			}
			seq++
		}
	}
}

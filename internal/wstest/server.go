// Package wstest provides real WebSocket servers on loopback for wspool's
// tests and examples: gorilla's server behind httptest-style listeners, which
// can be stopped and restarted on the same port, and which count connections
// and concurrent handshakes.
package wstest

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// ConnHandler serves one upgraded connection; it returns when done with it.
// The server closes the connection afterwards.
type ConnHandler func(c *websocket.Conn, r *http.Request)

// Server is a WebSocket server on 127.0.0.1.
type Server struct {
	// Handle serves each connection. Set before Start or change with SetHandler.
	handle atomic.Pointer[ConnHandler]
	// Reject, if set, runs before the upgrade; a non-zero status answers the
	// request with it (and the headers) instead of upgrading.
	reject atomic.Pointer[func(r *http.Request) (int, http.Header)]

	upgrader websocket.Upgrader
	addr     string

	mu    sync.Mutex
	srv   *http.Server
	ln    net.Listener
	conns map[*websocket.Conn]struct{}
	wg    sync.WaitGroup // connection handlers
	srvWG sync.WaitGroup // Serve loop

	accepted   atomic.Int64
	inFlight   atomic.Int64 // handshakes in progress
	peakFlight atomic.Int64
	handshakes atomic.Int64 // HTTP requests seen
	// HandshakeDelay, if set, is slept inside each handshake (to make
	// concurrent handshakes observable).
	handshakeDelay atomic.Int64
}

// New starts a server on a free loopback port serving each connection with h.
func New(h ConnHandler) (*Server, error) {
	s := &Server{conns: map[*websocket.Conn]struct{}{}}
	s.upgrader.CheckOrigin = func(*http.Request) bool { return true }
	s.SetHandler(h)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.addr = ln.Addr().String()
	s.serve(ln)
	return s, nil
}

// SetHandler changes the handler for new connections.
func (s *Server) SetHandler(h ConnHandler) { s.handle.Store(&h) }

// SetReject sets (or with nil clears) the pre-upgrade rejection hook.
func (s *Server) SetReject(f func(r *http.Request) (int, http.Header)) {
	if f == nil {
		s.reject.Store(nil)
		return
	}
	s.reject.Store(&f)
}

// SetHandshakeDelay makes every handshake take at least d.
func (s *Server) SetHandshakeDelay(d time.Duration) { s.handshakeDelay.Store(int64(d)) }

// Addr is host:port; it stays the same across Stop and Start.
func (s *Server) Addr() string { return s.addr }

// URL is ws://Addr + path.
func (s *Server) URL(path string) string {
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	return "ws://" + s.addr + path
}

// Accepted is the number of connections upgraded so far.
func (s *Server) Accepted() int64 { return s.accepted.Load() }

// Handshakes is the number of upgrade requests seen (accepted or rejected).
func (s *Server) Handshakes() int64 { return s.handshakes.Load() }

// PeakConcurrentHandshakes is the most handshakes seen in progress at once.
func (s *Server) PeakConcurrentHandshakes() int64 { return s.peakFlight.Load() }

// ResetPeak zeroes the concurrent-handshake peak.
func (s *Server) ResetPeak() { s.peakFlight.Store(0) }

// Open is the number of connections currently open.
func (s *Server) Open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *Server) serve(ln net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(s.serveHTTP), ReadHeaderTimeout: 10 * time.Second}
	s.mu.Lock()
	s.srv, s.ln = srv, ln
	s.mu.Unlock()
	s.srvWG.Add(1)
	go func() {
		defer s.srvWG.Done()
		_ = srv.Serve(ln)
	}()
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	s.handshakes.Add(1)
	n := s.inFlight.Add(1)
	for {
		p := s.peakFlight.Load()
		if n <= p || s.peakFlight.CompareAndSwap(p, n) {
			break
		}
	}
	if d := time.Duration(s.handshakeDelay.Load()); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
		}
	}
	if rj := s.reject.Load(); rj != nil {
		if code, hdr := (*rj)(r); code != 0 {
			for k, v := range hdr {
				w.Header()[k] = v
			}
			w.WriteHeader(code)
			s.inFlight.Add(-1)
			return
		}
	}
	// Counted until the 101 is about to be written: the client holds its dial
	// slot until it has read the 101, so this window lies inside the client's.
	s.inFlight.Add(-1)
	c, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	s.mu.Lock()
	if s.srv == nil { // stopped listening while upgrading
		s.mu.Unlock()
		c.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	s.accepted.Add(1)
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	(*s.handle.Load())(c, r)
}

// Stop closes the listener and every open connection (abruptly, without a
// close frame), and waits for the connection handlers to return. Connections
// to the port are refused until Start.
func (s *Server) Stop() {
	s.StopListening()
	s.DropAll()
	s.wg.Wait()
}

// StopListening closes the listener (new connections are refused) but leaves
// open connections alone; Start listens again.
func (s *Server) StopListening() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
	s.srvWG.Wait()
}

// DropAll closes every open connection abruptly but keeps listening.
func (s *Server) DropAll() {
	s.mu.Lock()
	for c := range s.conns {
		c.NetConn().Close()
	}
	s.mu.Unlock()
}

// CloseAll sends a close frame with code to every open connection and closes it.
func (s *Server) CloseAll(code int) {
	s.mu.Lock()
	for c := range s.conns {
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(time.Second))
		c.NetConn().Close()
	}
	s.mu.Unlock()
}

// GoingAway starts a graceful close of every open connection: a close frame
// with 1001 (going away) and nothing else; each handler keeps reading until
// the client answers, so everything the client wrote before its answer is
// still read.
func (s *Server) GoingAway() {
	s.mu.Lock()
	for c := range s.conns {
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "restart"), time.Now().Add(time.Second))
	}
	s.mu.Unlock()
}

// Start listens again on the same address after Stop. It retries briefly if
// the port is not free yet.
func (s *Server) Start() error {
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ {
		ln, err = net.Listen("tcp", s.addr)
		if err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	s.serve(ln)
	return nil
}

// Close stops the server for good.
func (s *Server) Close() { s.Stop() }

// Echo is a ConnHandler that echoes every data message.
func Echo(c *websocket.Conn, _ *http.Request) {
	for {
		typ, data, err := c.ReadMessage()
		if err != nil {
			return
		}
		if err := c.WriteMessage(typ, data); err != nil {
			return
		}
	}
}

// Drain reads and discards until the peer goes away, answering pings and
// close frames (gorilla's defaults).
func Drain(c *websocket.Conn, _ *http.Request) {
	for {
		if _, _, err := c.NextReader(); err != nil {
			return
		}
	}
}

// ReadInBackground keeps reading c on its own goroutine, as Drain does, for a
// handler that only writes (gorilla answers pings and close frames only while
// someone reads). gone is closed when the peer goes away or closes; release
// closes the connection and waits for the reader to end.
func ReadInBackground(c *websocket.Conn) (gone <-chan struct{}, release func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		Drain(c, nil)
	}()
	return done, func() {
		c.NetConn().Close()
		<-done
	}
}

// ErrTimeout is returned by WaitFor when the condition did not hold in time.
var ErrTimeout = errors.New("wstest: timed out")

// WaitFor polls cond every few milliseconds until it returns true or timeout
// passes.
func WaitFor(ctx context.Context, timeout time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ErrTimeout
		case <-t.C:
		}
	}
}

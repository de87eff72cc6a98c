// Package exchange is an exchange-like WebSocket server on loopback for
// wspool's tests: it enforces the limits real crypto exchanges enforce and
// punishes clients that break them, and counts every violation.
//
//   - Connections: at most ConnLimit upgrades per key within any window of
//     ConnWindow. One more is answered 429 (with Retry-After if set), and the
//     key is then refused (429) for Penalty.
//   - Messages: a connection that sends more than MsgLimit messages within
//     any window of MsgWindow is closed with 1008 ("too many requests"). The
//     window is measured here, at the receiver, the strictest common way: the
//     time a message was read, in whole milliseconds, boundaries included (a
//     message read exactly MsgWindow after another is in its window). With
//     MsgJitter, each message counts as arriving up to that much later than
//     it was read (uniformly at random, in order, as TCP delivers): the
//     network's delay varying between messages.
//
// Messages "sub <topic>" are answered "ok <topic>" and counted per
// connection (Subscribed); every other message is only counted.
package exchange

import (
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wspool/wspool/internal/wstest"
)

// Config sets the server's limits; a zero limit is not enforced.
type Config struct {
	ConnLimit  int
	ConnWindow time.Duration
	Penalty    time.Duration
	RetryAfter time.Duration // sent with the 429s, rounded up to seconds; 0: none
	MsgLimit   int
	MsgWindow  time.Duration
	MsgJitter  time.Duration
	// Key maps an upgrade request to its key; the default is the "key" query
	// parameter, else the client's IP.
	Key func(r *http.Request) string
}

// Server is the exchange. Its counters are safe to read at any time.
type Server struct {
	*wstest.Server
	cfg Config

	mu   sync.Mutex
	keys map[string]*keyState

	Upgrades   atomic.Int64 // upgrades let through
	Rejected   atomic.Int64 // upgrades answered 429
	Tripped    atomic.Int64 // upgrades over the limit (each starts a penalty)
	Closed1008 atomic.Int64 // connections closed for sending too fast
	Messages   atomic.Int64 // messages received
	Subscribed atomic.Int64 // "sub" messages answered
}

type keyState struct {
	upgrades []time.Time // within the window
	until    time.Time   // penalty end
}

// Start starts an exchange on 127.0.0.1.
func Start(cfg Config) (*Server, error) {
	s := &Server{cfg: cfg, keys: map[string]*keyState{}}
	ws, err := wstest.New(s.serveConn)
	if err != nil {
		return nil, err
	}
	s.Server = ws
	ws.SetReject(s.admit)
	return s, nil
}

func (s *Server) key(r *http.Request) string {
	if s.cfg.Key != nil {
		return s.cfg.Key(r)
	}
	if k := r.URL.Query().Get("key"); k != "" {
		return k
	}
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	return host
}

// admit counts an upgrade against its key: 0 lets it through.
func (s *Server) admit(r *http.Request) (int, http.Header) {
	if s.cfg.ConnLimit <= 0 {
		s.Upgrades.Add(1)
		return 0, nil
	}
	key := s.key(r)
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[key]
	if k == nil {
		k = &keyState{}
		s.keys[key] = k
	}
	var hdr http.Header
	if s.cfg.RetryAfter > 0 {
		secs := int64((s.cfg.RetryAfter + time.Second - 1) / time.Second)
		hdr = http.Header{"Retry-After": {strconv.FormatInt(secs, 10)}}
	}
	if now.Before(k.until) {
		s.Rejected.Add(1)
		return http.StatusTooManyRequests, hdr
	}
	keep := k.upgrades[:0]
	for _, t := range k.upgrades {
		if now.Sub(t) < s.cfg.ConnWindow {
			keep = append(keep, t)
		}
	}
	k.upgrades = keep
	if len(k.upgrades) >= s.cfg.ConnLimit {
		s.Tripped.Add(1)
		s.Rejected.Add(1)
		k.until = now.Add(s.cfg.Penalty)
		return http.StatusTooManyRequests, hdr
	}
	k.upgrades = append(k.upgrades, now)
	s.Upgrades.Add(1)
	return 0, nil
}

// serveConn reads one connection, enforcing the message limit.
func (s *Server) serveConn(c *websocket.Conn, _ *http.Request) {
	var recent []time.Time
	var last time.Time // the latest arrival counted
	var wmu sync.Mutex
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			return
		}
		s.Messages.Add(1)
		if s.cfg.MsgLimit > 0 {
			now := time.Now()
			if j := s.cfg.MsgJitter; j > 0 {
				now = now.Add(rand.N(j))
			}
			if now.Before(last) {
				now = last
			}
			last = now
			now = now.Truncate(time.Millisecond)
			keep := recent[:0]
			for _, t := range recent {
				if now.Sub(t) <= s.cfg.MsgWindow {
					keep = append(keep, t)
				}
			}
			recent = append(keep, now)
			if len(recent) > s.cfg.MsgLimit {
				s.Closed1008.Add(1)
				wmu.Lock()
				_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.ClosePolicyViolation, "too many requests"), time.Now().Add(time.Second))
				wmu.Unlock()
				// A close handshake, not a reset: read (and discard) until
				// the client answers, so that it reads the 1008 rather than
				// failing a write first.
				_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
				for {
					if _, _, err := c.ReadMessage(); err != nil {
						return
					}
				}
			}
		}
		if topic, ok := strings.CutPrefix(string(data), "sub "); ok {
			s.Subscribed.Add(1)
			wmu.Lock()
			err := c.WriteMessage(websocket.TextMessage, []byte("ok "+topic))
			wmu.Unlock()
			if err != nil {
				return
			}
		}
	}
}

// Restart closes every connection with 1012 (service restart), stops
// listening for down, and listens again on the same address.
func (s *Server) Restart(down time.Duration) error {
	s.StopListening()
	s.CloseAll(websocket.CloseServiceRestart)
	s.Stop()
	if down > 0 {
		time.Sleep(down) // the outage itself: a schedule, not a wait for an event
	}
	return s.Start()
}

// Penalized reports whether key is in a penalty now.
func (s *Server) Penalized(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[key]
	return k != nil && time.Now().Before(k.until)
}

package main

// The embedded upstream: one gorilla WebSocket server on 127.0.0.1, one path
// per feed. Like many exchange and IoT gateways it expects an application
// heartbeat and answers it:
//
//	-> ping                           <- pong
//	-> {"op":"ping","ts":1700000000}  <- {"op":"pong","ts":1700000000}
//
// It counts the heartbeats of each path, and publishes a data message
// ({"type":"data","n":1}, ...) every dataEvery on every connection.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/wstest"
)

// heard counts one feed's heartbeats as the server received them.
type heard struct {
	n           int64
	first, last time.Time
}

// interval is the mean time between heartbeats, zero until there are two.
func (h heard) interval() time.Duration {
	if h.n < 2 {
		return 0
	}
	return h.last.Sub(h.first) / time.Duration(h.n-1)
}

type server struct {
	*wstest.Server
	dataEvery time.Duration

	mu    sync.Mutex
	heard map[string]heard
}

func startServer(dataEvery time.Duration) (*server, error) {
	s := &server{dataEvery: dataEvery, heard: map[string]heard{}}
	ws, err := wstest.New(s.serve)
	if err != nil {
		return nil, err
	}
	s.Server = ws
	return s, nil
}

// Heard returns the per-feed heartbeat counts so far.
func (s *server) Heard() map[string]heard {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]heard, len(s.heard))
	for k, v := range s.heard {
		m[k] = v
	}
	return m
}

func (s *server) count(feed string) {
	now := time.Now()
	s.mu.Lock()
	h := s.heard[feed]
	if h.n == 0 {
		h.first = now
	}
	h.n++
	h.last = now
	s.heard[feed] = h
	s.mu.Unlock()
}

func (s *server) serve(c *websocket.Conn, r *http.Request) {
	feed := strings.TrimPrefix(r.URL.Path, "/")
	var wmu sync.Mutex // gorilla allows one writer at a time
	write := func(data []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		return c.WriteMessage(websocket.TextMessage, data)
	}

	// Publisher: a data message every dataEvery.
	done := make(chan struct{})
	published := make(chan struct{})
	go func() {
		defer close(published)
		tk := time.NewTicker(s.dataEvery)
		defer tk.Stop()
		for n := 1; ; n++ {
			select {
			case <-done:
				return
			case <-tk.C:
			}
			if write(fmt.Appendf(nil, `{"type":"data","n":%d}`, n)) != nil {
				return
			}
		}
	}()
	defer func() {
		close(done)
		<-published
	}()

	// Reader: answer heartbeats until the client goes away.
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			return
		}
		var reply []byte
		if string(data) == "ping" {
			reply = []byte("pong")
		} else {
			var hb struct {
				Op string          `json:"op"`
				TS json.RawMessage `json:"ts"`
			}
			if json.Unmarshal(data, &hb) == nil && hb.Op == "ping" {
				reply, _ = json.Marshal(map[string]any{"op": "pong", "ts": hb.TS})
			}
		}
		if reply == nil {
			continue // not a heartbeat
		}
		s.count(feed)
		if write(reply) != nil {
			return
		}
	}
}

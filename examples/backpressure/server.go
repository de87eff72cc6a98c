package main

// The embedded upstream: one gorilla WebSocket server on 127.0.0.1. Every
// connection gets its own stream of binary messages, paced at rate messages a
// second by a token bucket:
//
//	[0:8]  sequence number, from 1, big-endian
//	[8:16] the time the server wrote it, Unix nanoseconds, big-endian
//	[16:]  zero padding up to size bytes
//
// The producer never runs ahead of schedule and never catches up: when a
// write blocks because the client's TCP window is closed, the messages it
// could not send in time are simply produced later, so its measured send rate
// is exactly what the connection accepted. Sent counts are kept per path (one
// path per feed).

import (
	"encoding/binary"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/wstest"
)

// sendBuffer is the server's socket send buffer. The kernel's default on
// loopback grows to megabytes, which a blocked client would take seconds to
// fill before TCP pushes back on the producer; a small one makes the push
// back visible within the first second.
const sendBuffer = 32 << 10

type server struct {
	*wstest.Server
	rate, size int

	stop    chan struct{} // closed by StopProducing
	stopped sync.Once
	active  sync.WaitGroup // producer loops

	mu   sync.Mutex
	sent map[string]*atomic.Int64 // by path, without the slash
}

func startServer(rate, size int) (*server, error) {
	s := &server{rate: rate, size: size, stop: make(chan struct{}), sent: map[string]*atomic.Int64{}}
	ws, err := wstest.New(s.serve)
	if err != nil {
		return nil, err
	}
	s.Server = ws
	return s, nil
}

func (s *server) counter(feed string) *atomic.Int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.sent[feed]
	if !ok {
		n = new(atomic.Int64)
		s.sent[feed] = n
	}
	return n
}

// Sent is the number of messages written so far on the feed's path.
func (s *server) Sent(feed string) int64 { return s.counter(feed).Load() }

// StopProducing stops every producer and returns once none is writing: from
// then on Sent is final. A producer blocked in a write finishes that write
// first, which needs its client to read.
func (s *server) StopProducing() {
	s.stopped.Do(func() { close(s.stop) })
	s.active.Wait()
}

func (s *server) serve(c *websocket.Conn, r *http.Request) {
	feed := strings.TrimPrefix(r.URL.Path, "/")
	if tc, ok := c.NetConn().(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(sendBuffer)
	}
	// Keep reading, for pings and the close handshake.
	gone, release := wstest.ReadInBackground(c)
	defer release()

	select {
	case <-s.stop:
		return // too late
	default:
	}
	s.active.Add(1)
	s.produce(c, s.counter(feed), gone)
	s.active.Done()
	<-gone // after StopProducing the client closes the connection
}

// produce writes the stream until StopProducing, or the connection fails.
func (s *server) produce(c *websocket.Conn, sent *atomic.Int64, gone <-chan struct{}) {
	const tick = 2 * time.Millisecond
	burst := max(1, float64(s.rate)/100) // at most 10ms worth at once
	tk := time.NewTicker(tick)
	defer tk.Stop()
	msg := make([]byte, max(s.size, 16))
	credit, last := 0.0, time.Now()
	for seq := uint64(1); ; {
		select {
		case <-s.stop:
			return
		case <-gone:
			return
		case <-tk.C:
		}
		now := time.Now()
		credit = min(credit+now.Sub(last).Seconds()*float64(s.rate), burst)
		last = now
		for ; credit >= 1; credit-- {
			binary.BigEndian.PutUint64(msg[0:8], seq)
			binary.BigEndian.PutUint64(msg[8:16], uint64(time.Now().UnixNano()))
			_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
				return
			}
			sent.Add(1)
			seq++
		}
	}
}

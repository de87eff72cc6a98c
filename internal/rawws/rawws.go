// Package rawws is a hand-rolled "WebSocket server" for tests of hostile and
// broken peers. It listens on 127.0.0.1, and hands every accepted TCP
// connection to a per-connection Script with the raw socket: the script can
// perform the opening handshake properly (Conn.Handshake computes
// Sec-WebSocket-Accept itself, per RFC 6455 section 4.2.2), botch it (write
// any bytes at all, trickle them, or never answer), and then write arbitrary
// frames built with Frame — reserved bits, reserved opcodes, fragmented or
// oversized control frames, lying lengths — or raw garbage.
//
// It also decodes the client's (masked) frames, so a script can check what a
// client answered (for example the close code after a protocol error), and
// models what an RFC 6455 client delivers from a byte stream (DataMessages),
// as an oracle for fuzz tests.
//
// It is meant for tests only.
package rawws

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// acceptGUID is the fixed GUID of RFC 6455 section 1.3.
const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// AcceptKey returns the Sec-WebSocket-Accept value for a client's
// Sec-WebSocket-Key: base64(SHA-1(key + GUID)).
func AcceptKey(challengeKey string) string {
	h := sha1.Sum([]byte(challengeKey + acceptGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// A Script serves one accepted TCP connection. ctx ends when the server is
// closed; the server closes the socket when the script returns (and also on
// Close, which unblocks any read or write).
type Script func(ctx context.Context, c *Conn)

// Server is a raw TCP listener on 127.0.0.1.
type Server struct {
	ln     net.Listener
	script Script
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool

	accepted atomic.Int64
	requests atomic.Int64
}

// New starts a server on a free loopback port running script for every
// connection.
func New(script Script) (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{ln: ln, script: script, ctx: ctx, cancel: cancel, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return
		}
		s.conns[nc] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		s.accepted.Add(1)
		go s.serve(nc)
	}
}

func (s *Server) serve(nc net.Conn) {
	defer s.wg.Done()
	defer func() {
		nc.Close()
		s.mu.Lock()
		delete(s.conns, nc)
		s.mu.Unlock()
	}()
	s.script(s.ctx, &Conn{Conn: nc, R: bufio.NewReader(nc), srv: s})
}

// Addr is the listener's host:port.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is ws://Addr + path.
func (s *Server) URL(path string) string {
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	return "ws://" + s.Addr() + path
}

// Accepted is the number of TCP connections accepted so far.
func (s *Server) Accepted() int64 { return s.accepted.Load() }

// Requests is the number of HTTP requests read by scripts (Conn.ReadRequest,
// Conn.Handshake) so far.
func (s *Server) Requests() int64 { return s.requests.Load() }

// Close stops listening, closes every connection and waits for every script
// to return. It is idempotent.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	for nc := range s.conns {
		nc.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.ln.Close()
	s.wg.Wait()
}

// Conn is one accepted connection. Read through R (it may hold bytes the
// client sent after its request); write through the embedded net.Conn.
type Conn struct {
	net.Conn
	R   *bufio.Reader
	srv *Server
}

// ReadRequest reads the client's HTTP request.
func (c *Conn) ReadRequest() (*http.Request, error) {
	req, err := http.ReadRequest(c.R)
	if err != nil {
		return nil, err
	}
	c.srv.requests.Add(1)
	return req, nil
}

// ErrNotUpgrade is returned by Handshake for a request that is not a
// WebSocket upgrade.
var ErrNotUpgrade = errors.New("rawws: not a websocket upgrade request")

// Handshake reads the client's request and answers with a correct 101
// (Upgrade, Connection and the computed Sec-WebSocket-Accept). extra header
// lines ("Name: value") are added to the response.
func (c *Conn) Handshake(extra ...string) (*http.Request, error) {
	req, err := c.ReadRequest()
	if err != nil {
		return nil, err
	}
	key := req.Header.Get("Sec-WebSocket-Key")
	if key == "" || !strings.EqualFold(req.Header.Get("Upgrade"), "websocket") {
		_, _ = c.WriteString(Response(http.StatusBadRequest))
		return req, ErrNotUpgrade
	}
	if _, err := c.WriteString(UpgradeResponse(key, extra...)); err != nil {
		return req, err
	}
	return req, nil
}

// WriteString writes s to the socket.
func (c *Conn) WriteString(s string) (int, error) { return c.Conn.Write([]byte(s)) }

// UpgradeResponse returns a correct 101 response for challengeKey, with the
// extra header lines.
func UpgradeResponse(challengeKey string, extra ...string) string {
	return Response(http.StatusSwitchingProtocols, append([]string{
		"Upgrade: websocket",
		"Connection: Upgrade",
		"Sec-WebSocket-Accept: " + AcceptKey(challengeKey),
	}, extra...)...)
}

// Response returns an HTTP/1.1 response head with status and the header
// lines, exactly as given (nothing is validated or added).
func Response(status int, headers ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	for _, h := range headers {
		b.WriteString(h)
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// WriteFrames writes the frames' bytes in one write.
func (c *Conn) WriteFrames(frames ...Frame) error {
	var b []byte
	for _, f := range frames {
		b = f.Append(b)
	}
	_, err := c.Write(b)
	return err
}

// Trickle writes b one byte every interval until done, ctx ends or a write
// fails.
func (c *Conn) Trickle(ctx context.Context, b []byte, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for i := range b {
		if _, err := c.Write(b[i : i+1]); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// CloseWrite half-closes the socket (sends FIN), so the client reads
// everything written so far and then EOF.
func (c *Conn) CloseWrite() error {
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		return tc.CloseWrite()
	}
	return errors.New("rawws: not a TCP connection")
}

// ReadFrame reads one frame from the client and unmasks its payload. Client
// frames must be masked (RFC 6455 section 5.1); an unmasked one is returned
// with an error. Payloads above 1 MiB are refused.
func (c *Conn) ReadFrame() (Frame, error) {
	return ReadFrame(c.R, 1<<20)
}

// ClientClose is what a client did at the end of a connection, as the server
// saw it.
type ClientClose struct {
	// Code is the close code of the client's close frame, 1005 for a close
	// frame without a code, or -1 if the connection ended without one.
	Code   int
	Reason string
	// Frames counts every frame read before the close frame (or the end).
	Frames int
	// Err is the read error that ended the wait (io.EOF for a clean end after
	// the close frame, when WaitClose drains).
	Err error
}

// WaitClose reads the client's frames, ignoring data, pings and pongs, until
// its close frame or the end of the connection, and then (if drain) keeps
// reading until the client closes the socket. The caller bounds it with a
// read deadline or by closing the server.
func (c *Conn) WaitClose(drain bool) ClientClose {
	cc := ClientClose{Code: -1}
	for {
		f, err := c.ReadFrame()
		if err != nil {
			cc.Err = err
			return cc
		}
		if f.Opcode == OpClose {
			cc.Code, cc.Reason = 1005, ""
			if len(f.Payload) >= 2 {
				cc.Code = int(f.Payload[0])<<8 | int(f.Payload[1])
				cc.Reason = string(f.Payload[2:])
			}
			if drain {
				cc.Err = c.Drain()
			}
			return cc
		}
		cc.Frames++
	}
}

// Drain reads and discards until the socket fails or the client closes it,
// and returns the error that ended it.
func (c *Conn) Drain() error {
	buf := make([]byte, 32<<10)
	for {
		if _, err := c.R.Read(buf); err != nil {
			return err
		}
	}
}

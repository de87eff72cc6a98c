//go:build linux

package interop

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
)

// tap is a TCP proxy on 127.0.0.1 that forwards one client connection to a
// target and records every byte in both directions, so that a test can read
// what really went over the wire: the handshake response and each frame's
// header (RSV1 marks a compressed message). It records up to tapMax bytes per
// direction and counts them all.
type tap struct {
	t        testing.TB
	ln       net.Listener
	target   string
	accepted atomic.Int64
	wg       sync.WaitGroup

	mu       sync.Mutex
	conns    []net.Conn
	up, down bytes.Buffer // client -> target, target -> client
	upN      int64
	downN    int64
}

const tapMax = 64 << 20

func newTap(t testing.TB, target string) *tap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tap{t: t, ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *tap) addr() string { return p.ln.Addr().String() }

func (p *tap) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(s, c, true)
		go p.pipe(c, s, false)
	}
}

// pipe copies src to dst, recording; at EOF it closes dst's write side.
func (p *tap) pipe(dst, src net.Conn, up bool) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			rec, cnt := &p.down, &p.downN
			if up {
				rec, cnt = &p.up, &p.upN
			}
			*cnt += int64(n)
			if rec.Len()+n <= tapMax {
				rec.Write(buf[:n])
			}
			p.mu.Unlock()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				_ = src.Close()
				return
			}
		}
		if err != nil {
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			return
		}
	}
}

func (p *tap) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// bytesForwarded returns the bytes forwarded so far: client to target (up)
// and target to client (down), handshakes included.
func (p *tap) bytesForwarded() (up, down int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.upN, p.downN
}

// wireStats is what one direction of a recorded connection carried.
type wireStats struct {
	ext        string // Sec-WebSocket-Extensions of the 101 (down only)
	dataMsgs   int    // text and binary messages (first frames)
	compressed int    // of which RSV1 was set
	dataFrames int    // data frames, continuations included
	payload    int64  // payload bytes of the data frames, as on the wire
}

// parse reads the recorded bytes of one direction: the HTTP handshake, then
// frames (masked when up). It fails the test on anything it cannot parse or
// if the tap forwarded more than one connection.
func (p *tap) parse(up bool) wireStats {
	p.t.Helper()
	if n := p.accepted.Load(); n != 1 {
		p.t.Fatalf("tap forwarded %d connections, want 1", n)
	}
	p.mu.Lock()
	src := p.down.Bytes()
	if up {
		src = p.up.Bytes()
	}
	raw := append([]byte(nil), src...)
	p.mu.Unlock()
	if len(raw) == tapMax {
		p.t.Fatalf("tap recording full (%d bytes)", tapMax)
	}
	var st wireStats
	r := bufio.NewReader(bytes.NewReader(raw))
	if up {
		req, err := http.ReadRequest(r)
		if err != nil {
			p.t.Fatalf("tap: handshake request: %v", err)
		}
		_ = req.Body.Close()
	} else {
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			p.t.Fatalf("tap: handshake response: %v", err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			p.t.Fatalf("tap: handshake status %d", resp.StatusCode)
		}
		st.ext = resp.Header.Get("Sec-WebSocket-Extensions")
	}
	for {
		var h [2]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			if err == io.EOF {
				return st
			}
			p.t.Fatalf("tap: frame header: %v", err)
		}
		op := h[0] & 0x0f
		rsv1 := h[0]&0x40 != 0
		n := int64(h[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(r, b[:]); err != nil {
				p.t.Fatalf("tap: frame length: %v", err)
			}
			n = int64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(r, b[:]); err != nil {
				p.t.Fatalf("tap: frame length: %v", err)
			}
			n = int64(binary.BigEndian.Uint64(b[:]))
		}
		if masked := h[1]&0x80 != 0; masked != up {
			p.t.Fatalf("tap: frame masked=%v in direction up=%v", masked, up)
		}
		skip := n
		if up {
			skip += 4
		}
		if _, err := r.Discard(int(skip)); err != nil {
			if err == io.EOF {
				return st // the recording ended inside a frame (connection cut)
			}
			p.t.Fatalf("tap: frame payload: %v", err)
		}
		switch op {
		case 1, 2:
			st.dataMsgs++
			if rsv1 {
				st.compressed++
			}
			fallthrough
		case 0:
			st.dataFrames++
			st.payload += n
		}
	}
}

func (s wireStats) String() string {
	return fmt.Sprintf("%d data messages (%d compressed) in %d frames, %d payload bytes", s.dataMsgs, s.compressed, s.dataFrames, s.payload)
}

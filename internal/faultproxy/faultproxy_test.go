package faultproxy_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wspool/wspool/internal/faultproxy"
)

// ioTimeout bounds every wait for something that should happen.
const ioTimeout = 5 * time.Second

// startEcho starts a TCP server on loopback that writes prefix to each new
// connection, then echoes everything it reads and half-closes after EOF. It
// is stopped, and its goroutines waited for, when the test ends.
func startEcho(t *testing.T, prefix string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				if prefix != "" {
					if _, err := io.WriteString(c, prefix); err != nil {
						return
					}
				}
				if _, err := io.Copy(c, c); err != nil {
					return
				}
				c.(*net.TCPConn).CloseWrite()
				// Wait for the peer to close before closing.
				io.Copy(io.Discard, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// deadAddr returns a loopback address with nothing listening on it.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func newProxy(t *testing.T, target string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// readN reads exactly n bytes from c within timeout.
func readN(c net.Conn, n int, timeout time.Duration) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, n)
	_, err := io.ReadFull(c, buf)
	return buf, err
}

func expect(t *testing.T, c net.Conn, want []byte) {
	t.Helper()
	got, err := readN(c, len(want), ioTimeout)
	if err != nil {
		t.Fatalf("reading %d bytes: %v", len(want), err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %q, want %q", short(got), short(want))
	}
}

func short(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	expect(t, c, []byte(msg))
}

// waitFor polls cond until it holds or timeout elapses.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitBytes waits until the proxy's byte counters reach up and down. The
// counters are updated just after each write, so a peer can see the data a
// moment before the counters do.
func waitBytes(t *testing.T, p *faultproxy.Proxy, up, down int64) {
	t.Helper()
	var gu, gd int64
	deadline := time.Now().Add(ioTimeout)
	for {
		gu, gd = p.BytesForwarded()
		if gu == up && gd == down {
			return
		}
		if gu > up || gd > down || time.Now().After(deadline) {
			t.Fatalf("BytesForwarded = %d, %d, want %d, %d", gu, gd, up, down)
		}
		time.Sleep(time.Millisecond)
	}
}

// pattern returns n bytes that reveal reordering, loss and duplication.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// writeAsync writes data to c in a goroutine; the returned channel yields
// the result.
func writeAsync(c net.Conn, data []byte) <-chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		ch <- err
	}()
	return ch
}

func checkWrite(t *testing.T, ch <-chan error) {
	t.Helper()
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("write: %v", err)
		}
	case <-time.After(ioTimeout):
		t.Fatal("write did not complete")
	}
}

// expectClosed asserts that a read on c fails promptly with EOF or a reset,
// not a timeout.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	_, err := c.Read(make([]byte, 1))
	if err == nil {
		t.Fatal("read succeeded, want EOF or reset")
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("read timed out, want EOF or reset: %v", err)
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read error %v, want EOF or ECONNRESET", err)
	}
}

// expectDropped connects to addr and asserts that the connection is closed
// or reset at once. The reset can race with the client's connect completing,
// so a dial failing with ECONNRESET counts too.
func expectDropped(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("dial: %v, want success or ECONNRESET", err)
		}
		return
	}
	defer c.Close()
	expectClosed(t, c)
}

func TestPassThroughEcho(t *testing.T) {
	p := newProxy(t, startEcho(t, ""))
	c := dial(t, p.Addr())
	roundTrip(t, c, "hello")
	roundTrip(t, c, "world!")
	if n := p.ConnCount(); n != 1 {
		t.Errorf("ConnCount = %d, want 1", n)
	}
	if n := p.Accepted(); n != 1 {
		t.Errorf("Accepted = %d, want 1", n)
	}
	waitBytes(t, p, 11, 11)

	data := pattern(3 << 20)
	w := writeAsync(c, data)
	expect(t, c, data)
	checkWrite(t, w)
}

func TestHalfClose(t *testing.T) {
	p := newProxy(t, startEcho(t, ""))
	c := dial(t, p.Addr())
	roundTrip(t, c, "abc")
	if _, err := io.WriteString(c, "def"); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if string(got) != "def" {
		t.Fatalf("got %q, want %q", got, "def")
	}
	c.Close()
	waitFor(t, ioTimeout, "connection to be closed", func() bool { return p.ConnCount() == 0 })
}

func TestBlackhole(t *testing.T) {
	p := newProxy(t, startEcho(t, ""))
	c := dial(t, p.Addr())
	roundTrip(t, c, "warm-up")
	waitBytes(t, p, 7, 7)
	up0, down0 := p.BytesForwarded()

	p.SetMode(faultproxy.Blackhole)
	data := pattern(256 << 10)
	w := writeAsync(c, data)
	got, err := readN(c, 1, 300*time.Millisecond)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read in Blackhole returned %q, %v; want timeout", got, err)
	}
	if up, down := p.BytesForwarded(); up != up0 || down != down0 {
		t.Errorf("BytesForwarded changed in Blackhole: %d,%d -> %d,%d", up0, down0, up, down)
	}
	if n := p.ConnCount(); n != 1 {
		t.Errorf("ConnCount in Blackhole = %d, want 1", n)
	}

	p.SetMode(faultproxy.PassThrough)
	expect(t, c, data)
	checkWrite(t, w)
	roundTrip(t, c, "after")
}

func TestBlackholeNewConnection(t *testing.T) {
	p := newProxy(t, startEcho(t, "hi"))
	p.SetMode(faultproxy.Blackhole)
	c := dial(t, p.Addr())
	if _, err := io.WriteString(c, "ping"); err != nil {
		t.Fatal(err)
	}
	got, err := readN(c, 1, 300*time.Millisecond)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read in Blackhole returned %q, %v; want timeout", got, err)
	}
	p.SetMode(faultproxy.PassThrough)
	expect(t, c, []byte("hiping"))
}

func TestResetAll(t *testing.T) {
	p := newProxy(t, startEcho(t, ""))
	c1 := dial(t, p.Addr())
	c2 := dial(t, p.Addr())
	roundTrip(t, c1, "one")
	roundTrip(t, c2, "two")
	p.ResetAll()
	expectClosed(t, c1)
	expectClosed(t, c2)
	waitFor(t, ioTimeout, "ConnCount 0", func() bool { return p.ConnCount() == 0 })

	// The proxy keeps working for new connections.
	c3 := dial(t, p.Addr())
	roundTrip(t, c3, "three")
}

func TestResetAllSendsRST(t *testing.T) {
	p := newProxy(t, startEcho(t, ""))
	c := dial(t, p.Addr())
	roundTrip(t, c, "x")
	p.ResetAll()
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after ResetAll: %v, want ECONNRESET", err)
	}
}

func TestCloseAll(t *testing.T) {
	p := newProxy(t, startEcho(t, ""))
	c := dial(t, p.Addr())
	roundTrip(t, c, "x")
	p.CloseAll()
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, io.EOF) {
		t.Fatalf("read after CloseAll: %v, want EOF", err)
	}
	waitFor(t, ioTimeout, "ConnCount 0", func() bool { return p.ConnCount() == 0 })
}

func TestLatency(t *testing.T) {
	const lat = 100 * time.Millisecond
	p := newProxy(t, startEcho(t, ""))
	c := dial(t, p.Addr())
	roundTrip(t, c, "warm-up")

	p.SetLatency(lat) // live connection
	for range 2 {
		start := time.Now()
		roundTrip(t, c, "ping")
		if el := time.Since(start); el < 2*lat {
			t.Errorf("round trip took %v, want at least %v", el, 2*lat)
		}
	}

	p.SetLatency(0)
	roundTrip(t, c, "fast again")
}

func TestLatencyKeepsOrder(t *testing.T) {
	p := newProxy(t, startEcho(t, ""))
	p.SetLatency(20 * time.Millisecond)
	c := dial(t, p.Addr())
	var want []byte
	for i := range 50 {
		msg := []byte{byte(i), byte(i + 1), byte(i + 2)}
		want = append(want, msg...)
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	big := pattern(2 << 20) // more than the in-flight bound
	want = append(want, big...)
	w := writeAsync(c, big)
	expect(t, c, want)
	checkWrite(t, w)
}

func TestBandwidth(t *testing.T) {
	const (
		rate = 1 << 20
		size = 512 << 10
	)
	p := newProxy(t, startEcho(t, ""))
	c := dial(t, p.Addr())
	roundTrip(t, c, "warm-up")

	p.SetBandwidth(rate)
	data := pattern(size)
	start := time.Now()
	w := writeAsync(c, data)
	expect(t, c, data)
	el := time.Since(start)
	checkWrite(t, w)
	t.Logf("%d bytes at %d B/s echoed in %v", size, rate, el)
	if el < 350*time.Millisecond {
		t.Errorf("transfer took %v, want at least 350ms", el)
	}
}

func TestBandwidthChangeIsLive(t *testing.T) {
	p := newProxy(t, startEcho(t, ""))
	c := dial(t, p.Addr())
	roundTrip(t, c, "warm-up")

	p.SetBandwidth(1) // one byte per second
	data := pattern(100)
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	// The first byte passes at once, then each direction waits a second.
	expect(t, c, data[:1])

	// Lifting the limit must take effect without waiting out the current
	// one-second pacing delay.
	start := time.Now()
	p.SetBandwidth(0)
	expect(t, c, data[1:])
	if el := time.Since(start); el > 500*time.Millisecond {
		t.Errorf("rest arrived %v after lifting the limit, want well under 1s", el)
	}
}

func TestSlice(t *testing.T) {
	for _, tc := range []struct{ slice, size int }{{1, 8 << 10}, {7, 64 << 10}} {
		p := newProxy(t, startEcho(t, ""))
		c := dial(t, p.Addr())
		p.SetSlice(tc.slice)
		data := pattern(tc.size)
		w := writeAsync(c, data)
		expect(t, c, data)
		checkWrite(t, w)
		waitBytes(t, p, int64(tc.size), int64(tc.size))
	}
}

func TestRefuse(t *testing.T) {
	p := newProxy(t, startEcho(t, ""))
	a := dial(t, p.Addr())
	roundTrip(t, a, "before")

	p.SetRefuse(true)
	expectDropped(t, p.Addr())
	waitFor(t, ioTimeout, "2 accepted", func() bool { return p.Accepted() == 2 })
	roundTrip(t, a, "still works")
	if n := p.ConnCount(); n != 1 {
		t.Errorf("ConnCount = %d, want 1", n)
	}

	p.SetRefuse(false)
	c := dial(t, p.Addr())
	roundTrip(t, c, "accepted again")
	if n := p.Accepted(); n != 3 {
		t.Errorf("Accepted = %d, want 3", n)
	}
}

func TestSetTarget(t *testing.T) {
	p := newProxy(t, startEcho(t, "A"))
	a := dial(t, p.Addr())
	expect(t, a, []byte("A"))

	p.SetTarget(startEcho(t, "B"))
	b := dial(t, p.Addr())
	expect(t, b, []byte("B"))
	roundTrip(t, a, "old target still connected")

	p.SetTarget(deadAddr(t))
	expectDropped(t, p.Addr())
	waitFor(t, ioTimeout, "dead connection dropped", func() bool { return p.ConnCount() == 2 })
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	echo := startEcho(t, "")
	before := runtime.NumGoroutine()

	p, err := faultproxy.New(echo)
	if err != nil {
		t.Fatal(err)
	}
	var clients []*net.TCPConn
	open := func() *net.TCPConn {
		c := dial(t, p.Addr())
		clients = append(clients, c)
		return c
	}
	// An idle connection.
	roundTrip(t, open(), "idle")
	// A connection waiting on a slow bandwidth limit.
	p.SetBandwidth(1)
	slow := open()
	if _, err := slow.Write(pattern(1000)); err != nil {
		t.Fatal(err)
	}
	expect(t, slow, pattern(1)) // first byte goes through, then pacing waits
	// A connection whose data is waiting out a long latency.
	p.SetLatency(time.Hour)
	lat := open()
	if _, err := lat.Write([]byte("delayed")); err != nil {
		t.Fatal(err)
	}
	// A blackholed connection holding data.
	p.SetMode(faultproxy.Blackhole)
	bh := open()
	if _, err := bh.Write(pattern(64 << 10)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ioTimeout, "4 connections", func() bool { return p.Accepted() == 4 })

	start := time.Now()
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("Close took %v", el)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if n := p.ConnCount(); n != 0 {
		t.Errorf("ConnCount after Close = %d", n)
	}
	for i, c := range clients {
		// Drain anything delivered before Close; the stream must then
		// end with EOF or a reset, not hang.
		c.SetReadDeadline(time.Now().Add(ioTimeout))
		_, err := io.Copy(io.Discard, c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("client %d still open after Close", i)
		}
		c.Close()
	}
	if c, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c.Close()
		t.Error("dial after Close succeeded")
	}

	deadline := time.Now().Add(2 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= before {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines after Close, %d before:\n%s", n, before, buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCloseConcurrent(t *testing.T) {
	p, err := faultproxy.New(deadAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := p.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
	wg.Wait()
}

func TestModeString(t *testing.T) {
	if s := faultproxy.Blackhole.String(); s != "Blackhole" {
		t.Errorf("Blackhole.String() = %q", s)
	}
	if s := faultproxy.PassThrough.String(); s != "PassThrough" {
		t.Errorf("PassThrough.String() = %q", s)
	}
}

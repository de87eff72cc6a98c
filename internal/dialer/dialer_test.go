package dialer_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wspool/wspool/internal/dialer"
)

// tcp is the chain's TCP step on loopback.
var tcp = (&net.Dialer{}).DialContext

// listen serves each connection accepted on a loopback port with serve,
// until the test ends.
func listen(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// echo answers "ping" with "pong".
func echo(c net.Conn) {
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err == nil && string(b) == "ping" {
		_, _ = c.Write([]byte("pong"))
	}
}

func pingPong(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "pong" {
		t.Fatalf("read %q, %v", b, err)
	}
}

func proxyTo(raw string) func(*http.Request) (*url.URL, error) {
	u, err := url.Parse(raw)
	return func(*http.Request) (*url.URL, error) { return u, err }
}

func dial(t *testing.T, ch *dialer.Chain, addr string, useTLS bool, opened func(net.Conn) net.Conn) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	u := &url.URL{Scheme: "ws", Host: addr, Path: "/feed"}
	if useTLS {
		u.Scheme = "wss"
	}
	c, err := ch.Dial(ctx, "tcp", addr, useTLS, dialer.Target{URL: u, Header: http.Header{"X-Test": {"1"}}, Opened: opened})
	if c != nil {
		t.Cleanup(func() { _ = c.Close() })
	}
	return c, err
}

// TestDirectTCPIsWhatOpenedReturns: without proxy and TLS the connection is
// the one Opened returned, and Opened sees the raw socket.
func TestDirectTCPIsWhatOpenedReturns(t *testing.T) {
	addr := listen(t, echo)
	var seen net.Conn
	type wrapped struct{ net.Conn }
	c, err := dial(t, &dialer.Chain{TCP: tcp}, addr, false, func(nc net.Conn) net.Conn {
		seen = nc
		return wrapped{nc}
	})
	if err != nil {
		t.Fatal(err)
	}
	if w, ok := c.(wrapped); !ok || w.Conn != seen {
		t.Fatalf("got %T", c)
	}
	if _, ok := seen.(*net.TCPConn); !ok {
		t.Errorf("Opened saw %T", seen)
	}
	pingPong(t, c)
}

// connectProxy is an HTTP proxy that answers CONNECT with answer and then,
// on 200, tunnels to its target; it records the request.
type connectProxy struct {
	answer string
	mu     sync.Mutex
	req    *http.Request
}

func (p *connectProxy) serve(c net.Conn) {
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	p.mu.Lock()
	p.req = req
	p.mu.Unlock()
	if _, err := io.WriteString(c, p.answer); err != nil || !strings.HasPrefix(p.answer, "HTTP/1.1 200") {
		return
	}
	up, err := net.Dial("tcp", req.Host)
	if err != nil {
		return
	}
	defer up.Close()
	go func() { _, _ = io.Copy(up, br) }()
	_, _ = io.Copy(c, up)
}

// TestHTTPConnectTunnels: the proxy gets CONNECT host:port with Basic
// credentials from the proxy URL, and the tunnel carries the bytes; the
// Proxy func judges the upgrade request as gorilla builds it.
func TestHTTPConnectTunnels(t *testing.T) {
	target := listen(t, echo)
	p := &connectProxy{answer: "HTTP/1.1 200 Connection established\r\n\r\n"}
	proxy := listen(t, p.serve)
	var judged *http.Request
	ch := &dialer.Chain{TCP: tcp, Proxy: func(r *http.Request) (*url.URL, error) {
		judged = r
		return url.Parse("http://user:secret@" + proxy)
	}}
	c, err := dial(t, ch, target, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	pingPong(t, c)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.req.Method != http.MethodConnect || p.req.Host != target {
		t.Errorf("proxy got %s %s", p.req.Method, p.req.Host)
	}
	if got := p.req.Header.Get("Proxy-Authorization"); got != "Basic dXNlcjpzZWNyZXQ=" {
		t.Errorf("Proxy-Authorization %q", got)
	}
	if judged.URL.String() != "http://"+target+"/feed" || judged.Header.Get("X-Test") != "1" || judged.Host != target {
		t.Errorf("Proxy func judged %s %v (Host %s)", judged.URL, judged.Header, judged.Host)
	}
}

// TestHTTPConnectRefusalsAreErrors: a refusal without a reason phrase (which
// panics in gorilla's proxy code), bytes after the answer, and garbage are
// errors naming the proxy, and the connection Opened returned is closed.
func TestHTTPConnectRefusalsAreErrors(t *testing.T) {
	for answer, want := range map[string]string{
		"HTTP/1.1 407\r\n\r\n":                           "HTTP 407 Proxy Authentication Required",
		"HTTP/1.1 200 OK\r\n\r\nextra":                   "data after the proxy's answer",
		"SSH-2.0-OpenSSH\r\n" + strings.Repeat("x", 900): "CONNECT: malformed HTTP",
	} {
		p := &connectProxy{answer: answer}
		proxy := listen(t, p.serve)
		var closed closeRecorder
		_, err := dial(t, &dialer.Chain{TCP: tcp, Proxy: proxyTo("http://" + proxy)}, "127.0.0.1:9", false, closed.wrap)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "proxy "+proxy) {
			t.Errorf("answer %q: got %v, want %q", answer, err, want)
		}
		if !closed.closed() {
			t.Errorf("answer %q: connection left open", answer)
		}
	}
}

type closeRecorder struct {
	mu sync.Mutex
	c  *recConn
}

type recConn struct {
	net.Conn
	mu     sync.Mutex
	closed bool
}

func (c *recConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return c.Conn.Close()
}

func (r *closeRecorder) wrap(nc net.Conn) net.Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.c = &recConn{Conn: nc}
	return r.c
}

func (r *closeRecorder) closed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c == nil {
		return false
	}
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	return r.c.closed
}

// socks5 is a SOCKS5 proxy (RFC 1928) that wants user/pass when set, and
// tunnels to the requested address, which it records.
type socks5 struct {
	user, pass string
	reply      byte
	mu         sync.Mutex
	asked      string
}

func (s *socks5) serve(c net.Conn) {
	var b [262]byte
	if _, err := io.ReadFull(c, b[:2]); err != nil || b[0] != 5 {
		return
	}
	methods := make([]byte, b[1])
	if _, err := io.ReadFull(c, methods); err != nil {
		return
	}
	if s.user != "" {
		_, _ = c.Write([]byte{5, 2})
		if _, err := io.ReadFull(c, b[:2]); err != nil {
			return
		}
		user := make([]byte, b[1])
		_, _ = io.ReadFull(c, user)
		_, _ = io.ReadFull(c, b[:1])
		pass := make([]byte, b[0])
		_, _ = io.ReadFull(c, pass)
		if string(user) != s.user || string(pass) != s.pass {
			_, _ = c.Write([]byte{1, 1})
			return
		}
		_, _ = c.Write([]byte{1, 0})
	} else {
		_, _ = c.Write([]byte{5, 0})
	}
	if _, err := io.ReadFull(c, b[:4]); err != nil {
		return
	}
	var host string
	switch b[3] {
	case 1:
		_, _ = io.ReadFull(c, b[:4])
		host = net.IP(b[:4]).String()
	case 3:
		_, _ = io.ReadFull(c, b[:1])
		n := int(b[0])
		_, _ = io.ReadFull(c, b[:n])
		host = string(b[:n])
	}
	_, _ = io.ReadFull(c, b[:2])
	addr := net.JoinHostPort(host, itoa(binary.BigEndian.Uint16(b[:2])))
	s.mu.Lock()
	s.asked = addr
	s.mu.Unlock()
	if s.reply != 0 {
		_, _ = c.Write([]byte{5, s.reply, 0, 1, 0, 0, 0, 0, 0, 0})
		return
	}
	if host == "localhost" {
		addr = net.JoinHostPort("127.0.0.1", itoa(binary.BigEndian.Uint16(b[:2])))
	}
	up, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer up.Close()
	_, _ = c.Write([]byte{5, 0, 0, 3, 4, 'n', 'a', 'm', 'e', 0, 80}) // bound address as a name
	go func() { _, _ = io.Copy(up, c) }()
	_, _ = io.Copy(c, up)
}

func itoa(n uint16) string { return strconv.Itoa(int(n)) }

// TestSOCKS5Tunnels: with and without credentials, IP and host name
// targets (the name is sent for the proxy to resolve).
func TestSOCKS5Tunnels(t *testing.T) {
	target := listen(t, echo)
	_, port, _ := net.SplitHostPort(target)
	for _, tt := range []struct {
		name, userinfo, user, pass, addr string
	}{
		{"no auth, IP", "", "", "", target},
		{"password, name", "alice:pw@", "alice", "pw", "localhost:" + port},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := &socks5{user: tt.user, pass: tt.pass}
			proxy := listen(t, s.serve)
			c, err := dial(t, &dialer.Chain{TCP: tcp, Proxy: proxyTo("socks5://" + tt.userinfo + proxy)}, tt.addr, false, nil)
			if err != nil {
				t.Fatal(err)
			}
			pingPong(t, c)
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.asked != tt.addr {
				t.Errorf("proxy asked for %s, want %s", s.asked, tt.addr)
			}
		})
	}
}

// TestSOCKS5RefusalsAreErrors: wrong credentials, none given when asked, and
// a refused CONNECT.
func TestSOCKS5RefusalsAreErrors(t *testing.T) {
	for _, tt := range []struct {
		name     string
		s        *socks5
		userinfo string
		want     string
	}{
		{"wrong password", &socks5{user: "alice", pass: "pw"}, "alice:nope@", "authentication failed"},
		{"no password", &socks5{user: "alice", pass: "pw"}, "", "asks for a password and none was given"},
		{"refused", &socks5{reply: 5}, "", "refused (reply 5)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			proxy := listen(t, tt.s.serve)
			_, err := dial(t, &dialer.Chain{TCP: tcp, Proxy: proxyTo("socks5h://" + tt.userinfo + proxy)}, "127.0.0.1:9", false, nil)
			if err == nil || !strings.Contains(err.Error(), "SOCKS5: ") || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}

// TestProxyURLProblemsAreErrors: an unsupported scheme and a failing Proxy
// func fail before any connection is opened.
func TestProxyURLProblemsAreErrors(t *testing.T) {
	for raw, want := range map[string]string{
		"ftp://p:21":   `unsupported scheme "ftp"`,
		"http://%zz":   "proxy: parse",
		"https://p:80": `unsupported scheme "https"`,
	} {
		tcpCalled := false
		ch := &dialer.Chain{TCP: func(context.Context, string, string) (net.Conn, error) {
			tcpCalled = true
			return nil, errors.New("no")
		}, Proxy: proxyTo(raw)}
		_, err := dial(t, ch, "127.0.0.1:9", false, nil)
		if err == nil || !strings.Contains(err.Error(), want) || tcpCalled {
			t.Errorf("%s: got %v (TCP called %v), want %q", raw, err, tcpCalled, want)
		}
	}
}

// TestProxyThatNeverAnswersEndsWithTheContext: the proxy step is bounded by
// the dial's context.
func TestProxyThatNeverAnswersEndsWithTheContext(t *testing.T) {
	stuck := make(chan struct{})
	proxy := listen(t, func(net.Conn) { <-stuck })
	t.Cleanup(func() { close(stuck) }) // before listen's cleanup waits for it
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := (&dialer.Chain{TCP: tcp, Proxy: proxyTo("http://" + proxy)}).Dial(ctx, "tcp", "127.0.0.1:9", false,
			dialer.Target{URL: &url.URL{Scheme: "ws", Host: "127.0.0.1:9"}})
		done <- err
	}()
	select {
	case err := <-done:
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("got %v, want a timeout", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("dial still waiting for the proxy 30s after its context ended")
	}
}

// TestTLSVerifiesTheTargetName: TLS is verified against the target's host
// (a proxy in between changes nothing), with the caller's roots; without
// them the server's certificate is refused; the user's TLS func replaces
// every step (no Proxy is applied).
func TestTLSVerifiesTheTargetName(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "tls ok") }))
	t.Cleanup(srv.Close)
	target := srv.Listener.Addr().String()
	roots := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	get := func(c net.Conn) string {
		t.Helper()
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}

	var opened net.Conn
	c, err := dial(t, &dialer.Chain{TCP: tcp, TLSConfig: &tls.Config{RootCAs: roots}}, target, true, func(nc net.Conn) net.Conn {
		opened = nc
		return nc
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.(*tls.Conn); !ok || opened == nil || c == opened {
		t.Errorf("got %T above %T", c, opened)
	}
	if got := get(c); got != "tls ok" {
		t.Errorf("got %q", got)
	}

	p := &connectProxy{answer: "HTTP/1.1 200 OK\r\n\r\n"}
	proxy := listen(t, p.serve)
	c, err = dial(t, &dialer.Chain{TCP: tcp, Proxy: proxyTo("http://" + proxy), TLSConfig: &tls.Config{RootCAs: roots}}, target, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := get(c); got != "tls ok" {
		t.Errorf("through the proxy: got %q", got)
	}

	if _, err := dial(t, &dialer.Chain{TCP: tcp}, target, true, nil); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without the server's root: %v", err)
	}

	userTLS := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return (&tls.Dialer{Config: &tls.Config{RootCAs: roots}}).DialContext(ctx, network, addr)
	}
	proxyCalled := false
	ch := &dialer.Chain{TCP: tcp, TLS: userTLS, Proxy: func(*http.Request) (*url.URL, error) { proxyCalled = true; return nil, nil }}
	c, err = dial(t, ch, target, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := get(c); got != "tls ok" || proxyCalled {
		t.Errorf("user TLS: got %q, Proxy called %v", got, proxyCalled)
	}
}

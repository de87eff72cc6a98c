package wspool_test

// Proxies: HTTP CONNECT and SOCKS5 tunnels for ws:// and wss://, and a
// hostile proxy whose answer used to panic inside gorilla's dial.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
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
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/wstest"
)

// testProxy is a loopback proxy: serve runs per accepted connection.
type testProxy struct {
	ln      net.Listener
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
	tunnels atomic.Int64 // tunnels opened
	serve   func(p *testProxy, c net.Conn)
}

func newTestProxy(t *testing.T, serve func(p *testProxy, c net.Conn)) *testProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &testProxy{ln: ln, serve: serve}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.track(c)
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				defer c.Close()
				p.serve(p, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *testProxy) track(c net.Conn) {
	p.mu.Lock()
	p.conns = append(p.conns, c)
	p.mu.Unlock()
}

// pipe connects c to target both ways until either side ends.
func (p *testProxy) pipe(c net.Conn, r io.Reader, target string) {
	up, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	p.track(up)
	p.tunnels.Add(1)
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, r); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
}

// httpConnectProxy answers CONNECT with 200 and tunnels; auth, when set, is
// the Proxy-Authorization it requires.
func httpConnectProxy(auth string) func(p *testProxy, c net.Conn) {
	return func(p *testProxy, c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil || req.Method != http.MethodConnect {
			return
		}
		if auth != "" && req.Header.Get("Proxy-Authorization") != auth {
			_, _ = io.WriteString(c, "HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
		p.pipe(c, br, req.Host)
	}
}

// socks5Proxy is a SOCKS5 server (no auth, or username/password when user
// is set) for CONNECT with any address type.
func socks5Proxy(user, pass string) func(p *testProxy, c net.Conn) {
	return func(p *testProxy, c net.Conn) {
		br := bufio.NewReader(c)
		var b [262]byte
		if _, err := io.ReadFull(br, b[:2]); err != nil || b[0] != 5 {
			return
		}
		methods := b[2 : 2+int(b[1])]
		if _, err := io.ReadFull(br, methods); err != nil {
			return
		}
		want := byte(0)
		if user != "" {
			want = 2
		}
		if !strings.Contains(string(methods), string([]byte{want})) {
			_, _ = c.Write([]byte{5, 0xff})
			return
		}
		_, _ = c.Write([]byte{5, want})
		if want == 2 {
			if _, err := io.ReadFull(br, b[:2]); err != nil {
				return
			}
			u := make([]byte, b[1])
			_, _ = io.ReadFull(br, u)
			_, _ = io.ReadFull(br, b[:1])
			pw := make([]byte, b[0])
			_, _ = io.ReadFull(br, pw)
			if string(u) != user || string(pw) != pass {
				_, _ = c.Write([]byte{1, 1})
				return
			}
			_, _ = c.Write([]byte{1, 0})
		}
		if _, err := io.ReadFull(br, b[:4]); err != nil || b[1] != 1 {
			return
		}
		var host string
		switch b[3] {
		case 1, 4:
			ip := make([]byte, map[byte]int{1: 4, 4: 16}[b[3]])
			_, _ = io.ReadFull(br, ip)
			host = net.IP(ip).String()
		case 3:
			_, _ = io.ReadFull(br, b[:1])
			name := make([]byte, b[0])
			_, _ = io.ReadFull(br, name)
			host = string(name)
		}
		_, _ = io.ReadFull(br, b[:2])
		port := binary.BigEndian.Uint16(b[:2])
		_, _ = c.Write([]byte{5, 0, 0, 1, 127, 0, 0, 1, 0, 0})
		p.pipe(c, br, net.JoinHostPort(host, strconv.Itoa(int(port))))
	}
}

// echoOnce connects a client with opts to url and checks one echo.
func echoOnce(t *testing.T, url string, opts ...wspool.Option) {
	t.Helper()
	got := make(chan string, 1)
	ev := newEvents()
	c, err := wspool.NewClient(url, func(_ context.Context, m wspool.Message) error {
		select {
		case got <- string(m.Data):
		default:
		}
		return nil
	}, hostileOptions(ev, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	stop := runClient(t, c)
	ev.waitCount(t, wspool.StateConnected, 1, 10*time.Second)
	if err := c.Send(context.Background(), wspool.TextMessage, []byte("through")); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, got, 5*time.Second, "the echo"); m != "through" {
		t.Fatalf("echo %q", m)
	}
	stopWithin(t, stop, 3*time.Second)
}

// tlsEchoServer is a wss:// echo server with its own certificate.
func tlsEchoServer(t *testing.T) (*httptest.Server, *tls.Config) {
	up := websocket.Upgrader{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		wstest.Echo(c, r)
	}))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return srv, &tls.Config{RootCAs: pool}
}

// TestProxyTunnels: ws:// and wss:// through an HTTP CONNECT proxy (with and
// without Basic auth) and a SOCKS5 proxy (with and without a password), via
// WithDialer's Proxy.
func TestProxyTunnels(t *testing.T) {
	plain := newServer(t, wstest.Echo)
	tlsSrv, tlsCfg := tlsEchoServer(t)
	wssURL := "wss://" + strings.TrimPrefix(tlsSrv.URL, "https://") + "/"
	for _, tt := range []struct {
		name  string
		serve func(p *testProxy, c net.Conn)
		user  *url.Userinfo
		tls   bool
	}{
		{"http ws", httpConnectProxy(""), nil, false},
		{"http wss", httpConnectProxy(""), nil, true},
		{"http basic auth", httpConnectProxy("Basic YWxpY2U6czNjcjN0"), url.UserPassword("alice", "s3cr3t"), false},
		{"socks5 ws", socks5Proxy("", ""), nil, false},
		{"socks5 wss", socks5Proxy("", ""), nil, true},
		{"socks5 password", socks5Proxy("bob", "hunter2"), url.UserPassword("bob", "hunter2"), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := newTestProxy(t, tt.serve)
			scheme := "http"
			if strings.HasPrefix(tt.name, "socks5") {
				scheme = "socks5"
			}
			pu := &url.URL{Scheme: scheme, Host: p.ln.Addr().String(), User: tt.user}
			d := &websocket.Dialer{Proxy: http.ProxyURL(pu)}
			target := plain.URL("/")
			if tt.tls {
				d.TLSClientConfig = tlsCfg
				target = wssURL
			}
			echoOnce(t, target, wspool.WithDialer(d))
			if p.tunnels.Load() == 0 {
				t.Fatal("the proxy opened no tunnel")
			}
		})
	}
}

// TestHostileProxyAnswersAreErrors: a proxy answering CONNECT with
// "HTTP/1.1 407" and no reason phrase made gorilla panic (index out of
// range) inside the dial, killing the process; now each answer is an error
// and the feed retries. A dial function that panics is recovered the same way.
func TestHostileProxyAnswersAreErrors(t *testing.T) {
	for _, tt := range []struct {
		name, answer, want string
	}{
		{"407 without reason", "HTTP/1.1 407\r\n\r\n", "HTTP 407"},
		{"500 without reason", "HTTP/1.1 500\r\n\r\n", "HTTP 500"},
		{"not HTTP", "SSH-2.0-x\r\n\r\n", "malformed HTTP"},
		{"data after 200", "HTTP/1.1 200 OK\r\n\r\nEXTRA", "data after"},
		{"closes", "", "EOF"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := newTestProxy(t, func(p *testProxy, c net.Conn) {
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				_, _ = io.WriteString(c, tt.answer)
			})
			ev := newEvents()
			d := &websocket.Dialer{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: p.ln.Addr().String()})}
			c, err := wspool.NewClient("ws://feed.invalid/", nil, hostileOptions(ev, wspool.WithDialer(d))...)
			if err != nil {
				t.Fatal(err)
			}
			stop := runClient(t, c)
			cause := checkReported(t, c, ev, tt.want, nil)
			t.Logf("cause: %v", cause)
			ev.waitCount(t, wspool.StateBackingOff, 2, 10*time.Second) // retried
			stopWithin(t, stop, 3*time.Second)
		})
	}
	t.Run("dial function panics", func(t *testing.T) {
		ev := newEvents()
		d := &websocket.Dialer{NetDialContext: func(context.Context, string, string) (net.Conn, error) {
			panic("dial function bug")
		}}
		c, err := wspool.NewClient("ws://feed.invalid/", nil, hostileOptions(ev, wspool.WithDialer(d))...)
		if err != nil {
			t.Fatal(err)
		}
		stop := runClient(t, c)
		cause := checkReported(t, c, ev, "dial function bug", nil)
		if !strings.Contains(cause.Error(), "panic") || errors.Is(cause, context.Canceled) {
			t.Errorf("cause %v does not say it was a panic", cause)
		}
		stopWithin(t, stop, 3*time.Second)
	})
}

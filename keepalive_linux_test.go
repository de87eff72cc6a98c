//go:build linux

package wspool_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/wstest"
	"golang.org/x/sys/unix"
)

type sockopts struct {
	keepAlive, idle, intvl, cnt, userTimeout int
}

func readSockopts(t *testing.T, tc *net.TCPConn) sockopts {
	t.Helper()
	rc, err := tc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var o sockopts
	var gerr error
	get := func(fd, level, opt int) int {
		v, err := unix.GetsockoptInt(fd, level, opt)
		if err != nil && gerr == nil {
			gerr = err
		}
		return v
	}
	rc.Control(func(fd uintptr) {
		f := int(fd)
		o.keepAlive = get(f, unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		o.idle = get(f, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		o.intvl = get(f, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
		o.cnt = get(f, unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
		o.userTimeout = get(f, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
	})
	if gerr != nil {
		t.Fatal(gerr)
	}
	return o
}

// capturingDialer is a user-supplied Dialer whose NetDialContext records the
// sockets it makes, so the test can read their options back.
func capturingDialer() (*websocket.Dialer, func() *net.TCPConn) {
	var mu sync.Mutex
	var last *net.TCPConn
	d := &websocket.Dialer{
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var nd net.Dialer
			c, err := nd.DialContext(ctx, network, addr)
			if err == nil {
				mu.Lock()
				last = c.(*net.TCPConn)
				mu.Unlock()
			}
			return c, err
		},
	}
	return d, func() *net.TCPConn { mu.Lock(); defer mu.Unlock(); return last }
}

func TestKeepAliveSocketOptions(t *testing.T) {
	srv := newServer(t, wstest.Drain)
	cases := []struct {
		name string
		opts []wspool.Option
		want sockopts
	}{
		{"defaults", nil, sockopts{1, 15, 5, 3, 30000}},
		{"custom", []wspool.Option{wspool.WithKeepAlive(wspool.KeepAlive{Idle: 7 * time.Second, Interval: 2 * time.Second, Count: 4, UserTimeout: 12 * time.Second})}, sockopts{1, 7, 2, 4, 12000}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, last := capturingDialer()
			ev := newEvents()
			c, err := wspool.NewClient(srv.URL("/"), nil, append(tc.opts, wspool.WithDialer(d), ev.option())...)
			if err != nil {
				t.Fatal(err)
			}
			runClient(t, c)
			ev.waitCount(t, wspool.StateConnected, 1, 5*time.Second)
			if got := readSockopts(t, last()); got != tc.want {
				t.Fatalf("socket options %+v, want %+v", got, tc.want)
			}
		})
	}
}

// connectProxy is a minimal HTTP CONNECT proxy for the test.
func connectProxy(t *testing.T) (addr string, tunnels func() int) {
	t.Helper()
	var mu sync.Mutex
	n := 0
	var wg sync.WaitGroup
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil || req.Method != http.MethodConnect {
					return
				}
				up, err := net.Dial("tcp", req.Host)
				if err != nil {
					io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
					return
				}
				defer up.Close()
				mu.Lock()
				n++
				conns = append(conns, up)
				mu.Unlock()
				io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
				go func() { io.Copy(up, br); up.(*net.TCPConn).CloseWrite() }()
				io.Copy(c, up)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return n }
}

func TestKeepAliveThroughProxy(t *testing.T) {
	srv := newServer(t, wstest.Drain)
	paddr, tunnels := connectProxy(t)
	d, last := capturingDialer()
	d.Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: paddr})
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), nil, wspool.WithDialer(d), ev.option())
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	ev.waitCount(t, wspool.StateConnected, 1, 5*time.Second)
	if tunnels() != 1 {
		t.Fatalf("proxy made %d tunnels, want 1", tunnels())
	}
	sock := last()
	if sock.RemoteAddr().String() != paddr {
		t.Fatalf("captured socket goes to %v, want the proxy %v", sock.RemoteAddr(), paddr)
	}
	if got, want := readSockopts(t, sock), (sockopts{1, 15, 5, 3, 30000}); got != want {
		t.Fatalf("proxy socket options %+v, want %+v", got, want)
	}
}

// Package dialer opens the connection a WebSocket upgrade runs over: TCP,
// through an HTTP CONNECT or SOCKS5 proxy (RFC 1928, with RFC 1929
// username/password) when the Proxy func names one, then TLS for wss://.
//
// gorilla/websocket would do the proxy and TLS steps itself, but then the
// 101 response passes through TLS above the caller's socket wrapper, out of
// reach of the response check (internal/handshake), and gorilla's proxy code
// panics on some answers (a 407 without a reason phrase). A Chain does them
// below the check and returns every failure as an error.
package dialer

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"

	"github.com/wspool/wspool/internal/redact"
)

// A Chain opens connections. Its fields are read, never changed, so one
// Chain serves concurrent dials.
type Chain struct {
	// TCP opens the connection to the server or to the proxy. Required.
	TCP func(ctx context.Context, network, addr string) (net.Conn, error)
	// TLS, if set, replaces the TCP, proxy and TLS steps of a TLS dial (a
	// websocket.Dialer's NetDialTLSContext): it does them all itself.
	TLS func(ctx context.Context, network, addr string) (net.Conn, error)
	// Proxy, if set, names the proxy for a dial's request (ProxyRequest);
	// a nil URL means none. Schemes http, socks5 and socks5h.
	Proxy func(*http.Request) (*url.URL, error)
	// TLSConfig is cloned for each TLS dial; its ServerName defaults to
	// the target's host. Nil means the zero tls.Config (verification on).
	TLSConfig *tls.Config
}

// Target is what one dial is for.
type Target struct {
	// URL and Header are the upgrade request's, for the Proxy func.
	URL    *url.URL
	Header http.Header
	// Opened, if set, is called with the connection the chain opened (by
	// TCP, or by the TLS func) before anything is written to it; the chain
	// goes on over the connection it returns, and closes that one if a
	// later step fails.
	Opened func(net.Conn) net.Conn
}

// Dial connects to addr (host:port of the feed's URL), with TLS if useTLS.
// The proxy and TLS steps are bounded by ctx (its deadline is set on the
// connection for the proxy's answer).
func (c *Chain) Dial(ctx context.Context, network, addr string, useTLS bool, t Target) (net.Conn, error) {
	opened := func(nc net.Conn) net.Conn {
		if t.Opened != nil {
			return t.Opened(nc)
		}
		return nc
	}
	if useTLS && c.TLS != nil {
		nc, err := c.TLS(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return opened(nc), nil
	}
	var proxyURL *url.URL
	if c.Proxy != nil && t.URL != nil {
		pu, err := c.Proxy(ProxyRequest(t.URL, t.Header))
		if err != nil {
			return nil, fmt.Errorf("proxy: %w", err)
		}
		proxyURL = pu
	}
	target := addr
	if proxyURL != nil {
		a, err := proxyAddr(proxyURL)
		if err != nil {
			return nil, err
		}
		addr = a
	}
	nc, err := c.TCP(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	conn := opened(nc)
	if proxyURL != nil {
		if dl, ok := ctx.Deadline(); ok {
			_ = conn.SetDeadline(dl)
		}
		if err := proxyConnect(conn, proxyURL, target); err != nil {
			_ = conn.Close()
			return nil, err
		}
	}
	if !useTLS {
		return conn, nil
	}
	cfg := c.TLSConfig.Clone()
	if cfg == nil {
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(target)
		if err != nil {
			host = target
		}
		cfg.ServerName = host
	}
	tlsConn := tls.Client(conn, cfg)
	if err := tlsConn.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return tlsConn, nil
}

// proxyAddr is the proxy's host:port, with the scheme's default port.
func proxyAddr(u *url.URL) (string, error) {
	port := u.Port()
	switch u.Scheme {
	case "http":
		if port == "" {
			port = "80"
		}
	case "socks5", "socks5h":
		if port == "" {
			port = "1080"
		}
	default:
		return "", fmt.Errorf("proxy: unsupported scheme %q (http, socks5 and socks5h are)", u.Scheme)
	}
	return net.JoinHostPort(u.Hostname(), port), nil
}

// proxyConnect asks the proxy at the other end of conn for a tunnel to target.
func proxyConnect(conn net.Conn, proxyURL *url.URL, target string) error {
	if proxyURL.Scheme == "http" {
		return httpConnect(conn, proxyURL, target)
	}
	return socks5Connect(conn, proxyURL, target)
}

// httpConnect sends CONNECT target and reads the proxy's answer.
func httpConnect(conn net.Conn, proxyURL *url.URL, target string) error {
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Opaque: target},
		Host:   target,
		Header: http.Header{},
	}
	if u := proxyURL.User; u != nil {
		pass, _ := u.Password()
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pass)))
	}
	if err := req.Write(conn); err != nil {
		return fmt.Errorf("proxy %s: CONNECT: %w", proxyURL.Host, err)
	}
	// The far end does not speak before we do (TLS client hello or our
	// upgrade request), so a proxy sending more than its answer is broken.
	br := bufio.NewReaderSize(conn, 512)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return fmt.Errorf("proxy %s: CONNECT: %w", proxyURL.Host, redact.Truncate(err))
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("proxy %s: CONNECT %s: HTTP %d %s", proxyURL.Host, target, resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	if br.Buffered() > 0 {
		return fmt.Errorf("proxy %s: CONNECT: data after the proxy's answer", proxyURL.Host)
	}
	return nil
}

// socks5Connect runs a SOCKS5 CONNECT (RFC 1928), with username/password
// authentication (RFC 1929) when the proxy URL has userinfo. The target's
// host name is sent to the proxy to resolve.
func socks5Connect(conn net.Conn, proxyURL *url.URL, target string) error {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("proxy %s: SOCKS5: "+format, append([]any{proxyURL.Host}, args...)...)
	}
	host, portStr, err := net.SplitHostPort(target)
	if err != nil {
		return fail("%v", err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return fail("bad port %q", portStr)
	}
	methods := []byte{5, 1, 0}
	if proxyURL.User != nil {
		methods = []byte{5, 2, 0, 2}
	}
	if _, err := conn.Write(methods); err != nil {
		return fail("%v", err)
	}
	var b [4]byte
	if _, err := io.ReadFull(conn, b[:2]); err != nil {
		return fail("%v", err)
	}
	if b[0] != 5 {
		return fail("version %d", b[0])
	}
	switch b[1] {
	case 0:
	case 2:
		if proxyURL.User == nil {
			return fail("proxy asks for a password and none was given")
		}
		user := proxyURL.User.Username()
		pass, _ := proxyURL.User.Password()
		if len(user) > 255 || len(pass) > 255 {
			return fail("username or password over 255 bytes")
		}
		auth := append(append(append([]byte{1, byte(len(user))}, user...), byte(len(pass))), pass...)
		if _, err := conn.Write(auth); err != nil {
			return fail("%v", err)
		}
		if _, err := io.ReadFull(conn, b[:2]); err != nil {
			return fail("%v", err)
		}
		if b[1] != 0 {
			return fail("authentication failed")
		}
	default:
		return fail("no acceptable authentication method")
	}
	req := []byte{5, 1, 0}
	if ip := net.ParseIP(host); ip != nil {
		if ip4 := ip.To4(); ip4 != nil {
			req = append(append(req, 1), ip4...)
		} else {
			req = append(append(req, 4), ip.To16()...)
		}
	} else {
		if len(host) > 255 {
			return fail("host name over 255 bytes")
		}
		req = append(append(req, 3, byte(len(host))), host...)
	}
	req = binary.BigEndian.AppendUint16(req, uint16(port))
	if _, err := conn.Write(req); err != nil {
		return fail("%v", err)
	}
	if _, err := io.ReadFull(conn, b[:4]); err != nil {
		return fail("%v", err)
	}
	if b[0] != 5 {
		return fail("version %d", b[0])
	}
	if b[1] != 0 {
		return fail("CONNECT %s refused (reply %d)", target, b[1])
	}
	var skip int
	switch b[3] {
	case 1:
		skip = 4
	case 4:
		skip = 16
	case 3:
		if _, err := io.ReadFull(conn, b[:1]); err != nil {
			return fail("%v", err)
		}
		skip = int(b[0])
	default:
		return fail("address type %d", b[3])
	}
	if _, err := io.CopyN(io.Discard, conn, int64(skip+2)); err != nil {
		return fail("%v", err)
	}
	return nil
}

// ProxyRequest is the request a Proxy func judges: the upgrade request to u
// with header h, as gorilla builds it (http or https scheme).
func ProxyRequest(u *url.URL, h http.Header) *http.Request {
	pu := *u
	pu.Scheme = "http"
	if u.Scheme == "wss" {
		pu.Scheme = "https"
	}
	return &http.Request{Method: http.MethodGet, URL: &pu, Header: h, Host: u.Host}
}

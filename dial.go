package wspool

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/dialer"
	"github.com/wspool/wspool/internal/handshake"
	"github.com/wspool/wspool/internal/redact"
	"github.com/wspool/wspool/internal/socket"
)

// dial makes one connection attempt to base (the feed's URL, or a standby
// connection's), bounded by the handshake timeout and the pool's admission.
func (c *Client) dial(ctx context.Context, base *url.URL, l *lane) (*Conn, error) {
	u := *base
	h := c.cfg.header.Clone()
	if h == nil {
		h = http.Header{}
	}
	if c.cfg.requestFunc != nil {
		if err := c.callRequestFunc(ctx, &u, h); err != nil {
			return nil, fmt.Errorf("wspool: request func: %w", err)
		}
		if err := checkFeedURL(&u); err != nil {
			return nil, err
		}
		// gorilla parses the URL's string again; catch what it would reject
		// here, without quoting the URL (its query may hold secrets).
		if _, err := url.Parse(u.String()); err != nil {
			return nil, fmt.Errorf("%w: the request func produced a URL that does not parse", ErrInvalidURL)
		}
	}
	// gorilla rejects userinfo in a ws URL: send it as HTTP Basic auth, the
	// way browsers and net/http treat it, unless Authorization is already set.
	if u.User != nil {
		if h.Get("Authorization") == "" {
			pass, _ := u.User.Password()
			h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pass)))
		}
		u.User = nil
	}
	if l == nil { // a standby connection's host (maybe an alternate) is not the feed's
		c.mu.Lock()
		c.dialedHost = u.Host // the wake's key: the host really dialled
		c.mu.Unlock()
	}
	key := c.admissionKey(&u, h)
	ticket, err := c.enterGate(ctx, u.Host, key, l == nil)
	if err != nil {
		return nil, err
	}
	defer ticket.Leave()
	dctx, cancel := context.WithTimeout(ctx, c.cfg.handshakeTO)
	defer cancel()
	slot := &dialSlot{client: c, url: &u, header: h, chk: handshake.New(c.dialer, h)}
	dctx = context.WithValue(dctx, dialSlotKey{}, slot)
	// gorilla bounds the upgrade by the context's deadline but does not watch
	// its cancellation: on shutdown, cut a stuck handshake at once.
	stopCut := context.AfterFunc(ctx, func() {
		if nc := slot.conn.Load(); nc != nil {
			_ = nc.SetDeadline(time.Now())
		}
	})
	dialStart := time.Now()
	ws, resp, err := dialRecover(dctx, c.dialer, u.String(), h, slot)
	stopCut()
	if err == nil {
		c.timing(TimingHandshake, time.Since(dialStart))
	}
	if err != nil {
		if err := slot.chk.Err(); err != nil {
			return nil, checkFailure(err) // the response check failed (internal/handshake)
		}
		if resp != nil && resp.StatusCode == http.StatusSwitchingProtocols {
			if errors.Is(err, websocket.ErrBadHandshake) {
				return nil, fmt.Errorf("wspool: handshake: invalid 101 response (Upgrade, Connection or Sec-WebSocket-Accept wrong): %w", err)
			}
			return nil, fmt.Errorf("wspool: handshake: invalid 101 response: %w", err)
		}
		if resp != nil && errors.Is(err, websocket.ErrBadHandshake) {
			he := &HandshakeError{StatusCode: resp.StatusCode, Err: err}
			if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
				he.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
			}
			c.handshakeSaid(key, he) // a rotation's or standby connection's dial too
			return nil, he
		}
		// The socket's deadline (the context's) may fire just before the
		// context itself: judge by the clock.
		if dl, ok := dctx.Deadline(); ok && ctx.Err() == nil && !time.Now().Before(dl) {
			return nil, fmt.Errorf("wspool: dial: handshake timeout (%v): %w: %w", c.cfg.handshakeTO, context.DeadlineExceeded, err)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			// A *url.Error quotes the whole URL; keep the reason only.
			return nil, fmt.Errorf("wspool: dial: %s %s: %w", ue.Op, redact.URL(&u), ue.Err)
		}
		return nil, fmt.Errorf("wspool: dial: %w", redact.Truncate(err))
	}
	tc := slot.conn.Load()
	if tc == nil {
		// A custom dial path bypassed our wrapper; liveness still works from
		// complete frames, just without byte-level progress.
		tc = socket.New(ws.UnderlyingConn(), false)
	}
	tc.Handshook()
	ws.SetReadLimit(c.cfg.readLimit)
	c.chargeCloses(ws, key)
	cn := newConn(c, ws, tc)
	// Without our offer of permessage-deflate the response check refused
	// any extension, so gorilla's (wire) read limit bounds every message.
	cn.mayInflate = slot.chk.DeflateOffered()
	return cn, nil
}

type dialSlotKey struct{}

// dialSlot carries the dialing feed, its request and its response check into
// the dial functions, and its tracked socket out of the dialer.
type dialSlot struct {
	client *Client
	url    *url.URL    // the feed's URL for this dial (for the Proxy func)
	header http.Header // the request header (likewise)
	chk    *handshake.Check
	conn   atomic.Pointer[socket.Conn]
}

// dialRecover runs the dialer, turning a panic in it (gorilla's, or a dial
// function's) into an error: a peer's bytes must never end the process.
func dialRecover(ctx context.Context, d *websocket.Dialer, u string, h http.Header, slot *dialSlot) (ws *websocket.Conn, resp *http.Response, err error) {
	defer func() {
		if r := recover(); r != nil {
			if tc := slot.conn.Load(); tc != nil {
				_ = tc.Close()
			}
			ws, resp, err = nil, nil, fmt.Errorf("%w: %v", errDialPanic, r)
		}
	}()
	return d.DialContext(ctx, u, h)
}

// errDialPanic wraps a panic recovered during a dial.
var errDialPanic = errors.New("wspool: dial: panic in the dial (recovered)")

// sharedDialers serve every feed with neither WithDialer nor
// WithSubprotocols: plain ws:// (pooled reads) and the rest. The dial
// functions find the feed in the dial's context, so feeds can share them.
var sharedDialers [2]struct {
	once sync.Once
	d    *websocket.Dialer
}

// buildDialer returns the feed's dialer: a copy of the configured one whose
// dial functions give every socket keepalive tuning and byte-level liveness
// tracking (and pooled reads for plain ws:// on unix).
func (c *Client) buildDialer() *websocket.Dialer {
	c.pooled = socket.PooledReadsSupported && c.url.Scheme == "ws" && (c.cfg.dialer == nil || c.cfg.dialer.ReadBufferSize == 0)
	if c.cfg.dialer != nil || c.cfg.subprotocols != nil || c.cfg.compression {
		return newDialer(c.cfg.dialer, c.cfg.subprotocols, c.pooled, c.cfg.compression)
	}
	i := 0
	if c.pooled {
		i = 1
	}
	sd := &sharedDialers[i]
	sd.once.Do(func() { sd.d = newDialer(nil, nil, c.pooled, false) })
	return sd.d
}

func newDialer(base *websocket.Dialer, subprotocols []string, pooled, compression bool) *websocket.Dialer {
	var d websocket.Dialer
	if base != nil {
		d = *base
	} else {
		d = *websocket.DefaultDialer
	}
	tcp := d.NetDialContext
	if tcp == nil && d.NetDial != nil {
		nd := d.NetDial
		tcp = func(_ context.Context, network, addr string) (net.Conn, error) { return nd(network, addr) }
	}
	if tcp == nil {
		nd := &net.Dialer{KeepAlive: -1} // keepalive is applied by tuneSocket
		tcp = nd.DialContext
	}
	// Proxy and TLS are done by the chain (internal/dialer), below the
	// response check; gorilla sees a ready connection either way.
	chain := &dialer.Chain{TCP: tcp, TLS: d.NetDialTLSContext, Proxy: d.Proxy, TLSConfig: d.TLSClientConfig}
	d.Proxy = nil
	d.NetDial = nil
	d.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialVia(ctx, chain, network, addr, false)
	}
	d.NetDialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialVia(ctx, chain, network, addr, true)
	}
	d.HandshakeTimeout = 0 // bounded by our own context
	if pooled {
		d.ReadBufferSize = socket.GorillaBufferSize
	}
	if d.WriteBufferPool == nil && d.WriteBufferSize == 0 {
		d.WriteBufferPool = sharedWriteBuffers
	}
	if subprotocols != nil {
		d.Subprotocols = subprotocols
	}
	if compression {
		d.EnableCompression = true
	}
	return &d
}

// dialVia opens the connection for the dial in ctx (its dialSlot) through
// chain: every socket it opens is tuned and tracked, and the response check
// sits in the tracked socket's reads (ws://, or the user's TLS dial) or above
// TLS (wss://).
func dialVia(ctx context.Context, chain *dialer.Chain, network, addr string, useTLS bool) (net.Conn, error) {
	slot, _ := ctx.Value(dialSlotKey{}).(*dialSlot)
	if slot == nil {
		return nil, errors.New("wspool: internal: dial without a feed")
	}
	c := slot.client
	var tc *socket.Conn
	conn, err := chain.Dial(ctx, network, addr, useTLS, dialer.Target{URL: slot.url, Header: slot.header,
		Opened: func(nc net.Conn) net.Conn {
			if err := tuneSocket(nc, c.cfg.keepAlive); err != nil {
				c.log.Warn("tcp keepalive not applied", "err", err)
			}
			tc = socket.New(nc, c.pooled && !useTLS)
			slot.conn.Store(tc)
			return tc
		}})
	if err != nil {
		return nil, err
	}
	if tc != nil && conn == net.Conn(tc) {
		tc.SetCheck(slot.chk)
		return tc, nil
	}
	return handshake.NewConn(conn, slot.chk), nil
}

// sharedWriteBuffers lends write buffers to connections only while they
// write, so an idle feed holds none (gorilla's default buffer size).
var sharedWriteBuffers = &sync.Pool{}

// callRequestFunc runs the request func; a panic fails the attempt and is
// reported.
func (c *Client) callRequestFunc(ctx context.Context, u *url.URL, h http.Header) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = c.panicked("request func", r)
		}
	}()
	return c.cfg.requestFunc(ctx, u, h)
}

package wspool_test

// Secrets: credentials in a feed's URL (userinfo, token-like query values)
// and headers (WithHeader, WithRequestFunc) must never show up in a feed's
// name, its logs (even at Debug), Run's error, state change causes, Stats or
// HandshakeError — whatever the server does: reject with 401 (echoing the
// credentials back), refuse TCP, or accept and drop.

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/wstest"
)

// The secrets. Each is distinctive, so finding it anywhere is a leak.
const (
	secretPass        = "Pw-userinfo-7f3a9c"
	secretToken       = "tok-query-51b2e8"
	secretAPIKey      = "apikey-query-9d4c11"
	secretSignature   = "sig-query-c0ffee"
	secretHdrAuth     = "hdr-bearer-a1b2c3"
	secretHdrCookie   = "hdr-cookie-d4e5f6"
	secretFuncToken   = "func-token-778899"
	secretFuncAuth    = "func-bearer-aabbcc"
	secretFuncCookie  = "func-cookie-ddeeff"
	secretFuncSession = "func-session-123abc"
)

var allSecrets = []string{
	secretPass, secretToken, secretAPIKey, secretSignature,
	secretHdrAuth, secretHdrCookie, secretFuncToken, secretFuncAuth, secretFuncCookie, secretFuncSession,
}

// syncBuffer is a goroutine-safe bytes.Buffer for a log handler.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// secretFeedURL is a feed URL for addr carrying secrets in the query (and,
// with userinfo, in the userinfo) next to a harmless parameter.
func secretFeedURL(addr string, userinfo bool) string {
	u := "ws://"
	if userinfo {
		u += "alice:" + secretPass + "@"
	}
	return u + addr + "/feed?symbol=BTC&token=" + secretToken + "&api_key=" + secretAPIKey + "&signature=" + secretSignature
}

// secretOptions sets secret headers both ways and a request func adding
// more secrets to the query and headers of every dial.
func secretOptions() []wspool.Option {
	h := http.Header{}
	h.Set("Authorization", "Bearer "+secretHdrAuth)
	h.Set("Cookie", "session="+secretHdrCookie)
	return []wspool.Option{
		wspool.WithHeader(h),
		wspool.WithRequestFunc(func(_ context.Context, u *url.URL, h http.Header) error {
			q := u.Query()
			q.Set("access_token", secretFuncToken)
			q.Set("session", secretFuncSession)
			u.RawQuery = q.Encode()
			h.Add("Authorization", "Bearer "+secretFuncAuth)
			h.Add("Cookie", "sid="+secretFuncCookie)
			return nil
		}),
	}
}

// secretRecorder gathers everything a feed reports.
type secretRecorder struct {
	log  syncBuffer
	mu   sync.Mutex
	seen []string // rendered reports
	ev   *events
}

func newSecretRecorder() *secretRecorder { return &secretRecorder{ev: newEvents()} }

func (r *secretRecorder) add(what string, v ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, x := range v {
		r.seen = append(r.seen, fmt.Sprintf("%s: %v", what, x), fmt.Sprintf("%s: %+v", what, x))
		if err, ok := x.(error); ok && err != nil {
			r.seen = append(r.seen, what+": "+err.Error())
			var he *wspool.HandshakeError
			if errors.As(err, &he) {
				r.seen = append(r.seen, what+" HandshakeError: "+he.Error(), fmt.Sprintf("%s HandshakeError: %+v", what, *he))
			}
			for u := errors.Unwrap(err); u != nil; u = errors.Unwrap(u) {
				r.seen = append(r.seen, what+" (unwrapped): "+u.Error())
			}
		}
	}
}

func (r *secretRecorder) options() []wspool.Option {
	logger := slog.New(slog.NewJSONHandler(&r.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return []wspool.Option{
		wspool.WithLogger(logger),
		wspool.WithOnStateChange(func(sc wspool.StateChange) {
			r.ev.record(sc)
			r.add("state change", sc)
			if sc.Err != nil {
				r.add("state change cause", sc.Err)
			}
		}),
		wspool.WithOnError(func(feed string, err error) { r.add("OnError "+feed, err) }),
	}
}

// check fails the test for every report that contains a secret. runErr is
// Run's error, which must not be nil unless noRunErr.
func (r *secretRecorder) check(t *testing.T, c *wspool.Client, runErr error, noRunErr bool) {
	t.Helper()
	st := c.Stats()
	r.add("Run error", runErr)
	r.add("Name", c.Name())
	r.add("Stats", st)
	if st.LastError != nil {
		r.add("Stats.LastError", st.LastError)
	}
	r.add("log", r.log.String())
	r.mu.Lock()
	defer r.mu.Unlock()
	reported := map[string]bool{}
	for _, s := range r.seen {
		what, _, _ := strings.Cut(s, ":")
		for _, secret := range allSecrets {
			for _, form := range []string{secret, url.QueryEscape(secret), base64.StdEncoding.EncodeToString([]byte("alice:" + secret))} {
				i := strings.Index(s, form)
				if i < 0 || reported[what+secret] {
					continue
				}
				reported[what+secret] = true
				from, to := max(i-120, 0), min(i+len(form)+40, len(s))
				t.Errorf("secret %q leaked in %s: ...%s...", secret, what, s[from:to])
			}
		}
	}
	if t.Failed() {
		return
	}
	// The reports are not empty: they say what happened.
	if (runErr == nil) != noRunErr || st.LastError == nil || !strings.Contains(r.log.String(), `"level":"DEBUG"`) {
		t.Errorf("nothing to check: Run error %v, LastError %v, log %d bytes", runErr, st.LastError, len(r.log.String()))
	}
	if name := c.Name(); !strings.Contains(name, "symbol=BTC") || !strings.Contains(name, "REDACTED") {
		t.Errorf("name %q: want the harmless query kept and the secrets replaced", name)
	}
}

// runUntilDone runs c until Run returns (bounded).
func runUntilDone(t *testing.T, c *wspool.Client, d time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	err := <-errc
	if ctx.Err() != nil {
		t.Fatalf("Run did not end on its own within %v (returned %v)", d, err)
	}
	return err
}

// refusedAddr returns a loopback address nothing listens on.
func refusedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestSecretsNeverReported(t *testing.T) {
	// The 401 server echoes every credential it got, in headers and body.
	var gotMu sync.Mutex
	var got []*http.Request
	reject := newServer(t, wstest.Drain)
	reject.SetReject(func(r *http.Request) (int, http.Header) {
		gotMu.Lock()
		got = append(got, r)
		gotMu.Unlock()
		h := http.Header{}
		h.Set("WWW-Authenticate", fmt.Sprintf("Bearer error=%q, got=%q", "invalid_token", strings.Join(r.Header.Values("Authorization"), ",")))
		h.Set("X-Echo-Query", r.URL.RawQuery)
		h.Set("X-Echo-Cookie", strings.Join(r.Header.Values("Cookie"), ";"))
		return http.StatusUnauthorized, h
	})
	// The dropping server sends one message and then drops the connection.
	drop := newServer(t, func(c *websocket.Conn, r *http.Request) {
		_ = c.WriteMessage(websocket.TextMessage, []byte("hello "+r.URL.RawQuery))
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseInternalServerErr, "bye"), time.Now().Add(time.Second))
	})

	// check401 checks Run's error and that every header and query secret
	// actually went over the wire (so the test exercises it).
	check401 := func(t *testing.T, err error) {
		var he *wspool.HandshakeError
		if !errors.As(err, &he) || he.StatusCode != http.StatusUnauthorized {
			t.Errorf("Run error %v, want a HandshakeError 401", err)
		}
		gotMu.Lock()
		defer gotMu.Unlock()
		if len(got) == 0 {
			t.Fatal("the server saw no request")
		}
		r := got[len(got)-1]
		sent := r.URL.RawQuery + strings.Join(r.Header.Values("Authorization"), ",") + strings.Join(r.Header.Values("Cookie"), ";")
		for _, s := range []string{secretToken, secretAPIKey, secretSignature, secretFuncToken, secretFuncSession, secretHdrAuth, secretFuncAuth, secretHdrCookie, secretFuncCookie} {
			if !strings.Contains(sent, s) {
				t.Errorf("secret %q was not sent, so the test does not exercise it (sent %q)", s, sent)
			}
		}
	}
	type tc struct {
		name      string
		addr      func(t *testing.T) string
		userinfo  bool
		connected bool // the scenario reaches StateConnected
		noHeaders bool // no secret headers or request func: userinfo goes out as Basic auth
		check     func(t *testing.T, runErr error)
	}
	cases := []tc{
		{name: "401", addr: func(*testing.T) string { return reject.Addr() }, check: check401},
		{name: "401 with userinfo", userinfo: true, addr: func(*testing.T) string { return reject.Addr() }, check: check401},
		{name: "401 with userinfo sent as Basic auth", userinfo: true, noHeaders: true, addr: func(*testing.T) string { return reject.Addr() }, check: func(t *testing.T, err error) {
			gotMu.Lock()
			defer gotMu.Unlock()
			want := "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:"+secretPass))
			if len(got) == 0 || got[len(got)-1].Header.Get("Authorization") != want {
				t.Errorf("the userinfo did not go out as Basic auth (%d requests)", len(got))
			}
		}},
		{name: "TCP refused", addr: refusedAddr},
		{name: "TCP refused with userinfo", userinfo: true, addr: refusedAddr},
		{name: "connected then dropped", connected: true, addr: func(*testing.T) string { return drop.Addr() }},
		{name: "connected then dropped with userinfo", userinfo: true, connected: true, addr: func(*testing.T) string { return drop.Addr() }},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			rec := newSecretRecorder()
			opts := rec.options()
			if !tt.noHeaders {
				opts = append(opts, secretOptions()...)
			}
			// HealthMinUptime: a connection that delivered data and dropped
			// counts as a failure here, so that the feed ends by itself.
			opts = append(opts, wspool.WithMaxAttempts(2), wspool.WithBackoff(10*time.Millisecond, 20*time.Millisecond),
				wspool.WithHandshakeTimeout(2*time.Second), wspool.WithHealthyWhen(wspool.HealthMinUptime))
			c, err := wspool.NewClient(secretFeedURL(tt.addr(t), tt.userinfo), func(context.Context, wspool.Message) error {
				return errors.New("handler refuses " + secretFuncToken[:4]) // a handler error is reported too
			}, opts...)
			if err != nil {
				t.Fatal(err)
			}
			runErr := runUntilDone(t, c, 15*time.Second)
			t.Logf("Run: %v", runErr)
			if tt.connected && rec.ev.count(wspool.StateConnected) == 0 {
				t.Errorf("never connected: %v", rec.ev.snapshot())
			}
			if tt.check != nil {
				tt.check(t, runErr)
			}
			rec.check(t, c, runErr, false)
		})
	}
}

// TestSecretsPoolStats: the pool's view of such a feed holds no secret.
func TestSecretsPoolStats(t *testing.T) {
	rec := newSecretRecorder()
	pool, err := wspool.NewPool(poolOpts(append(rec.options(), wspool.WithBackoff(10*time.Millisecond, 20*time.Millisecond))...)...)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pool.Add(secretFeedURL(refusedAddr(t), true), nil, secretOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pool.Run(ctx) }()
	rec.ev.waitCount(t, wspool.StateBackingOff, 2, 10*time.Second)
	rec.add("PoolStats", pool.Stats())
	cancel()
	if err := recv(t, done, 10*time.Second, "Pool.Run to return"); err != nil {
		t.Errorf("Pool.Run: %v", err)
	}
	rec.check(t, c, nil, true)
}

// TestRequestFuncBadHostDoesNotLeakURL: a request func that sets a host the
// URL parser rejects (here a trailing newline, as read from a config file)
// passes checkFeedURL, but gorilla's DialContext re-parses u.String(), and its
// *url.Error quotes the whole URL with every query secret ("wspool: dial:
// parse \"ws://...?token=...\": invalid port ..."). That must not reach the
// state change cause, Stats.LastError or the log, and the failure must be
// permanent, as documented for an invalid URL from a request func.
func TestRequestFuncBadHostDoesNotLeakURL(t *testing.T) {
	rec := newSecretRecorder()
	opts := append(rec.options(),
		wspool.WithMaxAttempts(3), wspool.WithBackoff(10*time.Millisecond, 20*time.Millisecond),
		wspool.WithRequestFunc(func(_ context.Context, u *url.URL, h http.Header) error {
			u.Host += "\n"
			return nil
		}))
	c, err := wspool.NewClient(secretFeedURL(refusedAddr(t), false), nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	runErr := runUntilDone(t, c, 10*time.Second)
	t.Logf("Run: %v", runErr)
	if !errors.Is(runErr, wspool.ErrInvalidURL) {
		t.Errorf("Run error %v: an invalid URL from a request func should be permanent (ErrInvalidURL)", runErr)
	}
	rec.check(t, c, runErr, false)
}

// TestURLUserinfoFeedConnects: gorilla's Dialer rejects any URL with
// userinfo ("malformed ws or wss URL") before dialling; a feed URL with
// userinfo must still connect, sending the credentials as HTTP Basic
// authorization.
func TestURLUserinfoFeedConnects(t *testing.T) {
	auth := make(chan string, 10)
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		select {
		case auth <- r.Header.Get("Authorization"):
		default:
		}
		wstest.Drain(c, r)
	})
	ev := newEvents()
	c, err := wspool.NewClient("ws://alice:"+secretPass+"@"+srv.Addr()+"/feed", nil, ev.option(),
		wspool.WithBackoff(10*time.Millisecond, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	deadline := time.NewTimer(3 * time.Second)
	defer deadline.Stop()
	select {
	case a := <-auth:
		if want := "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:"+secretPass)); a != want {
			t.Errorf("Authorization %q, want %q", a, want)
		}
	case <-deadline.C:
		cause, _, _ := ev.firstCause(wspool.StateBackingOff)
		t.Fatalf("a feed URL with userinfo never connected in 3s: %d attempts, first cause %v", c.Stats().Attempts, cause)
	}
}

// poolOpts turns feed options into pool options (every Option is one).
func poolOpts(opts ...wspool.Option) []wspool.PoolOption {
	out := make([]wspool.PoolOption, len(opts))
	for i, o := range opts {
		out[i] = o
	}
	return out
}

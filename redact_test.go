package wspool_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/wstest"
)

// Secrets in the path (an exchange listen key, an RPC API key) and under
// query keys beyond the obvious ones.
const (
	pathListenKey = "pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv6a81va65sdf19v8a65a1"
	pathAPIKey    = "9aa3d95b3bc440fa88ea12eaa4456161"
	pathMixedKey  = "Ab3xQ9kLm2Pz7Rt5"
	queryTicket   = "tkt-5e1f0a"
	queryPw       = "pw-6a2b0c"
	queryAccess   = "acc-7c3d0e"
	queryListen   = "lk-8e4f1a"
	queryOTP      = "otp-9f5a2b"
	queryRandom   = "Zx81Qk29Lm45Np67Rs0Tv3Wy"
)

var pathSecrets = []string{pathListenKey, pathAPIKey, pathMixedKey, queryTicket, queryPw, queryAccess, queryListen, queryOTP, queryRandom}

func pathSecretURL(addr string) string {
	return "ws://" + addr + "/v3/" + pathAPIKey + "/ws/" + pathListenKey + "/" + pathMixedKey + "/BTCUSDT/2024-01-15" +
		"?symbol=BTC&side=buy&ticket=" + queryTicket + "&pw=" + queryPw + "&access=" + queryAccess +
		"&listenKey=" + queryListen + "&OTP=" + queryOTP + "&cursor=" + queryRandom
}

// TestSecretPathSegmentsAndWiderKeysRedacted: path segments that look like
// credentials and the values of a wider list of secret query keys never
// appear in the name, logs, state changes, errors or Stats; the harmless
// parts of the URL stay readable.
func TestSecretPathSegmentsAndWiderKeysRedacted(t *testing.T) {
	reject := newServer(t, wstest.Drain)
	reject.SetReject(func(r *http.Request) (int, http.Header) {
		h := http.Header{}
		h.Set("X-Echo", r.URL.String())
		return http.StatusUnauthorized, h
	})
	drop := newServer(t, func(c *websocket.Conn, r *http.Request) {
		_ = c.WriteMessage(websocket.TextMessage, []byte("hello"))
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseInternalServerErr, "bye"), time.Now().Add(time.Second))
	})
	for _, tt := range []struct {
		name string
		addr func(t *testing.T) string
	}{
		{"401", func(*testing.T) string { return reject.Addr() }},
		{"TCP refused", refusedAddr},
		{"connected then dropped", func(*testing.T) string { return drop.Addr() }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := newSecretRecorder()
			opts := append(rec.options(), wspool.WithMaxAttempts(2), wspool.WithBackoff(10*time.Millisecond, 20*time.Millisecond),
				wspool.WithHandshakeTimeout(2*time.Second), wspool.WithHealthyWhen(wspool.HealthMinUptime)) // a connection that delivered data is a failure here: the feed ends by itself
			c, err := wspool.NewClient(pathSecretURL(tt.addr(t)), nil, opts...)
			if err != nil {
				t.Fatal(err)
			}
			runErr := runUntilDone(t, c, 15*time.Second)
			st := c.Stats()
			rec.add("Run error", runErr)
			rec.add("Name", c.Name())
			rec.add("Stats", st)
			rec.add("log", rec.log.String())
			rec.mu.Lock()
			defer rec.mu.Unlock()
			for _, s := range rec.seen {
				for _, secret := range pathSecrets {
					if strings.Contains(s, secret) {
						t.Errorf("secret %q leaked: %.300s", secret, s)
					}
				}
			}
			name := c.Name()
			for _, keep := range []string{"/v3/", "/ws/", "/BTCUSDT/2024-01-15", "symbol=BTC", "side=buy", "REDACTED"} {
				if !strings.Contains(name, keep) {
					t.Errorf("name %q lost %q", name, keep)
				}
			}
			if _, err := url.Parse(name); err != nil {
				t.Errorf("name %q does not parse: %v", name, err)
			}
			if runErr == nil || st.LastError == nil {
				t.Errorf("nothing reported: Run %v, LastError %v", runErr, st.LastError)
			}
		})
	}
}

package redact_test

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"testing"

	"github.com/wspool/wspool/internal/redact"
)

func mustParse(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestURLDropsUserinfoFragmentAndSecretQueryValues: userinfo and fragment
// go, the values of secret keys are replaced, the rest stays readable.
func TestURLDropsUserinfoFragmentAndSecretQueryValues(t *testing.T) {
	got := redact.URL(mustParse(t, "wss://alice:hunter22@feed.example:8443/stream?symbol=BTC&side=buy&token=t0k&API-Key=k1&listenKey=lk&S_K=x#frag"))
	for _, gone := range []string{"alice", "hunter22", "t0k", "k1", "lk", "frag", "=x"} {
		if strings.Contains(got, gone) {
			t.Errorf("%q keeps %q", got, gone)
		}
	}
	for _, kept := range []string{"wss://feed.example:8443/stream", "symbol=BTC", "side=buy", "token=REDACTED", "API-Key=REDACTED", "S_K=REDACTED"} {
		if !strings.Contains(got, kept) {
			t.Errorf("%q lost %q", got, kept)
		}
	}
}

// TestURLQueryThatDoesNotParseIsReplacedWhole: a query url.ParseQuery
// rejects cannot be judged key by key.
func TestURLQueryThatDoesNotParseIsReplacedWhole(t *testing.T) {
	u := &url.URL{Scheme: "ws", Host: "h", Path: "/", RawQuery: "a=1;token=semicolon-secret"}
	if got := redact.URL(u); got != "ws://h/?REDACTED" {
		t.Errorf("got %q", got)
	}
}

// TestURLDoesNotChangeItsArgument: the caller's URL is still the one dialled.
func TestURLDoesNotChangeItsArgument(t *testing.T) {
	const raw = "ws://u:p@h/Ab3xQ9kLm2Pz7Rt5?token=x#f"
	u := mustParse(t, raw)
	_ = redact.URL(u)
	if u.String() != raw {
		t.Errorf("argument changed to %q", u.String())
	}
}

// TestSecretKeyWholeWordsAndShortKeys: long words match anywhere in a key,
// short ones only as the whole key.
func TestSecretKeyWholeWordsAndShortKeys(t *testing.T) {
	for k, want := range map[string]bool{
		"token": true, "access_token": true, "X-Amz-Credential": true, "Signature": true,
		"apikey": true, "listenKey": true, "PW": true, "s-k": true, "sid": true, "otp": true,
		"side": false, "symbol": false, "pinned": false, "skip": false, "cursor": false, "": false,
	} {
		if got := redact.SecretKey(k); got != want {
			t.Errorf("SecretKey(%q) = %v, want %v", k, got, want)
		}
	}
}

// TestSecretValueHeuristicKeepsWords: what the token heuristic keeps and
// replaces, in path segments and query values alike.
func TestSecretValueHeuristicKeepsWords(t *testing.T) {
	for s, want := range map[string]bool{
		"stream":                               false,
		"v3":                                   false,
		"btcusdt@aggTrade":                     false,
		"2024-01-15":                           false,
		"market-data-feed-for-options":         false, // no digit
		"ABCDEFGH12":                           false, // short
		"abcdefgh12345678":                     false, // 16, one case: needs 24
		"Ab3xQ9kLm2Pz7Rt5":                     true,  // 16, mixed case and digits
		"9aa3d95b3bc440fa88ea12eaa4456161":     true,  // 32 hex
		"123e4567-e89b-12d3-a456-426614174000": true,  // UUID
		"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl": true, // JWT
		"Ab3xQ9kLm2Pz7Rt5/": false, // a character outside the set
	} {
		if got := redact.SecretValue(s); got != want {
			t.Errorf("SecretValue(%q) = %v, want %v", s, got, want)
		}
		if got := strings.Contains(redact.URL(&url.URL{Scheme: "ws", Host: "h", Path: "/" + s}), "REDACTED"); got != want && !strings.Contains(s, "/") {
			t.Errorf("path /%s: redacted %v, want %v", s, got, want)
		}
	}
}

// TestTruncateBoundsTextKeepsChain: a long message is cut (to valid UTF-8)
// and says its length; errors.Is still finds what it wraps; a short one is
// returned as it is.
func TestTruncateBoundsTextKeepsChain(t *testing.T) {
	short := errors.New("short")
	if redact.Truncate(short) != short {
		t.Error("a short error was wrapped")
	}
	long := fmt.Errorf("header %s: %w", strings.Repeat("é", redact.MaxErrorText), io.ErrUnexpectedEOF)
	got := redact.Truncate(long)
	msg := got.Error()
	if len(msg) > redact.MaxErrorText+64 {
		t.Errorf("message is %d bytes", len(msg))
	}
	if !strings.Contains(msg, fmt.Sprintf("(%d bytes)", len(long.Error()))) {
		t.Errorf("message %q does not give the full length", msg[len(msg)-32:])
	}
	if !strings.HasPrefix(msg, "header é") || strings.ToValidUTF8(msg, "?") != msg {
		t.Errorf("message not a valid UTF-8 prefix: %q", msg[:32])
	}
	if !errors.Is(got, io.ErrUnexpectedEOF) || !errors.Is(got, long) {
		t.Error("errors.Is lost the chain")
	}
}

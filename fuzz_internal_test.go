package wspool

import (
	"math"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"
)

// FuzzParseRetryAfter checks parseRetryAfter against RFC 9110 section 10.2.3:
// Retry-After is delay-seconds (1*DIGIT) or an HTTP date. The result is never
// negative; delay-seconds give exactly that many seconds, saturating (not
// wrapping, not dropped) when they do not fit a time.Duration; a date gives
// the time until it, or zero if it is past.
func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{
		"", "0", "120", "-1", "+5", "1.5", "007", "abc",
		"9223372036", "Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT",
	} {
		f.Add(s)
	}
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	maxSecs := big.NewInt(int64(math.MaxInt64 / int64(time.Second)))
	f.Fuzz(func(t *testing.T, v string) {
		d := parseRetryAfter(v, now)
		if d < 0 {
			t.Fatalf("parseRetryAfter(%q) = %v, negative", v, d)
		}
		if v != "" && strings.Trim(v, "0123456789") == "" {
			n, _ := new(big.Int).SetString(v, 10)
			if n.Cmp(maxSecs) <= 0 {
				if want := time.Duration(n.Int64()) * time.Second; d != want {
					t.Fatalf("parseRetryAfter(%q) = %v, want %v", v, d, want)
				}
			} else if d < time.Duration(maxSecs.Int64())*time.Second {
				t.Fatalf("parseRetryAfter(%q) = %v: a delay too long for a Duration must saturate", v, d)
			}
			return
		}
		if at, err := http.ParseTime(v); err == nil {
			if want := max(at.Sub(now), 0); d != want {
				t.Fatalf("parseRetryAfter(%q) = %v, want %v", v, d, want)
			}
		}
	})
}

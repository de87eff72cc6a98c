package wspool

import (
	"fmt"
	"net/url"
	"strings"
)

// shortError keeps a hostile server's bytes quoted in an error (an endless
// header line, say) from bloating logs and Stats: the message is cut at
// maxErrorText; errors.Is/As still see the original.
func shortError(err error) error {
	if len(err.Error()) <= maxErrorText {
		return err
	}
	return &truncatedError{err}
}

const maxErrorText = 512

type truncatedError struct{ err error }

func (e *truncatedError) Error() string {
	msg := e.err.Error()
	return fmt.Sprintf("%s… (%d bytes)", strings.ToValidUTF8(msg[:maxErrorText], ""), len(msg))
}

func (e *truncatedError) Unwrap() error { return e.err }

// redactURL renders u for names and logs: no userinfo, no fragment,
// secret-looking path segments replaced, and the values of secret-looking
// query keys (secretKey) and secret-looking values (secretValue) replaced.
func redactURL(u *url.URL) string {
	r := *u
	r.User = nil
	r.Fragment = ""
	r.RawFragment = ""
	if r.Path != "" {
		segs := strings.Split(r.Path, "/")
		changed := false
		for i, s := range segs {
			if secretValue(s) {
				segs[i] = "REDACTED"
				changed = true
			}
		}
		if changed {
			r.Path = strings.Join(segs, "/")
			r.RawPath = ""
		}
	}
	if r.RawQuery != "" {
		q, err := url.ParseQuery(r.RawQuery)
		if err != nil {
			r.RawQuery = "REDACTED"
		} else {
			for k, vs := range q {
				if secretKey(k) {
					q[k] = []string{"REDACTED"}
					continue
				}
				for i, v := range vs {
					if secretValue(v) {
						vs[i] = "REDACTED"
					}
				}
			}
			r.RawQuery = q.Encode()
		}
	}
	return r.String()
}

// secretWords are query keys that look secret when found anywhere in a key
// (case-insensitive); secretKeys are short ones that must be the whole key
// (after removing "-" and "_"), since as substrings they would match
// harmless keys ("side" holds "sid").
var (
	secretWords = []string{
		"token", "key", "secret", "pass", "pwd", "auth", "sig", "session", "credential",
		"jwt", "bearer", "cookie", "code", "ticket", "access", "private", "hmac", "nonce",
	}
	secretKeys = []string{"pw", "pin", "otp", "sid", "ak", "sk", "cred", "apikey", "listenkey"}
)

func secretKey(k string) bool {
	k = strings.ToLower(k)
	for _, w := range secretWords {
		if strings.Contains(k, w) {
			return true
		}
	}
	k = strings.NewReplacer("-", "", "_", "").Replace(k)
	for _, w := range secretKeys {
		if k == w {
			return true
		}
	}
	return false
}

// secretValue reports whether a path segment or query value looks like a
// credential: a random-looking token such as an exchange listen key, an API
// key in an RPC path, a JWT or a UUID. The heuristic: only letters, digits
// and "-_.~+=" (the characters of hex, base64url and JWTs), at least one
// letter and one digit, and either at least 24 characters, or at least 16
// mixing upper case, lower case and digits. Words, symbols ("BTCUSDT"),
// version segments ("v3") and dates ("2024-01-15") are kept.
func secretValue(s string) bool {
	if len(s) < 16 {
		return false
	}
	var upper, lower, digit bool
	for i := 0; i < len(s); i++ {
		switch b := s[i]; {
		case b >= 'A' && b <= 'Z':
			upper = true
		case b >= 'a' && b <= 'z':
			lower = true
		case b >= '0' && b <= '9':
			digit = true
		case b == '-' || b == '_' || b == '.' || b == '~' || b == '+' || b == '=':
		default:
			return false
		}
	}
	if !digit || !(upper || lower) {
		return false
	}
	return len(s) >= 24 || (upper && lower)
}

// Package redact renders URLs and errors for names, logs and Stats without
// the credentials they may hold: userinfo, the values of secret-looking query
// keys, and path segments or values that look like a random token (listen
// keys, API keys, JWTs, UUIDs). It also bounds the text of errors that quote
// what a server sent.
package redact

import (
	"fmt"
	"net/url"
	"strings"
)

// Truncate keeps a hostile server's bytes quoted in an error (an endless
// header line, say) from bloating logs and Stats: the message is cut at
// MaxErrorText bytes (and says how long it was); errors.Is/As still see the
// original.
func Truncate(err error) error {
	if len(err.Error()) <= MaxErrorText {
		return err
	}
	return &truncatedError{err}
}

// MaxErrorText is the longest error message Truncate leaves whole.
const MaxErrorText = 512

type truncatedError struct{ err error }

func (e *truncatedError) Error() string {
	msg := e.err.Error()
	return fmt.Sprintf("%s… (%d bytes)", strings.ToValidUTF8(msg[:MaxErrorText], ""), len(msg))
}

func (e *truncatedError) Unwrap() error { return e.err }

// URL renders u for names and logs: no userinfo, no fragment,
// secret-looking path segments replaced by "REDACTED", and the values of
// secret-looking query keys (SecretKey) and secret-looking values
// (SecretValue) replaced likewise. A query that does not parse is replaced
// whole.
func URL(u *url.URL) string {
	r := *u
	r.User = nil
	r.Fragment = ""
	r.RawFragment = ""
	if r.Path != "" {
		segs := strings.Split(r.Path, "/")
		changed := false
		for i, s := range segs {
			if SecretValue(s) {
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
				if SecretKey(k) {
					q[k] = []string{"REDACTED"}
					continue
				}
				for i, v := range vs {
					if SecretValue(v) {
						vs[i] = "REDACTED"
					}
				}
			}
			r.RawQuery = q.Encode()
		}
	}
	return r.String()
}

// secretWords make a query key secret when found anywhere in it
// (case-insensitive); secretKeys are short ones that must be the whole key
// (case-insensitive, after removing "-" and "_"), since as substrings they
// would match harmless keys ("side" holds "sid").
var (
	secretWords = []string{
		"token", "key", "secret", "pass", "pwd", "auth", "sig", "session", "credential",
		"jwt", "bearer", "cookie", "code", "ticket", "access", "private", "hmac", "nonce",
	}
	secretKeys = []string{"pw", "pin", "otp", "sid", "ak", "sk", "cred"}
)

// SecretKey reports whether the values under query key k are secret: k
// contains one of token, key, secret, pass, pwd, auth, sig, session,
// credential, jwt, bearer, cookie, code, ticket, access, private, hmac or
// nonce, or is pw, pin, otp, sid, ak, sk or cred (any case, "-" and "_"
// ignored).
func SecretKey(k string) bool {
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

// SecretValue reports whether a path segment or query value looks like a
// credential: a random-looking token such as an exchange listen key, an API
// key in an RPC path, a JWT or a UUID. The heuristic: only letters, digits
// and "-_.~+=" (the characters of hex, base64url and JWTs), at least one
// letter and one digit, and either at least 24 characters, or at least 16
// mixing upper case, lower case and digits. Words, symbols ("BTCUSDT"),
// version segments ("v3") and dates ("2024-01-15") are kept.
func SecretValue(s string) bool {
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

package redact_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/wspool/wspool/internal/redact"
)

// fuzzSecretWords are query keys that look secret: a key containing one of
// them (in any case) must have its values redacted from names and logs.
var fuzzSecretWords = []string{"token", "key", "secret", "pass", "auth", "sig", "session", "credential", "jwt"}

func fuzzSecretKey(k string) bool {
	k = strings.ToLower(k)
	for _, w := range fuzzSecretWords {
		if strings.Contains(k, w) {
			return true
		}
	}
	return false
}

// FuzzURL: a feed URL with fuzzed userinfo, path and query. What URL renders
// (a feed's default name, used in logs, errors and Stats) must not depend on
// the password or on the values of secret-looking query keys, and must not
// contain them. The seed corpus is in testdata/fuzz/FuzzURL (it was the root
// package's FuzzFeedName, which fuzzed the same through NewClient's name).
func FuzzURL(f *testing.F) {
	for _, s := range [][4]string{
		{"alice", "hunter22", "/feed", "symbol=BTC&token=abcdef123"},
		{"", "", "/", "api_key=k3y-v4lue&x=1"},
		{"bob", "p@ss:w0rd/?#", "/a b", "Signature=sig-value&X-Amz-Credential=cred-value"},
		{"u", "pw-pw-pw", "/", "tok%65n=encoded-key-secret"},
		{"u", "pw-pw-pw", "/", "a=1;token=semicolon-secret"},
		{"u", "pw-pw-pw", "/", "token=first-secret&token=second-secret&TOKEN=upper-secret"},
		{"u", "pw-pw-pw", "/", "%zz=bad-escape-secret&token=t0ken-value"},
		{"tokenuser", "", "/p", "access_token=" + strings.Repeat("x", 40)},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	f.Fuzz(func(t *testing.T, user, pass, path, rawQuery string) {
		name := func(pw string, query string) (string, bool) {
			u := url.URL{Scheme: "ws", Host: "feed.example:8443", Path: path, RawQuery: query}
			if pw != "" || user != "" {
				u.User = url.UserPassword(user, pw)
			}
			// As NewClient does: the URL is parsed from its string.
			pu, err := url.Parse(u.String())
			if err != nil {
				return "", false
			}
			return redact.URL(pu), true
		}
		nameRaw, ok := name(pass, rawQuery)
		if !ok {
			return
		}
		if nu, err := url.Parse(nameRaw); err == nil && nu.User != nil {
			t.Fatalf("name %q keeps userinfo", nameRaw)
		}

		// The same URL with other secrets: the name must not change. Both
		// get the query in canonical form, so only the secrets differ.
		otherPass := ""
		var secrets []string
		if pass != "" {
			otherPass = "other-password"
			secrets = append(secrets, pass)
		}
		query, otherQuery := rawQuery, rawQuery
		if q, err := url.ParseQuery(rawQuery); err == nil {
			query = q.Encode()
			for k, vs := range q {
				if fuzzSecretKey(k) {
					secrets = append(secrets, vs...)
					q[k] = []string{"other-secret"}
				}
			}
			otherQuery = q.Encode()
		}
		nameA, okA := name(pass, query)
		nameB, okB := name(otherPass, otherQuery)
		if !okA || !okB {
			t.Fatalf("canonical forms rejected (%v, %v), raw URL accepted as %q", okA, okB, nameRaw)
		}
		if nameA != nameB {
			t.Fatalf("the name depends on secret values:\n%q\n%q", nameA, nameB)
		}
		// The name of the raw URL holds no secret, unless a non-secret part
		// of the URL holds the same text (then the name without secrets has
		// it too).
		for _, s := range secrets {
			if len(s) < 4 {
				continue
			}
			for _, form := range []string{s, url.QueryEscape(s), url.PathEscape(s)} {
				if strings.Contains(nameRaw, form) && !strings.Contains(nameB, form) {
					t.Fatalf("name %q contains secret %q", nameRaw, s)
				}
			}
		}
	})
}

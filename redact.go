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

// redactURL renders u for names and logs: no userinfo, no fragment, and
// secret-looking query values replaced.
func redactURL(u *url.URL) string {
	r := *u
	r.User = nil
	r.Fragment = ""
	r.RawFragment = ""
	if r.RawQuery != "" {
		q, err := url.ParseQuery(r.RawQuery)
		if err != nil {
			r.RawQuery = "REDACTED"
		} else {
			for k := range q {
				if secretKey(k) {
					q[k] = []string{"REDACTED"}
				}
			}
			r.RawQuery = q.Encode()
		}
	}
	return r.String()
}

var secretWords = []string{"token", "key", "secret", "pass", "pwd", "auth", "sig", "session", "credential", "jwt", "bearer", "cookie", "code"}

func secretKey(k string) bool {
	k = strings.ToLower(k)
	for _, w := range secretWords {
		if strings.Contains(k, w) {
			return true
		}
	}
	return false
}

package wspool

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/wspool/wspool/internal/handshake"
)

// Sentinel errors, usable with errors.Is.
var (
	// ErrInvalidOption wraps every option validation error.
	ErrInvalidOption = errors.New("wspool: invalid option")
	// ErrInvalidURL is returned for a URL that is not ws:// or wss:// with a host.
	ErrInvalidURL = errors.New("wspool: invalid URL")
	// ErrClosed is returned by operations on a Client or Pool that was closed.
	ErrClosed = errors.New("wspool: closed")
	// ErrNotConnected is returned by Send while the feed has no connection.
	ErrNotConnected = errors.New("wspool: not connected")
	// ErrAlreadyRunning is returned by a second call to Run.
	ErrAlreadyRunning = errors.New("wspool: already running")
	// ErrDuplicateName is returned by Pool.Add for a name already in the pool.
	ErrDuplicateName = errors.New("wspool: duplicate feed name")
	// ErrNotFound is returned by Pool.Remove for an unknown name.
	ErrNotFound = errors.New("wspool: feed not found")
	// ErrPongTimeout is the cause recorded when the peer stayed silent for
	// PongTimeout after a ping.
	ErrPongTimeout = errors.New("wspool: no frame from peer within pong timeout")
	// ErrStaleData is the cause recorded when no data message arrived within the
	// stale-data timeout.
	ErrStaleData = errors.New("wspool: no data message within stale timeout")
	// ErrMaxAttempts wraps the last error when WithMaxAttempts gave up.
	ErrMaxAttempts = errors.New("wspool: too many failed attempts")
	// ErrSlowConsumer is reported (WithOnError) when a feed's queue starts
	// dropping messages because its handler cannot keep up.
	ErrSlowConsumer = errors.New("wspool: slow consumer")
	// ErrSendBufferFull fails a Send that does not fit the send buffer.
	ErrSendBufferFull = errors.New("wspool: send buffer full")
	// ErrSendExpired fails a buffered Send older than SendBuffer.MaxAge.
	ErrSendExpired = errors.New("wspool: send expired in buffer")
	// ErrReconnect is the cause recorded when Client.Reconnect ended a
	// connection. A handler returns an error wrapping it to ask for a
	// reconnect (a resync after a gap, say): the connection is closed and
	// redialled, and the error is not reported as a handler failure.
	ErrReconnect = errors.New("wspool: reconnect requested")
	// ErrConnectionClosed is the cause recorded when the connection ended
	// without an error of its own (for example a rotation or a Remove).
	ErrConnectionClosed = errors.New("wspool: connection closed")
	// ErrInvalidUTF8 is the cause recorded when a text message was not valid
	// UTF-8: the connection was closed with 1007 and is redialled (see
	// WithUTF8Validation).
	ErrInvalidUTF8 = errors.New("wspool: invalid UTF-8 in a text message")
)

// HandshakeError is returned when the server answered the WebSocket upgrade
// with something other than 101. StatusCode is the HTTP status.
type HandshakeError struct {
	StatusCode int
	// RetryAfter is the server's Retry-After on a 429 or 503, zero otherwise.
	RetryAfter time.Duration
	Err        error // the underlying error (websocket.ErrBadHandshake)
}

// Error reports the HTTP status (and Retry-After, if any).
func (e *HandshakeError) Error() string {
	s := fmt.Sprintf("wspool: handshake failed: HTTP %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %v)", e.RetryAfter)
	}
	return s
}

// Unwrap returns the underlying error.
func (e *HandshakeError) Unwrap() error { return e.Err }

// HandlerError reports a handler that returned an error or panicked, another
// user callback that panicked, a Sequence.OnGap that returned an error (other
// than ErrReconnect), or a ServerPing.Reply that returned an invalid message
// type. Callback names it: "" for the handler, or "OnConnect",
// "request func", "OnStateChange", "OnError", "SendAsync done",
// "Heartbeat.Message", "Heartbeat.IsReply", "Sequence.Extract",
// "Sequence.Position", "Sequence.OnGap", "ServerPing.Reply", "duplicate
// filter", "permanent func", "retry policy", "timings func" or "admission
// key func". The feed
// goes on: with the next message after a handler, and as if the callback had
// not been set after another one (an OnConnect or request func panic fails
// the attempt).
type HandlerError struct {
	Feed string
	// Callback is "" for the handler.
	Callback string
	Err      error // the handler's error, nil if it panicked
	Panic    any   // the recovered value, nil if it returned an error
	Stack    []byte
}

// Error names the feed, the callback, and the error or panic value.
func (e *HandlerError) Error() string {
	cb := e.Callback
	if cb == "" {
		cb = "handler"
	}
	if e.Panic != nil {
		return fmt.Sprintf("wspool: feed %s: %s panicked: %v", e.Feed, cb, e.Panic)
	}
	return fmt.Sprintf("wspool: feed %s: %s: %v", e.Feed, cb, e.Err)
}

// Unwrap returns the handler's error (nil after a panic).
func (e *HandlerError) Unwrap() error { return e.Err }

// PermanentError marks an error that must not be retried. Return one (via
// Permanent) from an OnConnect hook or a request func to end the feed.
type PermanentError struct{ Err error }

// Error returns the wrapped error's message.
func (e *PermanentError) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err so that DefaultPermanent reports it as permanent.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// NegotiationError reports a 101 response that names an extension or a
// subprotocol the client did not offer, negotiates parameters the client
// cannot honour, or whose negotiation headers are malformed or too large
// (RFC 6455 section 4.1, RFC 7692 section 7). DefaultPermanent treats it as
// permanent: the server will answer the same way next time.
type NegotiationError struct {
	// Header is "Sec-WebSocket-Extensions" or "Sec-WebSocket-Protocol".
	Header string
	// Value is what the server sent (cut to 128 bytes).
	Value string
	// Reason says what is wrong with it.
	Reason string
}

// Error names the header, the value and the reason.
func (e *NegotiationError) Error() string { return (*handshake.Error)(e).Error() }

// checkFailure reports a failed response check (internal/handshake) with the
// public type.
func checkFailure(err error) error {
	var he *handshake.Error
	if errors.As(err, &he) {
		return (*NegotiationError)(he)
	}
	return err
}

// DefaultPermanent is the default retry classification. It reports as
// permanent: a *PermanentError, ErrInvalidURL, a *HandshakeError with status
// 401, 403 or 404 (retrying cannot fix credentials or a wrong path), and a
// *NegotiationError (a 101 naming an extension or subprotocol that was not
// offered, or compression parameters the client cannot honour). Everything
// else — dial errors, TLS errors, other handshake statuses (408, 429, 5xx),
// abnormal closes, read errors, missed pongs, stale data — is transient.
func DefaultPermanent(err error) bool {
	var pe *PermanentError
	var ne *NegotiationError
	if errors.As(err, &pe) || errors.Is(err, ErrInvalidURL) || errors.As(err, &ne) {
		return true
	}
	var he *HandshakeError
	if errors.As(err, &he) {
		switch he.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
			return true
		}
	}
	return false
}

// parseRetryAfter reads a Retry-After header value: delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if isDigits(v) {
		// delay-seconds; a value too large for a Duration saturates (the
		// caller caps it with WithMaxRetryAfter).
		secs, err := strconv.ParseInt(v, 10, 64)
		if err != nil || secs > int64(math.MaxInt64/time.Second) {
			return time.Duration(math.MaxInt64)
		}
		return time.Duration(secs) * time.Second
	}
	if strings.HasPrefix(v, "-") {
		return 0
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// Package handshake checks a server's answer to a WebSocket upgrade as its
// bytes arrive, before gorilla/websocket parses it.
//
// gorilla enables permessage-deflate whenever a 101 names it (offered or
// not), keeps any subprotocol the server names, and allocates a map per
// element of Sec-WebSocket-Extensions (a 1 MiB header cost 195 MiB). A Check
// reads the response head itself, bounded (MaxResponseBytes, and
// MaxNegotiationBytes per negotiation header), fails on anything that was not
// offered or that gorilla cannot honour (RFC 6455 section 4.1, RFC 7692
// section 7), and hands gorilla a head whose Sec-WebSocket-Extensions is
// either absent or exactly what gorilla implements. A response other than a
// 101 is passed on untouched for gorilla to report.
//
// A Check sits in the Read path of the connection gorilla reads the response
// from: in the socket wrapper for ws:// (Check.Read with the socket as
// source), or above TLS for wss:// (NewConn).
package handshake

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/gorilla/websocket"
)

// Error reports a 101 response that names an extension or a subprotocol the
// client did not offer, negotiates parameters the client cannot honour, or
// whose negotiation headers are malformed or too large. The feed reports it
// as the public wspool.NegotiationError.
type Error struct {
	// Header is "Sec-WebSocket-Extensions" or "Sec-WebSocket-Protocol".
	Header string
	// Value is what the server sent (cut to 128 bytes).
	Value string
	// Reason says what is wrong with it.
	Reason string
}

// Error names the header, the value and the reason.
func (e *Error) Error() string {
	return fmt.Sprintf("wspool: handshake: server's %s %q: %s", e.Header, e.Value, e.Reason)
}

// MaxResponseBytes bounds what a server may send before the upgrade
// completes (an endless header line would otherwise be buffered until the
// handshake timeout). The socket wrapper applies the same bound to what it
// reads before the upgrade.
const MaxResponseBytes = 1 << 20

// ErrResponseTooLarge is returned when the handshake response exceeds
// MaxResponseBytes.
var ErrResponseTooLarge = errors.New("wspool: handshake response over 1 MiB")

const (
	hdrExtensions = "Sec-WebSocket-Extensions"
	hdrProtocol   = "Sec-WebSocket-Protocol"
	// MaxNegotiationBytes bounds each of the two negotiation headers (all
	// their lines together) in a 101 response.
	MaxNegotiationBytes = 4096
	// deflateForGorilla is what gorilla's permessage-deflate implements (no
	// context takeover either way) and the only extension line it is shown.
	deflateForGorilla = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
)

func negotiationError(header, value, format string, args ...any) *Error {
	if len(value) > 128 {
		value = strings.ToValidUTF8(value[:128], "") + "…"
	}
	return &Error{Header: header, Value: value, Reason: fmt.Sprintf(format, args...)}
}

// Check checks and rewrites one handshake response as it is read. It is used
// by one dial, from one goroutine.
type Check struct {
	protos  []string // subprotocols offered
	deflate bool     // permessage-deflate offered (as gorilla offers it)

	buf  []byte // the response head read so far
	scan int    // buf[:scan] is made of complete lines already checked
	negN [2]int // bytes of the two negotiation headers seen so far
	last int    // the header of the last complete line: 0 other, 1 extensions, 2 protocol
	out  []byte // what gorilla reads next, once the head is complete
	rest []byte // with keepRest: what followed the head (the first frames)

	keepRest bool  // hand gorilla the head only (KeepRest)
	done     bool  // the head has been handed on (or was not a 101): pass through
	err      error // the failure, kept for dial to report
}

// New returns the check for a dial with dialer d and request header h: the
// subprotocols offered are d's, or else those the header names; deflate is
// offered if d enables compression.
func New(d *websocket.Dialer, h http.Header) *Check {
	protos := d.Subprotocols
	if len(protos) == 0 {
		for _, v := range h.Values(hdrProtocol) {
			for _, p := range strings.Split(v, ",") {
				if p = strings.TrimSpace(p); p != "" {
					protos = append(protos, p)
				}
			}
		}
	}
	return &Check{protos: protos, deflate: d.EnableCompression}
}

// Read serves p from the checked response head, reading it from src, until
// the head (and whatever arrived with it) has been handed on; then Done
// reports true and the caller reads src directly. A failed check is returned
// by every later Read and by Err.
func (r *Check) Read(src io.Reader, p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	for r.out == nil {
		if len(r.buf) == cap(r.buf) {
			if len(r.buf) >= MaxResponseBytes {
				r.err = ErrResponseTooLarge
				return 0, r.err
			}
			nb := make([]byte, len(r.buf), max(2*cap(r.buf), 1024))
			copy(nb, r.buf)
			r.buf = nb
		}
		n, err := src.Read(r.buf[len(r.buf):cap(r.buf)])
		r.buf = r.buf[:len(r.buf)+n]
		if n > 0 {
			if cerr := r.advance(); cerr != nil {
				r.err = cerr
				return 0, cerr
			}
		}
		if r.out == nil && err != nil {
			return 0, err
		}
	}
	n := copy(p, r.out)
	r.out = r.out[n:]
	if len(r.out) == 0 {
		r.done = true
		r.buf, r.out = nil, nil
	}
	return n, nil
}

// advance checks the complete lines read so far; at the end of the head it
// prepares out.
func (r *Check) advance() error {
	for {
		i := bytes.IndexByte(r.buf[r.scan:], '\n')
		if i < 0 {
			break
		}
		line := r.buf[r.scan : r.scan+i+1]
		start := r.scan
		r.scan += i + 1
		text := bytes.TrimRight(line, "\r\n")
		if start == 0 {
			// The status line: only a 101 is ours to check.
			if !is101(text) {
				r.out = r.buf
				return nil
			}
			continue
		}
		if len(text) == 0 {
			return r.finish(r.scan)
		}
		if text[0] == ' ' || text[0] == '\t' {
			// A folded continuation line (obsolete syntax).
			if r.last != 0 {
				return negotiationError(negName(r.last), string(text), "folded header line")
			}
			continue
		}
		r.last = negHeader(text)
		if r.last != 0 {
			r.negN[r.last-1] += len(text)
		}
		if err := r.checkSizes(); err != nil {
			return err
		}
	}
	// The incomplete last line counts too: a huge negotiation header fails
	// without being read whole.
	if r.scan > 0 {
		if k := negHeader(r.buf[r.scan:]); k != 0 && r.negN[k-1]+len(r.buf)-r.scan > MaxNegotiationBytes {
			return negotiationError(negName(k), string(r.buf[r.scan:]), "over %d bytes", MaxNegotiationBytes)
		}
	}
	return nil
}

func (r *Check) checkSizes() error {
	for k, n := range r.negN {
		if n > MaxNegotiationBytes {
			return negotiationError(negName(k+1), "", "over %d bytes", MaxNegotiationBytes)
		}
	}
	return nil
}

func is101(status []byte) bool {
	// "HTTP/1.1 101 ..." (http.ReadResponse judges the rest)
	f := bytes.Fields(status)
	return len(f) >= 2 && bytes.HasPrefix(f[0], []byte("HTTP/")) && string(f[1]) == "101"
}

// negHeader returns 1 for a Sec-WebSocket-Extensions line, 2 for a
// Sec-WebSocket-Protocol line, 0 for any other.
func negHeader(line []byte) int {
	name, _, ok := bytes.Cut(line, []byte(":"))
	if !ok {
		return 0
	}
	name = bytes.TrimRight(name, " \t")
	switch {
	case bytes.EqualFold(name, []byte(hdrExtensions)):
		return 1
	case bytes.EqualFold(name, []byte(hdrProtocol)):
		return 2
	}
	return 0
}

func negName(k int) string {
	if k == 1 {
		return hdrExtensions
	}
	return hdrProtocol
}

// finish checks the negotiation headers of the complete head buf[:end] and
// builds what gorilla reads: the head with Sec-WebSocket-Extensions replaced
// by deflateForGorilla or removed, then whatever followed the head.
func (r *Check) finish(end int) error {
	var exts, protos []string
	lines := bytes.SplitAfter(r.buf[:end], []byte("\n"))
	for _, l := range lines[1:] {
		switch negHeader(l) {
		case 1:
			_, v, _ := bytes.Cut(l, []byte(":"))
			exts = append(exts, string(bytes.TrimSpace(v)))
		case 2:
			_, v, _ := bytes.Cut(l, []byte(":"))
			protos = append(protos, string(bytes.TrimSpace(v)))
		}
	}
	if err := r.checkProtocol(protos); err != nil {
		return err
	}
	deflate, err := r.checkExtensions(strings.Join(exts, ", "))
	if err != nil {
		return err
	}
	if r.keepRest {
		r.rest = r.buf[end:]
	}
	if len(exts) == 0 {
		r.out = r.buf[:end]
		if !r.keepRest {
			r.out = r.buf
		}
		return nil
	}
	out := make([]byte, 0, len(r.buf)+len(deflateForGorilla))
	for i, l := range lines {
		if i > 0 && negHeader(l) == 1 {
			continue
		}
		if i > 0 && deflate && len(l) > 0 && len(bytes.TrimRight(l, "\r\n")) == 0 { // before the empty line
			out = append(out, hdrExtensions+": "+deflateForGorilla+"\r\n"...)
		}
		out = append(out, l...)
	}
	if !r.keepRest {
		out = append(out, r.buf[end:]...)
	}
	r.out = out
	return nil
}

// checkProtocol: at most one subprotocol, and one that was offered.
func (r *Check) checkProtocol(values []string) error {
	if len(values) == 0 || (len(values) == 1 && values[0] == "") {
		return nil
	}
	v := strings.Join(values, ", ")
	if len(values) > 1 || strings.Contains(v, ",") {
		return negotiationError(hdrProtocol, v, "names more than one subprotocol")
	}
	if len(r.protos) == 0 {
		return negotiationError(hdrProtocol, v, "no subprotocol was offered")
	}
	for _, p := range r.protos {
		if p == v {
			return nil
		}
	}
	return negotiationError(hdrProtocol, v, "not one of the subprotocols offered (%s)", strings.Join(r.protos, ", "))
}

// checkExtensions walks the extension list without allocating per element
// and reports whether permessage-deflate was accepted. With our offer
// ("permessage-deflate; server_no_context_takeover;
// client_no_context_takeover"), RFC 7692 lets the server answer with
// server_no_context_takeover (required, since offered), optionally
// client_no_context_takeover, and optionally server_max_window_bits=8..15;
// gorilla's decompressor (no context, any window) and compressor (a fresh
// context per message, which any server accepts) honour all of them.
func (r *Check) checkExtensions(v string) (bool, error) {
	if strings.TrimSpace(v) == "" {
		return false, nil
	}
	deflate := false
	for rest := v; rest != ""; {
		var elem string
		elem, rest = cutUnquoted(rest, ',')
		elem = strings.TrimSpace(elem)
		if elem == "" {
			continue
		}
		name, params := cutUnquoted(elem, ';')
		name = strings.TrimSpace(name)
		if !r.deflate || !strings.EqualFold(name, "permessage-deflate") {
			return false, negotiationError(hdrExtensions, v, "extension %q was not offered", cut(name, 64))
		}
		if deflate {
			return false, negotiationError(hdrExtensions, v, "permessage-deflate accepted twice")
		}
		deflate = true
		var snct, cnct, smwb bool
		for params != "" {
			var p string
			p, params = cutUnquoted(params, ';')
			k, val, hasVal := strings.Cut(strings.TrimSpace(p), "=")
			k, val = strings.TrimSpace(k), strings.Trim(strings.TrimSpace(val), `"`)
			seen := (*bool)(nil)
			switch strings.ToLower(k) {
			case "server_no_context_takeover":
				seen = &snct
			case "client_no_context_takeover":
				seen = &cnct
			case "server_max_window_bits":
				if n, err := strconv.Atoi(val); !hasVal || err != nil || n < 8 || n > 15 || val != strconv.Itoa(n) {
					return false, negotiationError(hdrExtensions, v, "server_max_window_bits must be 8 to 15")
				}
				seen, hasVal = &smwb, false
			case "client_max_window_bits":
				return false, negotiationError(hdrExtensions, v, "client_max_window_bits was not offered (gorilla's compressor always uses a 32 KiB window)")
			default:
				return false, negotiationError(hdrExtensions, v, "unknown permessage-deflate parameter %q", cut(k, 64))
			}
			if hasVal {
				return false, negotiationError(hdrExtensions, v, "%s takes no value", k)
			}
			if *seen {
				return false, negotiationError(hdrExtensions, v, "%s given twice", k)
			}
			*seen = true
		}
		if !snct {
			return false, negotiationError(hdrExtensions, v, "no server_no_context_takeover: the server would keep its compression context across messages, which was offered against and gorilla cannot decompress")
		}
	}
	return deflate, nil
}

// cutUnquoted cuts s at the first sep outside a quoted string.
func cutUnquoted(s string, sep byte) (before, after string) {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case c == sep && !quoted:
			return s[:i], s[i+1:]
		}
	}
	return s, ""
}

func cut(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// Done reports whether the response head has been handed on (or was not a
// 101): the connection is read directly from then on.
func (r *Check) Done() bool { return r.done }

// Err returns the check's failure, if any: an *Error, ErrResponseTooLarge,
// or nil.
func (r *Check) Err() error { return r.err }

// DeflateOffered reports whether permessage-deflate was offered, and so may
// have been accepted: without the offer any extension fails the check.
func (r *Check) DeflateOffered() bool { return r.deflate }

// KeepRest makes the check hand on the head of a 101 response only and keep
// what followed it (the server's first frames) for Rest: the caller reads
// the frames itself.
func (r *Check) KeepRest() { r.keepRest = true }

// Rest returns, once, what followed a 101 response's head (KeepRest).
func (r *Check) Rest() []byte {
	b := r.rest
	r.rest = nil
	return b
}

// Conn puts a Check above TLS (for wss://, where the socket wrapper below
// sees only ciphertext).
type Conn struct {
	net.Conn
	chk *Check
}

// NewConn returns c with its reads passed through chk until the response
// head has been handed on.
func NewConn(c net.Conn, chk *Check) *Conn { return &Conn{Conn: c, chk: chk} }

// Read reads through the check, then directly.
func (c *Conn) Read(p []byte) (int, error) {
	if c.chk != nil {
		if !c.chk.done {
			return c.chk.Read(c.Conn, p)
		}
		c.chk = nil
	}
	return c.Conn.Read(p)
}

// NetConn returns the wrapped connection.
func (c *Conn) NetConn() net.Conn { return c.Conn }

package wspool

import (
	"fmt"
	"io"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/utf8check"
)

// msgCheck wraps the reader of one message (gorilla's, which decompresses
// when permessage-deflate is on). It bounds what is delivered by the read
// limit — gorilla's own limit counts wire bytes, so a compressed message
// could otherwise inflate without bound — and checks a text message for
// valid UTF-8 as its bytes pass, carrying a code point cut by a read (or a
// frame boundary) over to the next. Either violation closes the connection
// (1009, 1007) and fails the read with the cause. One msgCheck serves a
// reader goroutine's messages one after another (reset).
type msgCheck struct {
	r     io.Reader
	cn    *Conn
	n     int64 // bytes of the message so far
	count bool  // count against the read limit (compression negotiable: gorilla's limit counts wire bytes)
	utf8  bool  // check UTF-8 (a text message, validation on)
	text  utf8check.Stream
}

// reset prepares the check for the message of type typ read from r. With
// nothing to check it returns r itself: without compression offered (an
// extension not offered fails the handshake) gorilla's read limit already
// bounds the message, and a binary message (or validation off) needs no
// UTF-8 check.
func (m *msgCheck) reset(cn *Conn, typ int, r io.Reader, checkUTF8 bool) io.Reader {
	text := typ == websocket.TextMessage && checkUTF8
	if !cn.mayInflate && !text {
		return r
	}
	// Field by field: this runs for every message.
	m.r, m.cn, m.n, m.count, m.utf8 = r, cn, 0, cn.mayInflate, text
	m.text.Reset()
	return m
}

// Read reads from the message, never more than one byte past the limit.
func (m *msgCheck) Read(p []byte) (int, error) {
	limit := m.cn.client.cfg.readLimit
	if m.count {
		if room := limit + 1 - m.n; int64(len(p)) > room {
			p = p[:room]
		}
	}
	n, err := m.r.Read(p)
	m.n += int64(n)
	if m.count && m.n > limit {
		return 0, m.cn.fail(websocket.CloseMessageTooBig, fmt.Errorf(
			"wspool: message over read limit (%d bytes after decompression; closed with 1009): %w", limit, websocket.ErrReadLimit))
	}
	if m.utf8 {
		if n > 0 && !m.text.Write(p[:n]) {
			return 0, m.cn.fail(websocket.CloseInvalidFramePayloadData, fmt.Errorf(
				"%w (at byte %d of the message; closed with 1007)", ErrInvalidUTF8, m.n-int64(n)))
		}
		if err == io.EOF && m.text.Pending() {
			return 0, m.cn.fail(websocket.CloseInvalidFramePayloadData, fmt.Errorf(
				"%w (a sequence cut off at the end of the message; closed with 1007)", ErrInvalidUTF8))
		}
	}
	return n, err
}

// fail ends the connection for a protocol violation of the peer's: our
// close frame with code (unless one was sent already), then teardown with
// cause, which the reader reports. It returns cause.
func (cn *Conn) fail(code int, cause error) error {
	cn.closeOnce.Do(func() {
		cn.closing.Store(true)
		// The socket is closed right after: a short, bounded try.
		deadline := time.Now().Add(min(cn.client.cfg.closeTimeout, time.Second))
		if cn.lockWriterUntil(deadline) {
			_ = cn.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), deadline)
			cn.unlockWriter()
		}
	})
	cn.kill(cause)
	return cause
}

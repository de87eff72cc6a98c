package frameread

import (
	"io"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/utf8check"
)

// Check applies the Reader's message checks to a message read by gorilla's
// reader instead (a compressed or TLS connection): it wraps the message's
// io.Reader, bounds what is delivered by the limit after decompression
// (gorilla's own limit counts wire bytes, so a compressed message could
// otherwise inflate without bound) and checks a text message for valid UTF-8
// as its bytes pass. A violation fails the connection through the Peer (1009,
// 1007) and the read with Peer.Fail's error. One Check serves a reader
// goroutine's messages one after another (Reset).
type Check struct {
	r     io.Reader
	peer  Peer
	limit int64 // 0: not counted here
	n     int64 // bytes of the message so far
	utf8  bool  // check UTF-8 (a text message, validation on)
	text  utf8check.Stream
}

// Reset prepares the check for the message of type typ read from r; limit
// is the bound to apply (0 when gorilla's wire limit already bounds the
// message: no compression offered). With nothing to check it returns r
// itself.
func (m *Check) Reset(r io.Reader, peer Peer, typ int, limit int64, checkUTF8 bool) io.Reader {
	text := typ == websocket.TextMessage && checkUTF8
	if limit <= 0 && !text {
		return r
	}
	// Field by field: this runs for every message.
	m.r, m.peer, m.limit, m.n, m.utf8 = r, peer, limit, 0, text
	m.text.Reset()
	return m
}

// Read reads from the message, never more than one byte past the limit.
func (m *Check) Read(p []byte) (int, error) {
	if m.limit > 0 {
		if room := m.limit + 1 - m.n; int64(len(p)) > room {
			p = p[:room]
		}
	}
	n, err := m.r.Read(p)
	m.n += int64(n)
	if m.limit > 0 && m.n > m.limit {
		return 0, m.peer.Fail(websocket.CloseMessageTooBig, websocket.ErrReadLimit)
	}
	if m.utf8 {
		if n > 0 && !m.text.Write(p[:n]) {
			return 0, m.peer.Fail(websocket.CloseInvalidFramePayloadData, &UTF8Error{At: m.n - int64(n)})
		}
		if err == io.EOF && m.text.Pending() {
			return 0, m.peer.Fail(websocket.CloseInvalidFramePayloadData, &UTF8Error{CutOff: true})
		}
	}
	return n, err
}

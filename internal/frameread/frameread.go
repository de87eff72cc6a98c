// Package frameread reads the frames a WebSocket server sends its client
// (RFC 6455 section 5) straight out of the socket's read buffer and returns
// whole messages.
//
// A message that arrives as one frame lying whole in the socket's buffer is
// returned in place, with nothing copied; a fragmented message, or one larger
// than the socket's buffer, is assembled in the Reader's msgbuf.Buffer. Control
// frames are handled as they come (also between the fragments of a message):
// pings and pongs go to the Peer, a close frame ends the reading with a
// *websocket.CloseError after the Peer has answered it. Every protocol
// violation, a message over the read limit and, for text, invalid UTF-8
// (checked as the bytes arrive) fail the connection through Peer.Fail with
// the close code the RFC asks for. gorilla/websocket's own reader does the
// same for compressed (permessage-deflate) and TLS connections; the errors
// here read like its errors.
package frameread

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/msgbuf"
	"github.com/wspool/wspool/internal/utf8check"
)

// Source is a connection's buffered socket, read by one goroutine.
type Source interface {
	// Buffered returns the bytes read from the socket and not yet
	// consumed; the slice is valid until the next Consume, Fill or Read.
	Buffered() []byte
	// Consume drops the first n buffered bytes.
	Consume(n int)
	// Fill reads from the socket until at least n bytes (at most
	// BufferSize) are buffered.
	Fill(n int) error
	// Read reads from the socket into p; it is called only when nothing is
	// buffered (a large payload is read in place).
	Read(p []byte) (int, error)
	// BufferSize is how many bytes the buffer holds.
	BufferSize() int
}

// Peer acts on the connection for the Reader.
type Peer interface {
	// Ping and Pong handle a control frame's payload (valid during the
	// call only).
	Ping(payload []byte) error
	Pong(payload []byte) error
	// Close handles the server's valid close frame (code 1005 if it had
	// none): it answers it; the Reader then returns a *websocket.CloseError.
	Close(code int, text string) error
	// Fail ends the connection for the server's violation: close frame
	// with code, then teardown. It returns the error Next returns.
	Fail(code int, err error) error
}

// UTF8Error reports a text message that is not valid UTF-8.
type UTF8Error struct {
	// At is the offset in the message of the chunk that held the invalid
	// sequence.
	At int64
	// CutOff is set when the message ended inside a code point.
	CutOff bool
}

func (e *UTF8Error) Error() string {
	if e.CutOff {
		return "invalid UTF-8 (a sequence cut off at the end of the message)"
	}
	return fmt.Sprintf("invalid UTF-8 (at byte %d of the message)", e.At)
}

// errUnexpectedEOF is what gorilla returns when the socket ends without a
// close frame.
var errUnexpectedEOF = &websocket.CloseError{Code: websocket.CloseAbnormalClosure, Text: io.ErrUnexpectedEOF.Error()}

// Opcodes.
const (
	opContinuation = 0
	opText         = websocket.TextMessage
	opBinary       = websocket.BinaryMessage
	opClose        = websocket.CloseMessage
	opPing         = websocket.PingMessage
	opPong         = websocket.PongMessage
)

// Reader reads one connection's messages. It is used by one goroutine.
type Reader struct {
	src  Source
	peer Peer
	// Limit bounds a message's payload (0: none).
	Limit int64
	// CheckUTF8 validates text messages.
	CheckUTF8 bool

	buf     msgbuf.Buffer
	pending int // buffered bytes of the message returned in place, consumed at Release
	text    utf8check.Stream
}

// New returns a Reader of src's frames.
func New(src Source, peer Peer) *Reader { return &Reader{src: src, peer: peer} }

// Init sets up a Reader in place.
func (r *Reader) Init(src Source, peer Peer) { r.src, r.peer = src, peer }

// Release ends the message Next returned: its bytes may be reused.
func (r *Reader) Release() {
	if r.pending > 0 {
		r.src.Consume(r.pending)
		r.pending = 0
	}
	r.buf.Release()
}

// Next returns the next data message, its type (websocket.TextMessage or
// BinaryMessage) and payload, valid until Release or the next Next. Its
// error ends the connection: the server's close (*websocket.CloseError),
// the socket's error (the end of the socket without a close frame as a
// CloseError with code 1006), or what Peer.Fail returned.
func (r *Reader) Next() (typ int, p []byte, err error) {
	r.Release()
	var (
		inMessage bool  // a fragmented message is under way
		total     int64 // its payload so far
		checkText bool
	)
	for {
		b := r.src.Buffered()
		if len(b) < 2 {
			if err := r.fill(2); err != nil {
				return 0, nil, err
			}
			continue
		}
		b0, b1 := b[0], b[1]
		hl := 2
		switch b1 & 0x7f {
		case 126:
			hl = 4
		case 127:
			hl = 10
		}
		masked := b1&0x80 != 0
		if masked {
			hl += 4
		}
		if len(b) < hl {
			if err := r.fill(hl); err != nil {
				return 0, nil, err
			}
			continue
		}
		n := int64(b1 & 0x7f)
		switch n {
		case 126:
			n = int64(binary.BigEndian.Uint16(b[2:]))
		case 127:
			u := binary.BigEndian.Uint64(b[2:])
			if u>>63 != 0 {
				return 0, nil, websocket.ErrReadLimit // as gorilla: no close frame
			}
			n = int64(u)
		}
		fin := b0&0x80 != 0
		op := int(b0 & 0xf)
		if bad := violations(b0, op, fin, masked, n, inMessage); bad != "" {
			return 0, nil, r.peer.Fail(websocket.CloseProtocolError, errors.New("websocket: "+bad))
		}
		if op >= opClose {
			end := hl + int(n)
			if len(b) < end {
				if err := r.fill(end); err != nil {
					return 0, nil, err
				}
				continue
			}
			err := r.control(op, b[hl:end])
			r.src.Consume(end)
			if err != nil {
				return 0, nil, err
			}
			continue
		}
		size := n
		if op == opContinuation {
			size += total
		}
		if r.Limit > 0 && size > r.Limit {
			return 0, nil, r.peer.Fail(websocket.CloseMessageTooBig, websocket.ErrReadLimit)
		}
		if fin && op != opContinuation && int64(hl)+n <= int64(r.src.BufferSize()) {
			// One frame that fits the buffer: returned in place.
			end := hl + int(n)
			if len(b) < end {
				if err := r.fill(end); err != nil {
					return 0, nil, err
				}
				continue
			}
			p = b[hl:end]
			if op == opText && r.CheckUTF8 && !utf8check.Valid(p) {
				return 0, nil, r.peer.Fail(websocket.CloseInvalidFramePayloadData, &UTF8Error{})
			}
			r.pending = end
			return op, p, nil
		}
		if op != opContinuation {
			typ, inMessage = op, true
			checkText = op == opText && r.CheckUTF8
			r.text.Reset()
			r.buf.Reset()
		}
		total = size
		r.src.Consume(hl)
		if err := r.payload(n, checkText); err != nil {
			return 0, nil, err
		}
		if fin {
			if checkText && r.text.Pending() {
				return 0, nil, r.peer.Fail(websocket.CloseInvalidFramePayloadData, &UTF8Error{CutOff: true})
			}
			return typ, r.buf.Bytes(), nil
		}
	}
}

// payload appends a frame's n payload bytes to the message.
func (r *Reader) payload(n int64, checkText bool) error {
	for n > 0 {
		at := r.buf.Len()
		room := r.buf.Room(int(min(n, 1<<30)))
		var k int
		if b := r.src.Buffered(); len(b) > 0 {
			k = copy(room, b)
			r.src.Consume(k)
		} else if len(room) >= r.src.BufferSize()/2 {
			var err error
			if k, err = r.src.Read(room); err != nil && k == 0 {
				return eof(err)
			}
		} else {
			if err := r.fill(1); err != nil {
				return err
			}
			continue
		}
		if checkText && !r.text.Write(room[:k]) {
			return r.peer.Fail(websocket.CloseInvalidFramePayloadData, &UTF8Error{At: int64(at)})
		}
		r.buf.Commit(k)
		n -= int64(k)
	}
	return nil
}

func (r *Reader) fill(n int) error { return eof(r.src.Fill(n)) }

// eof reports the socket's end as gorilla does: the connection closed
// without a close frame.
func eof(err error) error {
	if err == io.EOF {
		return errUnexpectedEOF
	}
	return err
}

// violations checks a frame header as gorilla does, with its wording; ""
// if the header is fine.
func violations(b0 byte, op int, fin, masked bool, n int64, inMessage bool) string {
	if b0&0x70 == 0 && !masked {
		switch {
		case op >= opClose && op <= opPong:
			if n <= 125 && fin {
				return ""
			}
		case op == opText || op == opBinary:
			if !inMessage {
				return ""
			}
		case op == opContinuation:
			if inMessage {
				return ""
			}
		}
	}
	var errs []string
	if b0&0x40 != 0 {
		errs = append(errs, "RSV1 set")
	}
	if b0&0x20 != 0 {
		errs = append(errs, "RSV2 set")
	}
	if b0&0x10 != 0 {
		errs = append(errs, "RSV3 set")
	}
	switch op {
	case opClose, opPing, opPong:
		if n > 125 {
			errs = append(errs, "len > 125 for control")
		}
		if !fin {
			errs = append(errs, "FIN not set on control")
		}
	case opText, opBinary:
		if inMessage {
			errs = append(errs, "data before FIN")
		}
	case opContinuation:
		if !inMessage {
			errs = append(errs, "continuation after FIN")
		}
	default:
		errs = append(errs, "bad opcode "+strconv.Itoa(op))
	}
	if masked {
		errs = append(errs, "bad MASK")
	}
	return strings.Join(errs, ", ")
}

// control handles a control frame.
func (r *Reader) control(op int, p []byte) error {
	switch op {
	case opPing:
		return r.peer.Ping(p)
	case opPong:
		return r.peer.Pong(p)
	}
	code, text := websocket.CloseNoStatusReceived, ""
	if len(p) == 1 {
		return r.peer.Fail(websocket.CloseProtocolError, errors.New("websocket: close frame with a 1-byte payload"))
	}
	if len(p) >= 2 {
		code = int(binary.BigEndian.Uint16(p))
		if !validCloseCode(code) {
			return r.peer.Fail(websocket.CloseProtocolError, errors.New("websocket: bad close code "+strconv.Itoa(code)))
		}
		if !utf8.Valid(p[2:]) {
			return r.peer.Fail(websocket.CloseProtocolError, errors.New("websocket: invalid utf8 payload in close frame"))
		}
		text = string(p[2:])
	}
	if err := r.peer.Close(code, text); err != nil {
		return err
	}
	return &websocket.CloseError{Code: code, Text: text}
}

// validCloseCode reports whether a close frame may carry code (RFC 6455
// section 7.4).
func validCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1013:
		return true
	default:
		return code >= 3000 && code <= 4999
	}
}

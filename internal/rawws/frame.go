package rawws

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// Opcodes of RFC 6455 section 5.2. 3-7 and 0xB-0xF are reserved.
const (
	OpContinuation = 0x0
	OpText         = 0x1
	OpBinary       = 0x2
	OpClose        = 0x8
	OpPing         = 0x9
	OpPong         = 0xA
)

// Reserved bits for Frame.RSV.
const (
	RSV1 = 0x4
	RSV2 = 0x2
	RSV3 = 0x1
)

// Length encodings for Frame.LenForm.
const (
	LenShortest = 0  // the shortest encoding (RFC 6455 requires it)
	Len7        = 7  // 7-bit length in the second byte (0-125 only)
	Len16       = 16 // 126 followed by a 16-bit length
	Len64       = 64 // 127 followed by a 64-bit length
)

// Frame is one WebSocket frame, valid or not. The zero value with an Opcode
// and Payload is an unmasked, non-final frame: set Fin for a complete one (or
// use the constructors).
type Frame struct {
	Fin    bool
	RSV    uint8 // RSV1|RSV2|RSV3
	Opcode uint8 // 4 bits; anything, including reserved opcodes
	// Masked sets the mask bit and masks the payload with MaskKey (clients
	// must mask, servers must not).
	Masked  bool
	MaskKey [4]byte
	Payload []byte
	// LieLength makes the header declare Length instead of len(Payload): the
	// payload written is still Payload, so the frame is truncated (Length >
	// len) or followed by bytes the peer reads as the next frame.
	LieLength bool
	Length    uint64
	// LenForm forces a length encoding (Len7, Len16, Len64), also a
	// non-minimal one; LenShortest picks the shortest.
	LenForm int
}

// Text is a final text frame.
func Text(s string) Frame { return Frame{Fin: true, Opcode: OpText, Payload: []byte(s)} }

// Binary is a final binary frame.
func Binary(b []byte) Frame { return Frame{Fin: true, Opcode: OpBinary, Payload: b} }

// Ping is a ping frame.
func Ping(p []byte) Frame { return Frame{Fin: true, Opcode: OpPing, Payload: p} }

// Pong is a pong frame.
func Pong(p []byte) Frame { return Frame{Fin: true, Opcode: OpPong, Payload: p} }

// Close is a close frame with code (any value, also an invalid one) and
// reason; code < 0 gives an empty payload.
func Close(code int, reason string) Frame {
	f := Frame{Fin: true, Opcode: OpClose}
	if code >= 0 {
		f.Payload = binary.BigEndian.AppendUint16(nil, uint16(code))
		f.Payload = append(f.Payload, reason...)
	}
	return f
}

// Bytes returns the frame's wire encoding.
func (f Frame) Bytes() []byte { return f.Append(nil) }

// Append appends the frame's wire encoding to b.
func (f Frame) Append(b []byte) []byte {
	b0 := f.Opcode & 0x0f
	b0 |= (f.RSV & 0x7) << 4
	if f.Fin {
		b0 |= 0x80
	}
	n := uint64(len(f.Payload))
	if f.LieLength {
		n = f.Length
	}
	form := f.LenForm
	if form == LenShortest {
		switch {
		case n <= 125:
			form = Len7
		case n <= 0xffff:
			form = Len16
		default:
			form = Len64
		}
	}
	var m byte
	if f.Masked {
		m = 0x80
	}
	switch form {
	case Len7:
		b = append(b, b0, m|byte(n&0x7f))
	case Len16:
		b = append(b, b0, m|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, b0, m|127)
		b = binary.BigEndian.AppendUint64(b, n)
	}
	if f.Masked {
		b = append(b, f.MaskKey[:]...)
		start := len(b)
		b = append(b, f.Payload...)
		for i := range f.Payload {
			b[start+i] ^= f.MaskKey[i%4]
		}
		return b
	}
	return append(b, f.Payload...)
}

// ErrIncomplete is returned by ParseFrame for bytes that end inside a frame.
var ErrIncomplete = errors.New("rawws: incomplete frame")

// ParseFrame decodes the frame at the start of b, unmasking its payload, and
// returns how many bytes it took. It checks nothing but the encoding: any
// opcode, reserved bits and control-frame sizes are accepted. A declared
// length with the most significant bit set is an error (RFC 6455 5.2).
func ParseFrame(b []byte) (Frame, int, error) {
	if len(b) < 2 {
		return Frame{}, 0, ErrIncomplete
	}
	f := Frame{Fin: b[0]&0x80 != 0, RSV: (b[0] >> 4) & 0x7, Opcode: b[0] & 0x0f, Masked: b[1]&0x80 != 0}
	n := uint64(b[1] & 0x7f)
	i := 2
	switch n {
	case 126:
		f.LenForm = Len16
		if len(b) < i+2 {
			return f, 0, ErrIncomplete
		}
		n = uint64(binary.BigEndian.Uint16(b[i:]))
		i += 2
	case 127:
		f.LenForm = Len64
		if len(b) < i+8 {
			return f, 0, ErrIncomplete
		}
		n = binary.BigEndian.Uint64(b[i:])
		i += 8
		if n>>63 != 0 {
			return f, 0, fmt.Errorf("rawws: frame length %#x has the most significant bit set", n)
		}
	default:
		f.LenForm = Len7
	}
	f.Length = n
	if f.Masked {
		if len(b) < i+4 {
			return f, 0, ErrIncomplete
		}
		copy(f.MaskKey[:], b[i:])
		i += 4
	}
	if uint64(len(b)-i) < n {
		return f, 0, ErrIncomplete
	}
	f.Payload = append([]byte(nil), b[i:i+int(n)]...)
	if f.Masked {
		for j := range f.Payload {
			f.Payload[j] ^= f.MaskKey[j%4]
		}
	}
	return f, i + int(n), nil
}

// ReadFrame reads one masked (client) frame from r and unmasks it. A payload
// over maxPayload bytes, or an unmasked frame, is an error.
func ReadFrame(r *bufio.Reader, maxPayload int) (Frame, error) {
	var hdr [14]byte
	if _, err := io.ReadFull(r, hdr[:2]); err != nil {
		return Frame{}, err
	}
	need := 2
	switch hdr[1] & 0x7f {
	case 126:
		need += 2
	case 127:
		need += 8
	}
	if hdr[1]&0x80 != 0 {
		need += 4
	}
	if _, err := io.ReadFull(r, hdr[2:need]); err != nil {
		return Frame{}, err
	}
	f, _, err := ParseFrame(hdr[:need])
	if err != nil && !errors.Is(err, ErrIncomplete) {
		return Frame{}, err
	}
	if !f.Masked {
		return f, errors.New("rawws: unmasked client frame")
	}
	if f.Length > uint64(maxPayload) {
		return f, fmt.Errorf("rawws: client frame of %d bytes", f.Length)
	}
	f.Payload = make([]byte, f.Length)
	if _, err := io.ReadFull(r, f.Payload); err != nil {
		return f, err
	}
	for j := range f.Payload {
		f.Payload[j] ^= f.MaskKey[j%4]
	}
	return f, nil
}

// Message is one data message as a client would deliver it.
type Message struct {
	Opcode uint8 // OpText or OpBinary
	Data   []byte
}

// DataMessages models the data messages a WebSocket client without
// extensions delivers from stream, the bytes a server wrote after its
// handshake: every complete text or binary message (fragments joined,
// interleaved pings and pongs skipped) up to the first protocol error, close
// frame, or truncated frame. readLimit, if positive, ends delivery at a
// message whose declared frame lengths add up to more than it (checked
// frame by frame, as gorilla/websocket does, before the payload is read).
//
// Like wspool (with its default UTF-8 validation), and unlike gorilla, a
// text message that is not valid UTF-8 ends delivery (the client closes with
// 1007). The second result says why delivery ended.
func DataMessages(stream []byte, readLimit int64) ([]Message, string) {
	var out []Message
	var cur *Message  // message being reassembled
	var curLen uint64 // declared bytes of cur so far
	for len(stream) > 0 {
		// Header checks come first: they need only two bytes.
		if len(stream) >= 2 {
			if why := headerError(stream[0], stream[1], cur != nil); why != "" {
				return out, why
			}
		}
		f, n, err := ParseFrame(stream)
		if err != nil {
			// Truncated, or a length with the top bit set: nothing more
			// is delivered either way.
			return out, err.Error()
		}
		stream = stream[n:]
		switch f.Opcode {
		case OpText, OpBinary:
			if exceeds(0, f.Length, readLimit) {
				return out, "read limit"
			}
			cur, curLen = &Message{Opcode: f.Opcode, Data: []byte{}}, f.Length
		case OpContinuation:
			if exceeds(curLen, f.Length, readLimit) {
				return out, "read limit"
			}
			curLen += f.Length
		case OpPing, OpPong:
			continue
		case OpClose:
			if len(f.Payload) >= 2 {
				code := int(binary.BigEndian.Uint16(f.Payload))
				if !validCloseCode(code) {
					return out, fmt.Sprintf("bad close code %d", code)
				}
				if !utf8.Valid(f.Payload[2:]) {
					return out, "invalid UTF-8 close reason"
				}
			}
			return out, "close frame"
		}
		cur.Data = append(cur.Data, f.Payload...)
		if f.Fin {
			if cur.Opcode == OpText && !utf8.Valid(cur.Data) {
				return out, "invalid UTF-8 text" // 1007
			}
			out = append(out, *cur)
			cur, curLen = nil, 0
		}
	}
	return out, "end of stream"
}

// exceeds reports whether a frame of n declared bytes takes a message that
// has declared sofar bytes over limit (no limit if limit <= 0; a sum that
// overflows int64 is over, like gorilla's negative-length check).
func exceeds(sofar, n uint64, limit int64) bool {
	total := sofar + n
	if total < sofar || total>>63 != 0 {
		return true
	}
	return limit > 0 && total > uint64(limit)
}

// headerError checks the first two bytes of a server frame; inMessage says a
// fragmented message is in progress.
func headerError(b0, b1 byte, inMessage bool) string {
	fin := b0&0x80 != 0
	if b0&0x70 != 0 {
		return "reserved bits set"
	}
	op := b0 & 0x0f
	switch op {
	case OpClose, OpPing, OpPong:
		if b1&0x7f > 125 {
			return "control frame over 125 bytes"
		}
		if !fin {
			return "fragmented control frame"
		}
	case OpText, OpBinary:
		if inMessage {
			return "data frame inside a fragmented message"
		}
	case OpContinuation:
		if !inMessage {
			return "continuation without a message"
		}
	default:
		return fmt.Sprintf("reserved opcode %d", op)
	}
	if b1&0x80 != 0 {
		return "masked server frame"
	}
	return ""
}

// validCloseCode reports whether code may appear in a close frame
// (RFC 6455 7.4, with the registered codes gorilla/websocket accepts).
func validCloseCode(code int) bool {
	switch code {
	case 1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013:
		return true
	}
	return code >= 3000 && code <= 4999
}

package firehose

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// WebSocket opcodes (RFC 6455 section 5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// maxClientFrame bounds one frame read from a client; the benchmarks send
// small messages, and a bound keeps a confused peer from exhausting memory.
const maxClientFrame = 16 << 20

// appendFrameHeader appends the header of an unmasked server frame; the
// caller appends n payload bytes.
func appendFrameHeader(dst []byte, fin bool, op byte, n int) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	switch {
	case n < 126:
		dst = append(dst, b0, byte(n))
	case n <= 0xFFFF:
		dst = append(dst, b0, 126, byte(n>>8), byte(n))
	default:
		dst = append(dst, b0, 127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	return dst
}

// encodeFrame returns a complete unmasked server frame.
func encodeFrame(fin bool, op byte, payload []byte) []byte {
	b := appendFrameHeader(make([]byte, 0, len(payload)+10), fin, op, len(payload))
	return append(b, payload...)
}

// frame is one frame read from a client, payload unmasked.
type frame struct {
	fin     bool
	op      byte
	payload []byte // valid until the next readFrame with the same buffer
}

var errProtocol = errors.New("firehose: protocol error")

// readFrame reads one client frame into buf (grown as needed) and unmasks it.
func readFrame(br *bufio.Reader, buf []byte) (frame, []byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return frame{}, buf, err
	}
	f := frame{fin: hdr[0]&0x80 != 0, op: hdr[0] & 0x0F}
	if hdr[0]&0x70 != 0 {
		return frame{}, buf, fmt.Errorf("%w: reserved bits set", errProtocol)
	}
	masked := hdr[1]&0x80 != 0
	n := uint64(hdr[1] & 0x7F)
	switch n {
	case 126:
		var ext [2]byte
		if _, err := io.ReadFull(br, ext[:]); err != nil {
			return frame{}, buf, err
		}
		n = uint64(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		if _, err := io.ReadFull(br, ext[:]); err != nil {
			return frame{}, buf, err
		}
		n = binary.BigEndian.Uint64(ext[:])
	}
	if n > maxClientFrame {
		return frame{}, buf, fmt.Errorf("%w: frame of %d bytes", errProtocol, n)
	}
	if f.op >= opClose && (n > 125 || !f.fin) {
		return frame{}, buf, fmt.Errorf("%w: bad control frame", errProtocol)
	}
	if !masked {
		return frame{}, buf, fmt.Errorf("%w: client frame not masked", errProtocol)
	}
	var key [4]byte
	if _, err := io.ReadFull(br, key[:]); err != nil {
		return frame{}, buf, err
	}
	if uint64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(br, buf); err != nil {
		return frame{}, buf, err
	}
	for i := range buf {
		buf[i] ^= key[i&3]
	}
	f.payload = buf
	return f, buf, nil
}

// closeReply returns the close frame answering a client's close payload: the
// same status code, or 1000 if the client sent none.
func closeReply(payload []byte) []byte {
	code := []byte{0x03, 0xE8} // 1000
	if len(payload) >= 2 {
		code = payload[:2]
	}
	return encodeFrame(true, opClose, code)
}

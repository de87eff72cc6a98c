// Package utf8check validates text messages as UTF-8 while they arrive
// (RFC 6455 section 8.1: a text message that is not valid UTF-8 fails the
// connection with 1007).
//
// A Stream validates a message chunk by chunk as it is read, carrying an
// incomplete code point at the end of a chunk over to the next (so one split
// across frames or reads is fine), and fails as soon as a sequence cannot
// become valid, without waiting for the rest of the message. Valid checks a
// whole message at once, with a fast path for the short ASCII text (JSON)
// most feeds carry.
package utf8check

import (
	"encoding/binary"
	"unicode/utf8"
)

// asciiFirst: below this many bytes a chunk is first checked for plain
// ASCII (asciiOnly), which costs a few nanoseconds where utf8.Valid has a
// fixed cost of about 12 (BenchmarkUTF8); above, utf8.Valid is as fast.
const asciiFirst = 512

// Valid reports whether b is valid UTF-8.
func Valid(b []byte) bool {
	return len(b) < asciiFirst && asciiOnly(b) || utf8.Valid(b)
}

// Stream validates one message's bytes as they arrive. The zero value is
// ready for a new message.
type Stream struct {
	carry [4]byte
	nc    uint8 // carry[:nc] starts a code point not yet complete
}

// Reset prepares s for a new message.
func (s *Stream) Reset() { s.nc = 0 }

// Pending reports whether the bytes so far end inside a code point: at the
// end of the message that makes it invalid.
func (s *Stream) Pending() bool { return s.nc > 0 }

// Write validates b after what came before; false on invalid UTF-8.
func (s *Stream) Write(b []byte) bool {
	if s.nc == 0 && Valid(b) {
		return true // the common case: whole code points only
	}
	start := 0
	if s.nc > 0 {
		// Complete the carried code point with the first bytes of b.
		var tmp [8]byte
		k := copy(tmp[:], s.carry[:s.nc])
		take := min(len(b), 4-int(s.nc))
		k += copy(tmp[k:], b[:take])
		v, ok := utf8Prefix(tmp[:k], 0)
		if !ok {
			return false
		}
		if v < int(s.nc) || v == 0 {
			s.nc = uint8(copy(s.carry[:], tmp[:k])) // still incomplete
			return true
		}
		start = v - int(s.nc)
		s.nc = 0
	}
	v, ok := utf8Prefix(b, start)
	if !ok {
		return false
	}
	s.nc = uint8(copy(s.carry[:], b[v:]))
	return true
}

// utf8First describes each lead byte: the sequence length (0 = invalid lead
// byte) and the range allowed for the second byte, which excludes overlong
// forms (E0, F0), UTF-16 surrogates (ED) and code points above U+10FFFF
// (F4), as in RFC 3629 section 4.
type utf8Lead struct{ n, lo, hi byte }

var utf8First = func() (t [256]utf8Lead) {
	for b := 0xC2; b <= 0xDF; b++ {
		t[b] = utf8Lead{2, 0x80, 0xBF}
	}
	for b := 0xE1; b <= 0xEF; b++ {
		t[b] = utf8Lead{3, 0x80, 0xBF}
	}
	t[0xE0] = utf8Lead{3, 0xA0, 0xBF}
	t[0xED] = utf8Lead{3, 0x80, 0x9F}
	for b := 0xF1; b <= 0xF3; b++ {
		t[b] = utf8Lead{4, 0x80, 0xBF}
	}
	t[0xF0] = utf8Lead{4, 0x90, 0xBF}
	t[0xF4] = utf8Lead{4, 0x80, 0x8F}
	return t
}()

// utf8Prefix checks b[from:], where b[:from] is known to be complete, valid
// UTF-8. It returns the end of the longest prefix of b made of complete valid
// code points, and false if b holds a sequence that no following bytes can
// make valid. A valid message has utf8Prefix(b, 0) == (len(b), true).
func utf8Prefix(b []byte, from int) (int, bool) {
	i := from
	n := len(b)
	for i < n {
		// ASCII fast path: 16, then 8 bytes at a time.
		for i+16 <= n {
			w := b[i : i+16 : i+16]
			if (binary.LittleEndian.Uint64(w)|binary.LittleEndian.Uint64(w[8:]))&0x8080808080808080 != 0 {
				break
			}
			i += 16
		}
		if i+8 <= n && binary.LittleEndian.Uint64(b[i:i+8:i+8])&0x8080808080808080 == 0 {
			i += 8
		}
		if i >= n {
			break
		}
		c := b[i]
		if c < 0x80 {
			i++
			continue
		}
		lead := utf8First[c]
		if lead.n == 0 {
			return i, false
		}
		// The second byte has the lead's own range, the others 80..BF.
		end := i + int(lead.n)
		if i+1 < n {
			if c2 := b[i+1]; c2 < lead.lo || c2 > lead.hi {
				return i, false
			}
		}
		for j := i + 2; j < end && j < n; j++ {
			if b[j]&0xC0 != 0x80 {
				return i, false
			}
		}
		if end > n {
			return i, true // incomplete so far: wait for more bytes
		}
		i = end
	}
	return i, true
}

// asciiOnly reports whether b is all ASCII. It ORs eight bytes at a time
// and tests the high bits once per 32 bytes, with no branch per byte: on the
// short, ASCII-only JSON most feeds carry it is several times cheaper per
// call than utf8.Valid, which it spares those messages.
func asciiOnly(b []byte) bool {
	var acc uint64
	for len(b) >= 32 {
		acc |= binary.LittleEndian.Uint64(b) | binary.LittleEndian.Uint64(b[8:]) |
			binary.LittleEndian.Uint64(b[16:]) | binary.LittleEndian.Uint64(b[24:])
		if acc&0x8080808080808080 != 0 {
			return false
		}
		b = b[32:]
	}
	for len(b) >= 8 {
		acc |= binary.LittleEndian.Uint64(b)
		b = b[8:]
	}
	for _, c := range b {
		acc |= uint64(c)
	}
	return acc&0x8080808080808080 == 0
}

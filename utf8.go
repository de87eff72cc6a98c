package wspool

import "encoding/binary"

// Streaming UTF-8 validation of text messages (RFC 6455 section 8.1: a text
// message that is not valid UTF-8 fails the connection with 1007). The
// reader validates each chunk as it arrives, carrying an incomplete code
// point at the end of a chunk over to the next (so one split across frames
// is fine), and fails as soon as a sequence cannot become valid, without
// waiting for the rest of the message.

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

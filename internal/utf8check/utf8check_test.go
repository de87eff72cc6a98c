package utf8check

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// streamValid validates b split at the given cut points, as the reader does.
func streamValid(b []byte, cuts []int) bool {
	valid := 0
	for _, c := range append(cuts, len(b)) {
		var ok bool
		if valid, ok = utf8Prefix(b[:c], valid); !ok {
			return false
		}
	}
	return valid == len(b)
}

// TestUTF8PrefixMatchesStdlib: for every 1- to 4-byte sequence drawn from
// interesting bytes, and for random strings split at random points, the
// streaming check agrees with unicode/utf8.Valid on the whole.
func TestUTF8PrefixMatchesStdlib(t *testing.T) {
	interesting := []byte{0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF}
	var seq func(prefix []byte, depth int)
	seq = func(prefix []byte, depth int) {
		if len(prefix) > 0 {
			for cut := 0; cut <= len(prefix); cut++ {
				if got, want := streamValid(prefix, []int{cut}), utf8.Valid(prefix); got != want {
					t.Fatalf("% x cut at %d: streaming %v, utf8.Valid %v", prefix, cut, got, want)
				}
			}
		}
		if depth == 0 {
			return
		}
		for _, b := range interesting {
			seq(append(append([]byte(nil), prefix...), b), depth-1)
		}
	}
	seq(nil, 4)

	rng := rand.New(rand.NewPCG(1, 2))
	pieces := []string{"a", "hello world ", "é", "€", "𝄞", "\xed\xa0\x80", "\xc0\xaf", "\xf4\x90\x80\x80", "\xff", "\xe2\x82", "12345678"}
	for i := 0; i < 20000; i++ {
		var sb strings.Builder
		for j := rng.IntN(12); j >= 0; j-- {
			sb.WriteString(pieces[rng.IntN(len(pieces))])
		}
		b := []byte(sb.String())
		var cuts []int
		for c := 0; c < len(b); c += 1 + rng.IntN(5) {
			cuts = append(cuts, c)
		}
		if got, want := streamValid(b, cuts), utf8.Valid(b); got != want {
			t.Fatalf("%q cut at %v: streaming %v, utf8.Valid %v", b, cuts, got, want)
		}
	}
}

// BenchmarkUTF8 compares the streaming check with utf8.Valid on a JSON
// market-data message (ASCII) and on mixed text.
func BenchmarkUTF8(b *testing.B) {
	ascii := []byte(strings.Repeat(`{"e":"trade","s":"BTCUSDT","p":"64231.50","q":"0.0130","T":1718000000123},`, 14))
	mixed := []byte(strings.Repeat("Grüße, 世界! €100 — 𝄞 ok; ", 40))
	for _, tc := range []struct {
		name string
		b    []byte
	}{{"ascii-json-64", ascii[:64]}, {"ascii-json-128", ascii[:128]}, {"ascii-json-256", ascii[:256]}, {"ascii-json", ascii}, {"mixed", mixed}} {
		b.Run(tc.name+"/asciiOnly+stdlib", func(b *testing.B) {
			b.SetBytes(int64(len(tc.b)))
			for b.Loop() {
				if !asciiOnly(tc.b) && !utf8.Valid(tc.b) {
					b.Fatal("invalid")
				}
			}
		})
		b.Run(tc.name+"/streaming", func(b *testing.B) {
			b.SetBytes(int64(len(tc.b)))
			for b.Loop() {
				if n, ok := utf8Prefix(tc.b, 0); !ok || n != len(tc.b) {
					b.Fatal("invalid")
				}
			}
		})
		b.Run(tc.name+"/stdlib", func(b *testing.B) {
			b.SetBytes(int64(len(tc.b)))
			for b.Loop() {
				if !utf8.Valid(tc.b) {
					b.Fatal("invalid")
				}
			}
		})
	}
}

// TestStreamCarry: a Stream, fed in random chunks, agrees with
// utf8.Valid on the whole message.
func TestStreamCarry(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	pieces := []string{"a", "é", "€", "𝄞", "\xed\xa0\x80", "\xc0\xaf", "\xf4\x90\x80\x80", "\xff", "\xe2\x82", "12345678abcdefgh"}
	for i := 0; i < 50000; i++ {
		var sb strings.Builder
		for j := rng.IntN(8); j >= 0; j-- {
			sb.WriteString(pieces[rng.IntN(len(pieces))])
		}
		b := []byte(sb.String())
		var s Stream
		ok := true
		for off := 0; off < len(b) && ok; {
			n := min(1+rng.IntN(5), len(b)-off)
			ok = s.Write(b[off : off+n])
			off += n
		}
		ok = ok && !s.Pending()
		if want := utf8.Valid(b); ok != want {
			t.Fatalf("%q: chunked check %v, utf8.Valid %v", b, ok, want)
		}
	}
}

// TestASCIIOnly: asciiOnly finds a byte with the high bit at any position
// of any length, and accepts every all-ASCII slice.
func TestASCIIOnly(t *testing.T) {
	for n := 0; n <= 200; n++ {
		b := bytes.Repeat([]byte{'a'}, n)
		if !asciiOnly(b) {
			t.Fatalf("%d ASCII bytes: not ASCII", n)
		}
		for i := 0; i < n; i++ {
			for _, c := range []byte{0x80, 0xC3, 0xFF} {
				b[i] = c
				if asciiOnly(b) {
					t.Fatalf("%d bytes with %#x at %d: ASCII", n, c, i)
				}
			}
			b[i] = 0x7F
			if !asciiOnly(b) {
				t.Fatalf("%d bytes with 0x7f at %d: not ASCII", n, i)
			}
			b[i] = 'a'
		}
	}
}

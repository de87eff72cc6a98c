package natsjs

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// fnv1a returns the 64-bit FNV-1a hash of s followed by the bytes of x.
func fnv1a(s string, x uint64) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	for i := 0; i < 8; i++ {
		h ^= x & 0xff
		h *= 1099511628211
		x >>= 8
	}
	return h
}

// mix is the 64-bit finalizer of MurmurHash3: FNV alone leaves the high bits
// of short, similar keys correlated; after mix every input bit flips each
// output bit with probability close to 1/2.
func mix(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// shardOf returns the shard of a feed.
func shardOf(feed string, shards int) int {
	return int(mix(fnv1a(feed, 0)) % uint64(shards))
}

// score is a member's rendezvous weight for a shard.
func score(member string, shard int) uint64 {
	return mix(fnv1a(member, uint64(shard)+0x9e3779b97f4a7c15))
}

// topN returns the n members with the highest scores for shard, best first
// (ties broken by name); members is not changed.
func topN(members []string, shard, n int) []string {
	type ranked struct {
		m string
		s uint64
	}
	r := make([]ranked, len(members))
	for i, m := range members {
		r[i] = ranked{m, score(m, shard)}
	}
	slices.SortFunc(r, func(a, b ranked) int {
		if c := cmp.Compare(b.s, a.s); c != 0 {
			return c
		}
		return strings.Compare(a.m, b.m)
	})
	if n > len(r) {
		n = len(r)
	}
	out := make([]string, n)
	for i := range out {
		out[i] = r[i].m
	}
	return out
}

func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// escapeToken makes a feed name usable as one subject token and KV key part:
// letters, digits, '-' and '_' are kept, every other byte becomes =XX.
func escapeToken(s string) string {
	if validToken(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if validToken(s[i : i+1]) {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "=%02X", c)
		}
	}
	return b.String()
}

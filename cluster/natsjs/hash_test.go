package natsjs

import (
	"fmt"
	"slices"
	"testing"
)

// TestRendezvousBalance measures how evenly shards and feeds spread over
// members, and how many move when a member joins: with rendezvous hashing
// only the newcomer's share moves.
func TestRendezvousBalance(t *testing.T) {
	for _, tc := range []struct{ shards, members, feeds int }{
		{64, 3, 1000}, {256, 3, 1000}, {256, 10, 100000}, {1024, 3, 100000},
	} {
		members := make([]string, tc.members)
		for i := range members {
			members[i] = fmt.Sprintf("collector-%d", i)
		}
		owner := func(ms []string, shard int) string { return topN(ms, shard, 1)[0] }
		perShard := map[string]int{}
		perFeed := map[string]int{}
		for s := 0; s < tc.shards; s++ {
			perShard[owner(members, s)]++
		}
		for f := 0; f < tc.feeds; f++ {
			perFeed[owner(members, shardOf(fmt.Sprintf("feed-%d", f), tc.shards))]++
		}
		// One more member: only shards it wins move, all to it.
		grown := append(slices.Clone(members), "collector-new")
		moved, wrong := 0, 0
		for s := 0; s < tc.shards; s++ {
			if a, b := owner(members, s), owner(grown, s); a != b {
				moved++
				if b != "collector-new" {
					wrong++
				}
			}
		}
		ideal := float64(tc.feeds) / float64(tc.members)
		lo, hi := tc.feeds, 0
		for _, m := range members {
			lo, hi = min(lo, perFeed[m]), max(hi, perFeed[m])
		}
		t.Logf("%d shards, %d members, %d feeds: feeds per member min %d max %d (ideal %.0f, max/ideal %.2f); shards per member %v; a new member moves %d shards (ideal %.0f)",
			tc.shards, tc.members, tc.feeds, lo, hi, ideal, float64(hi)/ideal, perShard, moved, float64(tc.shards)/float64(tc.members+1))
		if wrong > 0 {
			t.Errorf("%d shards moved between old members", wrong)
		}
		// 256 shards over 3 members: binomial sd is about 7.5 shards (9%).
		if tc.shards >= 256 && float64(hi)/ideal > 1.3 {
			t.Errorf("imbalance %.2f", float64(hi)/ideal)
		}
	}
}

// TestRendezvousUniform checks the hash's mixing: over many shards each
// member wins its 1/n share to within 1%, and feeds spread over shards alike.
func TestRendezvousUniform(t *testing.T) {
	const shards = 300000
	for _, n := range []int{3, 4, 10} {
		ms := make([]string, n)
		for i := range ms {
			ms[i] = fmt.Sprintf("collector-%d", i)
		}
		won := map[string]int{}
		for s := 0; s < shards; s++ {
			won[topN(ms, s, 1)[0]]++
		}
		ideal := float64(shards) / float64(n)
		for m, w := range won {
			if d := float64(w)/ideal - 1; d > 0.01 || d < -0.01 {
				t.Errorf("%d members: %s won %d shards, ideal %.0f", n, m, w, ideal)
			}
		}
		t.Logf("%d members over %d shards: %v", n, shards, won)
	}
	per := map[int]int{}
	for f := 0; f < shards; f++ {
		per[shardOf(fmt.Sprintf("feed-%d", f), 3)]++
	}
	for s, c := range per {
		if d := float64(c)/(shards/3) - 1; d > 0.01 || d < -0.01 {
			t.Errorf("shard %d of 3 got %d feeds", s, c)
		}
	}
}

func TestTopNSlots(t *testing.T) {
	ms := []string{"a", "b", "c", "d"}
	for s := 0; s < 100; s++ {
		top := topN(ms, s, 2)
		if len(top) != 2 || top[0] == top[1] {
			t.Fatalf("shard %d: %v", s, top)
		}
		// Removing a member not in the top leaves the top alone.
		for _, gone := range ms {
			if slices.Contains(top, gone) {
				continue
			}
			rest := slices.DeleteFunc(slices.Clone(ms), func(m string) bool { return m == gone })
			if got := topN(rest, s, 2); !slices.Equal(got, top) {
				t.Fatalf("shard %d: top %v changed to %v when %s left", s, top, got, gone)
			}
		}
	}
}

func TestEscapeToken(t *testing.T) {
	for in, want := range map[string]string{
		"btc-usd_1": "btc-usd_1", "a.b": "a=2Eb", "x y>*": "x=20y=3E=2A", "é": "=C3=A9",
	} {
		if got := escapeToken(in); got != want {
			t.Errorf("escapeToken(%q) = %q, want %q", in, got, want)
		}
	}
}

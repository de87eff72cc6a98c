package hist

import (
	"encoding/json"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestBucketsCoverEveryValueOnce(t *testing.T) {
	prevHi := int64(-1)
	for i := range Buckets - 1 {
		lo, hi := bounds(i)
		if lo != prevHi+1 || hi < lo {
			t.Fatalf("bucket %d is [%d, %d] after one ending at %d", i, lo, hi, prevHi)
		}
		if index(lo) != i || index(hi) != i {
			t.Fatalf("bucket %d: index(%d)=%d index(%d)=%d", i, lo, index(lo), hi, index(hi))
		}
		if lo >= 2*subBuckets && float64(hi-lo+1)/float64(lo) > 1.0/subBuckets+1e-9 {
			t.Fatalf("bucket %d [%d, %d] wider than 1/%d of its values", i, lo, hi, subBuckets)
		}
		prevHi = hi
	}
	if index(1<<maxExp) != Buckets-1 || index(1<<62) != Buckets-1 {
		t.Fatal("huge values are not clamped into the last bucket")
	}
}

func TestQuantilesWithinABucketOfTheExactOnes(t *testing.T) {
	var h Hist
	r := rand.New(rand.NewPCG(1, 2))
	vals := make([]int64, 100000)
	for i := range vals {
		// Log-uniform from 1 µs to 10 ms, like latencies.
		vals[i] = int64(1000 * float64(uint64(1)<<r.IntN(14)) * (1 + r.Float64()))
		h.Record(vals[i])
	}
	slices.Sort(vals)
	for _, q := range []float64{0, 0.5, 0.9, 0.99, 0.999, 0.9999, 1} {
		rank := int(q * float64(len(vals)))
		exact := vals[min(max(rank-1, 0), len(vals)-1)]
		if q == 0 {
			exact = vals[0]
		}
		got := h.Quantile(q)
		if got < exact || float64(got-exact) > float64(exact)/subBuckets+1 {
			t.Errorf("q=%v: %d, exact %d", q, got, exact)
		}
	}
	if h.Max() != vals[len(vals)-1] || h.Count() != uint64(len(vals)) {
		t.Errorf("max %d count %d", h.Max(), h.Count())
	}
}

func TestAddMerges(t *testing.T) {
	var a, b, all Hist
	for v := range int64(5000) {
		if v%3 == 0 {
			a.Record(v * 7)
		} else {
			b.Record(v * 7)
		}
		all.Record(v * 7)
	}
	a.Add(&b)
	if a != all {
		t.Fatal("merged histogram differs from one that recorded everything")
	}
}

func TestRecordDoesNotAllocate(t *testing.T) {
	h := new(Hist)
	if n := testing.AllocsPerRun(1000, func() { h.Record(123456) }); n != 0 {
		t.Fatalf("%v allocations per Record", n)
	}
}

func BenchmarkRecord(b *testing.B) {
	h := new(Hist)
	for i := range b.N {
		h.Record(int64(i&0xFFFFF) * 13)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	var h, back Hist
	for v := range int64(3000) {
		h.Record(v * v)
	}
	b, err := json.Marshal(&h)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back != h {
		t.Fatal("the decoded histogram differs")
	}
}

// Package hist is a log-linear latency histogram in the manner of
// HdrHistogram: every power of two is split into 32 equal buckets, so a
// recorded value is known to within 1/32 (about 3 %) from 64 ns to 2^40 ns
// (18 minutes); values below 64 are exact. Recording is one bits.Len64, a
// shift and an increment: no allocation, no lock. A Hist belongs to one
// goroutine; merge per-goroutine histograms with Add.
package hist

import (
	"encoding/json"
	"fmt"
	"math"
	"math/bits"
)

const (
	subBits    = 5
	subBuckets = 1 << subBits // buckets per power of two
	maxExp     = 40           // values at or above 2^maxExp are clamped
	// Buckets is the number of buckets of a Hist: those below 2^maxExp,
	// then one for everything above.
	Buckets = (maxExp-subBits-1)*subBuckets + 2*subBuckets + 1
)

// Hist counts non-negative values (nanoseconds, typically).
type Hist struct {
	counts [Buckets]uint32
	n      uint64
	max    int64
	sum    float64
}

// index returns the bucket of v (v >= 0).
func index(v int64) int {
	if v < 2*subBuckets {
		return int(v)
	}
	if v >= 1<<maxExp {
		return Buckets - 1 // clamped
	}
	e := bits.Len64(uint64(v)) - subBits - 1 // shift keeping the top subBits+1 bits
	return e*subBuckets + int(v>>e)
}

// bounds returns the smallest and largest value of bucket i.
func bounds(i int) (lo, hi int64) {
	if i < 2*subBuckets {
		return int64(i), int64(i)
	}
	if i == Buckets-1 {
		return 1 << maxExp, math.MaxInt64
	}
	e := i/subBuckets - 1
	m := int64(i%subBuckets + subBuckets)
	return m << e, (m+1)<<e - 1
}

// Record counts v; a negative v counts as 0.
func (h *Hist) Record(v int64) {
	if v < 0 {
		v = 0
	}
	h.counts[index(v)]++
	h.n++
	h.sum += float64(v)
	if v > h.max {
		h.max = v
	}
}

// Add adds o's counts to h.
func (h *Hist) Add(o *Hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// Count returns the number of values recorded.
func (h *Hist) Count() uint64 { return h.n }

// Max returns the largest value recorded (exact).
func (h *Hist) Max() int64 { return h.max }

// Mean returns the mean of the values recorded.
func (h *Hist) Mean() float64 {
	if h.n == 0 {
		return 0
	}
	return h.sum / float64(h.n)
}

// Quantile returns the value at quantile q (0 <= q <= 1): the largest value
// of the bucket holding the ceil(q*n)-th smallest value, never above Max, so
// it overstates by at most a bucket's width (1/32). It returns 0 when
// nothing was recorded.
func (h *Hist) Quantile(q float64) int64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += uint64(c)
		if seen >= rank {
			_, hi := bounds(i)
			return min(hi, h.max)
		}
	}
	return h.max
}

// histJSON is a Hist's JSON form: only the buckets that hold values, as
// (index, count) pairs.
type histJSON struct {
	N       uint64      `json:"n"`
	Max     int64       `json:"max"`
	Sum     float64     `json:"sum"`
	Buckets [][2]uint64 `json:"buckets"`
}

// MarshalJSON encodes the buckets that hold values.
func (h *Hist) MarshalJSON() ([]byte, error) {
	j := histJSON{N: h.n, Max: h.max, Sum: h.sum}
	for i, c := range h.counts {
		if c != 0 {
			j.Buckets = append(j.Buckets, [2]uint64{uint64(i), uint64(c)})
		}
	}
	return json.Marshal(j)
}

// UnmarshalJSON decodes what MarshalJSON encoded.
func (h *Hist) UnmarshalJSON(b []byte) error {
	var j histJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*h = Hist{n: j.N, max: j.Max, sum: j.Sum}
	for _, bc := range j.Buckets {
		if bc[0] >= Buckets {
			return fmt.Errorf("hist: bucket %d out of range", bc[0])
		}
		h.counts[bc[0]] = uint32(bc[1])
	}
	return nil
}

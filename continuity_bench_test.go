package wspool

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// depthDiff is a Binance-style order book diff, the message shape of the
// sequence benchmarks.
type depthDiff struct {
	Event string      `json:"e"`
	Time  int64       `json:"E"`
	Sym   string      `json:"s"`
	First uint64      `json:"U"`
	Last  uint64      `json:"u"`
	Bids  [][2]string `json:"b"`
	Asks  [][2]string `json:"a"`
}

// BenchmarkSequenceCheck is the per-message cost of the sequence check plus
// a JSON handler of the whole message, on the reader's path (checkSequence,
// then the handler): "extract" is WithSequence as it was (Extract decodes
// the numbers, the handler decodes the message again), "decode-once" reads
// a NumberRange Position with JSONPosition and the handler takes the decoded
// value, "none" is the handler alone without sequence checking. It reports
// ns/msg for each and their ratios: extract/decode-once (the whole path),
// and each against the handler alone. The messages follow each other: no gaps.
func BenchmarkSequenceCheck(b *testing.B) {
	const ring = 256
	msgs := make([]Message, ring)
	for i := range msgs {
		n := uint64(i) + 1 // a range of one: gap-free for Extract's single numbers too
		data := fmt.Sprintf(`{"e":"depthUpdate","E":%d,"s":"BNBBTC","U":%d,"u":%d,"b":[["0.0024","10"],["0.0023","7"]],"a":[["0.0026","100"]]}`, 1700000000000+i, n, n)
		msgs[i] = Message{Type: TextMessage, Data: []byte(data), ConnID: 1}
	}
	var sink int
	handler := JSON(func(_ context.Context, d depthDiff) error { sink += len(d.Bids); return nil })
	cases := []struct {
		name string
		seq  *Sequence
	}{
		{"none", nil},
		{"extract", &Sequence{Extract: func(m Message) (string, uint64, bool) {
			var v struct {
				Last uint64 `json:"u"`
			}
			err := json.Unmarshal(m.Data, &v)
			return "", v.Last, err == nil
		}}},
		{"decode-once", &Sequence{Shape: NumberRange, Position: JSONPosition(func(d *depthDiff) (Position, bool) {
			return Position{First: d.First, Last: d.Last}, true
		})}},
	}
	type variant struct {
		name string
		c    *Client
		took time.Duration
	}
	var vs []*variant
	for _, tc := range cases {
		opts := []Option{}
		if tc.seq != nil {
			opts = append(opts, WithSequence(*tc.seq))
		}
		c, err := NewClient("ws://127.0.0.1:1/x", handler, opts...)
		if err != nil {
			b.Fatal(err)
		}
		vs = append(vs, &variant{name: tc.name, c: c})
	}
	conn := &Conn{}
	ctx := context.Background()
	// The variants take turns, a block of messages each, so that a loaded
	// machine slows them alike; each block is timed on its own.
	const block = ring
	b.ResetTimer()
	for range b.N {
		for _, v := range vs {
			c := v.c
			if c.cfg.sequence != nil {
				c.ResetSequence("")
			}
			start := time.Now()
			for i := range block {
				m := msgs[i]
				if c.cfg.sequence != nil && c.checkSequence(conn, &m) != seqDeliver {
					b.Fatal("not delivered")
				}
				if err := c.handler(ctx, m); err != nil {
					b.Fatal(err)
				}
			}
			v.took += time.Since(start)
		}
	}
	per := map[string]float64{}
	for _, v := range vs {
		per[v.name] = float64(v.took.Nanoseconds()) / float64(b.N*block)
		b.ReportMetric(per[v.name], "ns/msg-"+v.name)
	}
	b.ReportMetric(per["extract"]/per["decode-once"], "extract/decode-once")
	b.ReportMetric(per["extract"]/per["none"], "extract/none")
	b.ReportMetric(per["decode-once"]/per["none"], "decode-once/none")
	_ = sink
}

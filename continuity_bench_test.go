package wspool

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
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
// value, "none" is the handler alone without sequence checking.
func BenchmarkSequenceCheck(b *testing.B) {
	const ring = 4096
	msgs := make([]Message, ring)
	for i := range msgs {
		n := uint64(i)*3 + 1
		data := fmt.Sprintf(`{"e":"depthUpdate","E":%d,"s":"BNBBTC","U":%d,"u":%d,"b":[["0.0024","10"],["0.0023","7"]],"a":[["0.0026","100"]]}`, 1700000000000+i, n, n+2)
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
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			opts := []Option{}
			if tc.seq != nil {
				opts = append(opts, WithSequence(*tc.seq))
			}
			c, err := NewClient("ws://127.0.0.1:1/x", handler, opts...)
			if err != nil {
				b.Fatal(err)
			}
			conn := &Conn{}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				m := msgs[i%ring]
				if c.cfg.sequence != nil {
					if i%ring == 0 {
						c.ResetSequence("")
					}
					if c.checkSequence(conn, &m) != seqDeliver {
						b.Fatal("not delivered")
					}
				}
				if err := c.handler(ctx, m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	_ = sink
}

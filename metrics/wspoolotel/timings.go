package wspoolotel

import (
	"context"

	"github.com/wspool/wspool"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Timings records the durations wspool.WithTimings reports in histograms,
// one per wspool.TimingKind (wspool.<kind>.duration, unit s, see
// TimingInstrumentName), with the attribute wspool.pool and, if perFeed,
// wspool.feed. Pass its Observe method to wspool.WithTimings.
type Timings struct {
	perFeed bool
	hists   []metric.Float64Histogram // by TimingKind; nil for kind 0
	poolOpt metric.MeasurementOption
	pool    attribute.KeyValue
}

// timingDesc describes each kind's histogram.
var timingDesc = map[wspool.TimingKind]string{
	wspool.TimingHandshake:    "Duration of successful dials, from start to the 101 response (admission waits excluded).",
	wspool.TimingOnConnect:    "Duration of successful OnConnect runs.",
	wspool.TimingFirstMessage: "Time from a connection reaching the connected state to its first data message.",
	wspool.TimingHandler:      "Duration of handler calls.",
	wspool.TimingQueueWait:    "Time between a message being read and its handler call starting.",
}

// TimingInstrumentName is the name of kind's histogram:
// wspool.<kind>.duration, e.g. wspool.handshake.duration.
func TimingInstrumentName(kind wspool.TimingKind) string {
	return "wspool." + kind.String() + ".duration"
}

// NewTimings creates the histograms on meter, with the attribute
// wspool.pool=name. With perFeed each observation also carries wspool.feed:
// see the package documentation's cardinality note before turning it on.
func NewTimings(meter metric.Meter, name string, perFeed bool) (*Timings, error) {
	t := &Timings{perFeed: perFeed, pool: PoolKey.String(name)}
	t.poolOpt = metric.WithAttributes(t.pool)
	t.hists = []metric.Float64Histogram{nil}
	for k := wspool.TimingKind(1); k.String() != "unknown"; k++ {
		desc := timingDesc[k]
		if desc == "" {
			desc = "Durations of wspool timing " + k.String() + "."
		}
		h, err := meter.Float64Histogram(TimingInstrumentName(k), metric.WithUnit("s"), metric.WithDescription(desc))
		if err != nil {
			return nil, err
		}
		t.hists = append(t.hists, h)
	}
	return t, nil
}

// Observe records one timing; pass it to wspool.WithTimings. It is safe for
// concurrent use and does not block. A kind it does not know is ignored.
func (t *Timings) Observe(tm wspool.Timing) {
	k := int(tm.Kind)
	if k <= 0 || k >= len(t.hists) {
		return
	}
	opt := t.poolOpt
	if t.perFeed {
		opt = metric.WithAttributes(t.pool, FeedKey.String(tm.Feed))
	}
	t.hists[k].Record(context.Background(), tm.D.Seconds(), opt)
}

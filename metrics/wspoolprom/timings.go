package wspoolprom

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/wspool/wspool"
)

// DefaultBuckets are the timing histograms' bucket bounds in seconds: 18
// exponential buckets from 50 µs (a handler call) to 10 s (a slow TLS
// handshake or OnConnect).
var DefaultBuckets = prometheus.ExponentialBucketsRange(50e-6, 10, 18)

// TimingOpts configures Timings.
type TimingOpts struct {
	// PerFeed adds the label feed: one histogram per feed and kind. Off by
	// default, since a histogram is len(Buckets)+2 series: 10,000 feeds
	// times 5 kinds times 20 is a million series. With PerFeed, call
	// Forget after removing a feed. Timings registered in one registry
	// must agree on PerFeed (a family has one set of labels).
	PerFeed bool
	// Buckets are the upper bounds in seconds; nil means DefaultBuckets.
	Buckets []float64
}

// Timings turns the durations wspool.WithTimings reports into histograms,
// one family per wspool.TimingKind (see the package documentation for the
// names), with the label pool and, with TimingOpts.PerFeed, feed. It is a
// prometheus.Collector; pass its Observe method to wspool.WithTimings.
type Timings struct {
	perFeed bool
	vecs    []*prometheus.HistogramVec // by TimingKind; nil for kind 0
	plain   []prometheus.Observer      // by TimingKind, without PerFeed
}

// timingHelp describes each kind's histogram.
var timingHelp = map[wspool.TimingKind]string{
	wspool.TimingHandshake:    "Duration of successful dials, from start to the 101 response (TCP, proxy, TLS, upgrade; admission waits excluded).",
	wspool.TimingOnConnect:    "Duration of successful OnConnect runs.",
	wspool.TimingFirstMessage: "Time from a connection reaching the connected state to its first data message.",
	wspool.TimingHandler:      "Duration of handler calls.",
	wspool.TimingQueueWait:    "Time between a message being read and its handler call starting (the inbound queue's wait with WithQueue).",
}

// timingKinds returns every TimingKind wspool defines (those with a name).
func timingKinds() []wspool.TimingKind {
	var kinds []wspool.TimingKind
	for k := wspool.TimingKind(1); k.String() != "unknown"; k++ {
		kinds = append(kinds, k)
	}
	return kinds
}

// TimingMetricName is the name of the histogram family of kind:
// wspool_<kind>_duration_seconds, e.g. wspool_handshake_duration_seconds.
func TimingMetricName(kind wspool.TimingKind) string {
	return "wspool_" + kind.String() + "_duration_seconds"
}

// NewTimings returns Timings whose histograms carry the label pool=name.
func NewTimings(name string, opts TimingOpts) *Timings {
	buckets := opts.Buckets
	if buckets == nil {
		buckets = DefaultBuckets
	}
	var labels []string
	if opts.PerFeed {
		labels = []string{"feed"}
	}
	kinds := timingKinds()
	t := &Timings{
		perFeed: opts.PerFeed,
		vecs:    make([]*prometheus.HistogramVec, len(kinds)+1),
		plain:   make([]prometheus.Observer, len(kinds)+1),
	}
	for _, k := range kinds {
		help := timingHelp[k]
		if help == "" {
			help = "Durations of wspool timing " + k.String() + "."
		}
		v := prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:        TimingMetricName(k),
			Help:        help,
			ConstLabels: prometheus.Labels{"pool": name},
			Buckets:     buckets,
		}, labels)
		t.vecs[k] = v
		if !opts.PerFeed {
			t.plain[k] = v.WithLabelValues()
		}
	}
	return t
}

// Observe records one timing; pass it to wspool.WithTimings. It is safe for
// concurrent use and does not block. A kind it does not know is ignored.
func (t *Timings) Observe(tm wspool.Timing) {
	k := int(tm.Kind)
	if k <= 0 || k >= len(t.vecs) {
		return
	}
	if !t.perFeed {
		t.plain[k].Observe(tm.D.Seconds())
		return
	}
	t.vecs[k].WithLabelValues(tm.Feed).Observe(tm.D.Seconds())
}

// Forget deletes the histograms of feed (with TimingOpts.PerFeed), so that a
// removed feed's series stop being exported; call it after Pool.Remove.
func (t *Timings) Forget(feed string) {
	if !t.perFeed {
		return
	}
	for _, v := range t.vecs[1:] {
		v.DeleteLabelValues(feed)
	}
}

// Describe sends the descriptors of every histogram family.
func (t *Timings) Describe(ch chan<- *prometheus.Desc) {
	for _, v := range t.vecs[1:] {
		v.Describe(ch)
	}
}

// Collect sends the histograms.
func (t *Timings) Collect(ch chan<- prometheus.Metric) {
	for _, v := range t.vecs[1:] {
		v.Collect(ch)
	}
}

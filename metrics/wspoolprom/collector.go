package wspoolprom

import (
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/wspool/wspool"
)

// Collector exports a wspool.Pool's statistics as Prometheus metrics. It is
// a prometheus.Collector: each scrape takes one snapshot of the pool
// (Pool.Stats, or Pool.Totals for a totals-only Collector) and turns it into
// constant metrics, so nothing runs between scrapes and a scrape never sees
// a half-updated set of values. Every metric has the label pool.
//
// The package documentation lists every metric.
type Collector struct {
	pool    *wspool.Pool
	perFeed bool

	feeds     *prometheus.Desc // wspool_feeds{pool,state}
	feedState *prometheus.Desc // wspool_feed_state{pool,feed,state}
	totals    []poolMetric
	perFeedMs []feedMetric
	standby   []standbyMetric
}

// feedMetric is one per-feed metric and how to read it from a snapshot; ok
// false leaves the metric out for that feed.
type feedMetric struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(st *wspool.Stats) (v float64, ok bool)
}

// poolMetric is one pool-wide metric.
type poolMetric struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(ps *wspool.PoolStats) float64
}

// standbyMetric is one metric per standby connection (labels feed, standby).
type standbyMetric struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(s *wspool.StandbyStats) float64
}

// States lists every state in the order they are exported.
var states = []wspool.State{
	wspool.StateIdle, wspool.StateConnecting, wspool.StateConnected, wspool.StateBackingOff, wspool.StateClosed,
}

// StateLabel is the label value of a state: its name in snake case
// (idle, connecting, connected, backing_off, closed).
func StateLabel(s wspool.State) string { return strings.ReplaceAll(s.String(), " ", "_") }

// NewCollector returns a Collector that exports every feed of pool (label
// feed, the feed's name) and the pool's totals, all with the label
// pool=name; register it with a prometheus.Registerer. Several pools can
// be registered in one registry under different names.
//
// A feed costs 32 to 36 series (5 more per standby connection); for pools
// of many thousands of feeds, see NewTotalsCollector and the package
// documentation's cardinality note.
func NewCollector(pool *wspool.Pool, name string) *Collector {
	c := newCollector(pool, name)
	c.perFeed = true
	return c
}

// NewTotalsCollector returns a Collector that exports only the pool-wide
// series (the wspool_feeds and wspool_pool_ families, label pool=name):
// a fixed number of series however many feeds the pool has, from
// Pool.Totals, which allocates nothing per feed.
func NewTotalsCollector(pool *wspool.Pool, name string) *Collector {
	return newCollector(pool, name)
}

func newCollector(pool *wspool.Pool, name string) *Collector {
	constLabels := prometheus.Labels{"pool": name}
	c := &Collector{
		pool: pool,
		feeds: prometheus.NewDesc("wspool_feeds",
			"Number of feeds in the pool in each state.", []string{"state"}, constLabels),
		feedState: prometheus.NewDesc("wspool_feed_state",
			"Current state of the feed: 1 for the state it is in, 0 for the others.", []string{"feed", "state"}, constLabels),
	}
	poolDesc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("wspool_pool_"+name, help, nil, constLabels)
	}
	counter := func(name, help string, v func(ps *wspool.PoolStats) int64) poolMetric {
		return poolMetric{poolDesc(name, help), prometheus.CounterValue, func(ps *wspool.PoolStats) float64 { return float64(v(ps)) }}
	}
	c.totals = []poolMetric{
		counter("connects_total", "Connections of all feeds that completed the handshake and OnConnect.", func(ps *wspool.PoolStats) int64 { return ps.Connects }),
		counter("disconnects_total", "Connections of all feeds that ended.", func(ps *wspool.PoolStats) int64 { return ps.Disconnects }),
		counter("connect_attempts_total", "Dial attempts of all feeds, successful or not.", func(ps *wspool.PoolStats) int64 { return ps.Attempts }),
		counter("messages_received_total", "Messages all feeds read from their sockets.", func(ps *wspool.PoolStats) int64 { return ps.MessagesIn }),
		counter("received_bytes_total", "Payload bytes all feeds read from their sockets.", func(ps *wspool.PoolStats) int64 { return ps.BytesIn }),
		counter("messages_sent_total", "Messages all feeds wrote to their sockets.", func(ps *wspool.PoolStats) int64 { return ps.MessagesOut }),
		counter("sent_bytes_total", "Payload bytes all feeds wrote to their sockets.", func(ps *wspool.PoolStats) int64 { return ps.BytesOut }),
		counter("handler_errors_total", "Handler and callback errors and panics of all feeds.", func(ps *wspool.PoolStats) int64 { return ps.HandlerErrors }),
		counter("dropped_messages_total", "Inbound messages all feeds' queues dropped or discarded at shutdown.", func(ps *wspool.PoolStats) int64 { return ps.Dropped }),
		counter("send_failures_total", "Sends of all feeds reported failed.", func(ps *wspool.PoolStats) int64 { return ps.SendFailed }),
		{poolDesc("admission_waiting", "Feeds whose dial waits for admission or a handshake slot now."), prometheus.GaugeValue,
			func(ps *wspool.PoolStats) float64 { return float64(ps.AdmissionWaiting) }},
	}
	c.perFeedMs = feedMetrics(constLabels)
	c.standby = standbyMetrics(constLabels)
	return c
}

// feedMetrics returns the per-feed metrics (label feed).
func feedMetrics(constLabels prometheus.Labels) []feedMetric {
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("wspool_feed_"+name, help, []string{"feed"}, constLabels)
	}
	counter := func(name, help string, v func(st *wspool.Stats) int64) feedMetric {
		return feedMetric{desc(name, help), prometheus.CounterValue, func(st *wspool.Stats) (float64, bool) { return float64(v(st)), true }}
	}
	gauge := func(name, help string, v func(st *wspool.Stats) (float64, bool)) feedMetric {
		return feedMetric{desc(name, help), prometheus.GaugeValue, v}
	}
	always := func(v func(st *wspool.Stats) float64) func(st *wspool.Stats) (float64, bool) {
		return func(st *wspool.Stats) (float64, bool) { return v(st), true }
	}
	return []feedMetric{
		gauge("connected", "1 while the feed is connected, else 0.", always(func(st *wspool.Stats) float64 {
			return b2f(st.State == wspool.StateConnected)
		})),
		gauge("connected_since_seconds", "Unix time at which the current connection was established; absent while not connected.",
			func(st *wspool.Stats) (float64, bool) {
				return float64(st.ConnectedSince.UnixNano()) / 1e9, !st.ConnectedSince.IsZero()
			}),
		counter("connects_total", "Connections that completed the handshake and OnConnect.", func(st *wspool.Stats) int64 { return st.Connects }),
		counter("disconnects_total", "Connections that ended.", func(st *wspool.Stats) int64 { return st.Disconnects }),
		counter("connect_attempts_total", "Dial attempts, successful or not.", func(st *wspool.Stats) int64 { return st.Attempts }),
		gauge("last_error_timestamp_seconds", "Unix time of the feed's most recent failure (connection, attempt or callback); absent if none.",
			func(st *wspool.Stats) (float64, bool) {
				return float64(st.LastErrorAt.UnixNano()) / 1e9, st.LastError != nil && !st.LastErrorAt.IsZero()
			}),
		counter("messages_received_total", "Messages read from the socket (heartbeat replies and messages read by OnConnect included).",
			func(st *wspool.Stats) int64 { return st.MessagesIn }),
		counter("received_bytes_total", "Payload bytes of the messages read from the socket.", func(st *wspool.Stats) int64 { return st.BytesIn }),
		counter("messages_sent_total", "Messages written to the socket.", func(st *wspool.Stats) int64 { return st.MessagesOut }),
		counter("sent_bytes_total", "Payload bytes of the messages written to the socket.", func(st *wspool.Stats) int64 { return st.BytesOut }),
		counter("messages_delivered_total", "Handler calls that completed, with or without error.", func(st *wspool.Stats) int64 { return st.Delivered }),
		counter("heartbeat_replies_total", "Inbound messages recognised as replies to the application heartbeat (WithHeartbeat).",
			func(st *wspool.Stats) int64 { return st.HeartbeatReplies }),
		counter("handler_errors_total", "Handler and callback errors and panics, decode errors included.", func(st *wspool.Stats) int64 { return st.HandlerErrors }),
		counter("callback_events_dropped_total", "OnStateChange and OnError calls dropped because those callbacks fell too far behind.",
			func(st *wspool.Stats) int64 { return st.EventsDropped }),
		counter("connect_discarded_messages_total", "Messages read while OnConnect ran and never delivered because that attempt failed.",
			func(st *wspool.Stats) int64 { return st.DiscardedAtConnect }),
		counter("dropped_messages_total", "Inbound messages dropped by the queue's overflow policy or discarded at shutdown (WithQueue).",
			func(st *wspool.Stats) int64 { return st.Dropped }),
		gauge("queue_depth", "Messages in the inbound queue (WithQueue).", always(func(st *wspool.Stats) float64 { return float64(st.QueueDepth) })),
		gauge("queue_high_water", "Most messages the inbound queue has held at once (WithQueue).",
			always(func(st *wspool.Stats) float64 { return float64(st.QueueHighWater) })),
		gauge("send_buffered", "Messages waiting in the send buffer for a connection (WithSendBuffer).",
			always(func(st *wspool.Stats) float64 { return float64(st.SendBuffered) })),
		counter("send_failures_total", "Sends reported failed, whatever the reason.", func(st *wspool.Stats) int64 { return st.SendFailed }),
		counter("rotations_total", "Make-before-break connection replacements (WithMaxConnectionAge, Rotate).",
			func(st *wspool.Stats) int64 { return st.Rotations }),
		counter("duplicates_dropped_total", "Messages dropped as duplicates (WithDuplicateFilter, WithSequence).",
			func(st *wspool.Stats) int64 { return st.Duplicates }),
		counter("sequence_gaps_total", "Sequence gaps seen (WithSequence).", func(st *wspool.Stats) int64 { return st.Gaps }),
		counter("sequence_gap_messages_total", "Sequence numbers the gaps skipped (WithSequence).", func(st *wspool.Stats) int64 { return st.GapMessages }),
		counter("sequence_restarts_total", "Restarts of the upstream's numbering (WithSequence), which sequence_gaps_total does not count.",
			func(st *wspool.Stats) int64 { return st.Restarts }),
		counter("server_pings_total", "Upstream data-level pings answered (WithServerPing).", func(st *wspool.Stats) int64 { return st.ServerPings }),
		gauge("rtt_seconds", "Latest ping round-trip time; absent until the first pong.",
			func(st *wspool.Stats) (float64, bool) { return st.RTT.Seconds(), st.RTT > 0 }),
		gauge("smoothed_rtt_seconds", "Exponentially weighted average of the ping round-trip time (weight 1/8); absent until the first pong.",
			func(st *wspool.Stats) (float64, bool) { return st.SmoothedRTT.Seconds(), st.SmoothedRTT > 0 }),
		counter("won_messages_total", "With WithStandby: data messages the primary connection delivered first.",
			func(st *wspool.Stats) int64 { return st.Won }),
		counter("admission_waits_total", "Dials that waited for admission or a handshake slot (WithAdmission, WithMaxConcurrentDials).",
			func(st *wspool.Stats) int64 { return st.AdmissionWaits }),
		{desc("admission_wait_seconds_total", "Total time dials waited for admission or a handshake slot."), prometheus.CounterValue,
			func(st *wspool.Stats) (float64, bool) { return st.AdmissionWaited.Seconds(), true }},
		gauge("admission_waiting", "1 while a dial of the feed waits for admission or a handshake slot, else 0.",
			always(func(st *wspool.Stats) float64 { return b2f(st.AdmissionWaiting) })),
	}
}

// standbyMetrics returns the metrics of standby connections (labels feed and
// standby, the connection's index from 1).
func standbyMetrics(constLabels prometheus.Labels) []standbyMetric {
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("wspool_feed_standby_"+name, help, []string{"feed", "standby"}, constLabels)
	}
	counter := func(name, help string, v func(s *wspool.StandbyStats) int64) standbyMetric {
		return standbyMetric{desc(name, help), prometheus.CounterValue, func(s *wspool.StandbyStats) float64 { return float64(v(s)) }}
	}
	return []standbyMetric{
		{desc("connected", "1 while the standby connection is connected, else 0 (WithStandby)."), prometheus.GaugeValue,
			func(s *wspool.StandbyStats) float64 { return b2f(s.Connected) }},
		counter("connects_total", "Connections of the standby connection.", func(s *wspool.StandbyStats) int64 { return s.Connects }),
		counter("disconnects_total", "Ended connections of the standby connection.", func(s *wspool.StandbyStats) int64 { return s.Disconnects }),
		counter("messages_received_total", "Messages the standby connection read.", func(s *wspool.StandbyStats) int64 { return s.MessagesIn }),
		counter("won_messages_total", "Data messages the standby connection delivered first.", func(s *wspool.StandbyStats) int64 { return s.Won }),
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Describe sends the descriptors of every metric the Collector can export.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.feeds
	for _, m := range c.totals {
		ch <- m.desc
	}
	if !c.perFeed {
		return
	}
	ch <- c.feedState
	for _, m := range c.perFeedMs {
		ch <- m.desc
	}
	for _, m := range c.standby {
		ch <- m.desc
	}
}

// Collect takes one snapshot of the pool and sends its metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	var ps wspool.PoolStats
	if c.perFeed {
		ps = c.pool.Stats()
	} else {
		ps = c.pool.Totals()
	}
	idle := ps.Total - ps.Connected - ps.Connecting - ps.BackingOff - ps.Closed
	for _, s := range []struct {
		state wspool.State
		n     int
	}{
		{wspool.StateIdle, idle}, {wspool.StateConnecting, ps.Connecting}, {wspool.StateConnected, ps.Connected},
		{wspool.StateBackingOff, ps.BackingOff}, {wspool.StateClosed, ps.Closed},
	} {
		ch <- constMetric(c.feeds, prometheus.GaugeValue, float64(s.n), StateLabel(s.state))
	}
	for _, m := range c.totals {
		ch <- constMetric(m.desc, m.typ, m.value(&ps))
	}
	for i := range ps.Feeds {
		c.collectFeed(ch, &ps.Feeds[i])
	}
}

func (c *Collector) collectFeed(ch chan<- prometheus.Metric, st *wspool.Stats) {
	for _, s := range states {
		ch <- constMetric(c.feedState, prometheus.GaugeValue, b2f(st.State == s), st.Name, StateLabel(s))
	}
	for _, m := range c.perFeedMs {
		if v, ok := m.value(st); ok {
			ch <- constMetric(m.desc, m.typ, v, st.Name)
		}
	}
	for i := range st.Standby {
		sb := &st.Standby[i]
		idx := strconv.Itoa(sb.Index)
		for _, m := range c.standby {
			ch <- constMetric(m.desc, m.typ, m.value(sb), st.Name, idx)
		}
	}
}

// constMetric is prometheus.NewConstMetric that reports an invalid label
// value (a feed name that is not UTF-8) in the scrape instead of panicking.
func constMetric(d *prometheus.Desc, typ prometheus.ValueType, v float64, labels ...string) prometheus.Metric {
	m, err := prometheus.NewConstMetric(d, typ, v, labels...)
	if err != nil {
		return prometheus.NewInvalidMetric(d, err)
	}
	return m
}

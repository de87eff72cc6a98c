package main

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/wspool/wspool"
)

// Collector exports a wspool.Pool's Stats as Prometheus metrics. It is a
// prometheus.Collector: every scrape takes one Pool.Stats snapshot (a few
// atomic loads and a short lock per feed) and turns it into constant metrics,
// so nothing runs between scrapes and a scrape never sees a half-updated set
// of gauges.
//
// Per feed, with a "feed" label (the feed's name):
//
//	wspool_feed_state{state}               gauge, 1 for the current state, 0 for the others
//	wspool_feed_connected                  gauge, 1 while connected, else 0
//	wspool_feed_connected_since_seconds    gauge, Unix time the connection was established (only while connected)
//	wspool_feed_connects_total             counter
//	wspool_feed_disconnects_total          counter
//	wspool_feed_connect_attempts_total     counter
//	wspool_feed_messages_received_total    counter, read from the socket
//	wspool_feed_received_bytes_total       counter
//	wspool_feed_messages_delivered_total   counter, handler calls completed
//	wspool_feed_heartbeat_replies_total    counter
//	wspool_feed_messages_sent_total        counter
//	wspool_feed_sent_bytes_total           counter
//	wspool_feed_send_failures_total        counter
//	wspool_feed_send_buffered              gauge, messages waiting for a connection
//	wspool_feed_handler_errors_total       counter
//	wspool_feed_dropped_messages_total     counter, by the queue's overflow policy or at shutdown
//	wspool_feed_queue_depth                gauge, messages in the inbound queue
//	wspool_feed_queue_high_water           gauge, most messages ever queued at once
//	wspool_feed_rotations_total            counter
//	wspool_feed_duplicates_dropped_total   counter
//	wspool_feed_rtt_seconds                gauge, latest ping round trip (once measured)
//	wspool_feed_smoothed_rtt_seconds       gauge, its moving average (once measured)
//
// For the pool:
//
//	wspool_feeds{state}                    gauge, number of feeds in each state
//
// State label values are idle, connecting, connected, backing_off and
// closed. Every state is always exported (0 or 1 per feed), so that
// wspool_feed_state{state="connected"} == 0 finds the feeds that are down.
// The RTT gauges are left out until a feed's first pong, and
// connected_since while it is not connected, rather than exported as 0,
// which would read as a real value in averages and in time() - since.
// Counters restart at zero when a feed is removed and added again, which
// Prometheus's rate() handles as a counter reset.
type Collector struct {
	pool    *wspool.Pool
	state   *prometheus.Desc
	feeds   *prometheus.Desc
	metrics []feedMetric
}

// feedMetric is one per-feed metric (label "feed") and how to read it from a
// snapshot; ok false leaves the metric out for that feed.
type feedMetric struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(st *wspool.Stats) (v float64, ok bool)
}

// states lists every state, in the order they are exported.
var states = []wspool.State{
	wspool.StateIdle, wspool.StateConnecting, wspool.StateConnected, wspool.StateBackingOff, wspool.StateClosed,
}

// stateLabel is the label value of a state: its name in snake case
// ("backing off" becomes backing_off).
func stateLabel(s wspool.State) string { return strings.ReplaceAll(s.String(), " ", "_") }

// NewCollector returns a Collector for pool; register it with a
// prometheus.Registry.
func NewCollector(pool *wspool.Pool) *Collector {
	feedLabel := []string{"feed"}
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName("wspool", "feed", name), help, feedLabel, nil)
	}
	counter := func(name, help string, v func(st *wspool.Stats) int64) feedMetric {
		return feedMetric{desc(name, help), prometheus.CounterValue, func(st *wspool.Stats) (float64, bool) {
			return float64(v(st)), true
		}}
	}
	gauge := func(name, help string, v func(st *wspool.Stats) (float64, bool)) feedMetric {
		return feedMetric{desc(name, help), prometheus.GaugeValue, v}
	}
	always := func(v func(st *wspool.Stats) int) func(st *wspool.Stats) (float64, bool) {
		return func(st *wspool.Stats) (float64, bool) { return float64(v(st)), true }
	}
	return &Collector{
		pool: pool,
		state: prometheus.NewDesc("wspool_feed_state",
			"Current state of the feed: 1 for the state it is in, 0 for the others.",
			[]string{"feed", "state"}, nil),
		feeds: prometheus.NewDesc("wspool_feeds",
			"Number of feeds in the pool in each state.",
			[]string{"state"}, nil),
		metrics: []feedMetric{
			gauge("connected", "1 while the feed is connected, else 0.", always(func(st *wspool.Stats) int {
				if st.State == wspool.StateConnected {
					return 1
				}
				return 0
			})),
			gauge("connected_since_seconds", "Unix time at which the current connection was established; absent while not connected.",
				func(st *wspool.Stats) (float64, bool) {
					if st.ConnectedSince.IsZero() {
						return 0, false
					}
					return float64(st.ConnectedSince.UnixNano()) / 1e9, true
				}),
			counter("connects_total", "Connections that completed the handshake and OnConnect.",
				func(st *wspool.Stats) int64 { return st.Connects }),
			counter("disconnects_total", "Connections that ended.",
				func(st *wspool.Stats) int64 { return st.Disconnects }),
			counter("connect_attempts_total", "Dial attempts, successful or not.",
				func(st *wspool.Stats) int64 { return st.Attempts }),
			counter("messages_received_total", "Messages read from the socket, heartbeat replies included.",
				func(st *wspool.Stats) int64 { return st.MessagesIn }),
			counter("received_bytes_total", "Payload bytes of the messages read from the socket.",
				func(st *wspool.Stats) int64 { return st.BytesIn }),
			counter("messages_delivered_total", "Handler calls that completed, with or without error.",
				func(st *wspool.Stats) int64 { return st.Delivered }),
			counter("heartbeat_replies_total", "Inbound messages recognised as application heartbeat replies.",
				func(st *wspool.Stats) int64 { return st.HeartbeatReplies }),
			counter("messages_sent_total", "Messages written to the socket.",
				func(st *wspool.Stats) int64 { return st.MessagesOut }),
			counter("sent_bytes_total", "Payload bytes of the messages written to the socket.",
				func(st *wspool.Stats) int64 { return st.BytesOut }),
			counter("send_failures_total", "Sends reported failed, whatever the reason.",
				func(st *wspool.Stats) int64 { return st.SendFailed }),
			gauge("send_buffered", "Messages waiting in the send buffer for a connection.",
				always(func(st *wspool.Stats) int { return st.SendBuffered })),
			counter("handler_errors_total", "Handler errors and panics, decode errors included.",
				func(st *wspool.Stats) int64 { return st.HandlerErrors }),
			counter("dropped_messages_total", "Inbound messages dropped by the queue's overflow policy or discarded at shutdown.",
				func(st *wspool.Stats) int64 { return st.Dropped }),
			gauge("queue_depth", "Messages in the inbound queue.",
				always(func(st *wspool.Stats) int { return st.QueueDepth })),
			gauge("queue_high_water", "Most messages the inbound queue has held at once.",
				always(func(st *wspool.Stats) int { return st.QueueHighWater })),
			counter("rotations_total", "Planned connection replacements (max connection age).",
				func(st *wspool.Stats) int64 { return st.Rotations }),
			counter("duplicates_dropped_total", "Messages the duplicate filter dropped after a rotation.",
				func(st *wspool.Stats) int64 { return st.Duplicates }),
			gauge("rtt_seconds", "Latest ping round-trip time; absent until the first pong.",
				func(st *wspool.Stats) (float64, bool) { return st.RTT.Seconds(), st.RTT > 0 }),
			gauge("smoothed_rtt_seconds", "Exponentially weighted average of the ping round-trip time (weight 1/8); absent until the first pong.",
				func(st *wspool.Stats) (float64, bool) { return st.SmoothedRTT.Seconds(), st.SmoothedRTT > 0 }),
		},
	}
}

// Describe sends the descriptors of every metric the Collector can export.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.state
	ch <- c.feeds
	for _, m := range c.metrics {
		ch <- m.desc
	}
}

// Collect takes one snapshot of the pool and sends its metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ps := c.pool.Stats()
	inState := make(map[wspool.State]int, len(states))
	for i := range ps.Feeds {
		st := &ps.Feeds[i]
		inState[st.State]++
		for _, s := range states {
			v := 0.0
			if st.State == s {
				v = 1
			}
			ch <- constMetric(c.state, prometheus.GaugeValue, v, st.Name, stateLabel(s))
		}
		for _, m := range c.metrics {
			if v, ok := m.value(st); ok {
				ch <- constMetric(m.desc, m.typ, v, st.Name)
			}
		}
	}
	for _, s := range states {
		ch <- constMetric(c.feeds, prometheus.GaugeValue, float64(inState[s]), stateLabel(s))
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

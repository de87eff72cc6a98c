package wspoolotel

import (
	"context"
	"strconv"
	"strings"

	"github.com/wspool/wspool"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Attribute keys.
const (
	PoolKey    = attribute.Key("wspool.pool")
	FeedKey    = attribute.Key("wspool.feed")
	StateKey   = attribute.Key("wspool.state")
	StandbyKey = attribute.Key("wspool.standby")
)

// kind says which observable instrument a metric is.
type kind uint8

const (
	intCounter kind = iota
	floatCounter
	intGauge
	floatGauge
)

// stat is one observable metric read from a snapshot: from a feed's Stats,
// a standby connection's StandbyStats or the PoolStats (exactly one of the
// value funcs is set); ok false leaves it out for that feed.
type stat struct {
	name, unit, desc string
	kind             kind
	feed             func(st *wspool.Stats) (float64, bool)
	standby          func(s *wspool.StandbyStats) float64
	pool             func(ps *wspool.PoolStats) float64

	inst metric.Observable
}

var states = []wspool.State{
	wspool.StateIdle, wspool.StateConnecting, wspool.StateConnected, wspool.StateBackingOff, wspool.StateClosed,
}

// StateValue is the wspool.state attribute's value of a state: its name in
// snake case (idle, connecting, connected, backing_off, closed).
func StateValue(s wspool.State) string { return strings.ReplaceAll(s.String(), " ", "_") }

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// feedStats returns the per-feed metrics.
func feedStats() []*stat {
	count := func(name, unit, desc string, v func(st *wspool.Stats) int64) *stat {
		return &stat{name: "wspool.feed." + name, unit: unit, desc: desc, kind: intCounter,
			feed: func(st *wspool.Stats) (float64, bool) { return float64(v(st)), true }}
	}
	gauge := func(name, unit, desc string, k kind, v func(st *wspool.Stats) (float64, bool)) *stat {
		return &stat{name: "wspool.feed." + name, unit: unit, desc: desc, kind: k, feed: v}
	}
	always := func(v func(st *wspool.Stats) float64) func(st *wspool.Stats) (float64, bool) {
		return func(st *wspool.Stats) (float64, bool) { return v(st), true }
	}
	return []*stat{
		gauge("connected", "1", "1 while the feed is connected, else 0.", intGauge,
			always(func(st *wspool.Stats) float64 { return b2f(st.State == wspool.StateConnected) })),
		gauge("connected_since", "s", "Unix time at which the current connection was established; absent while not connected.", floatGauge,
			func(st *wspool.Stats) (float64, bool) {
				return float64(st.ConnectedSince.UnixNano()) / 1e9, !st.ConnectedSince.IsZero()
			}),
		count("connects", "{connection}", "Connections that completed the handshake and OnConnect.", func(st *wspool.Stats) int64 { return st.Connects }),
		count("disconnects", "{connection}", "Connections that ended.", func(st *wspool.Stats) int64 { return st.Disconnects }),
		count("connect_attempts", "{attempt}", "Dial attempts, successful or not.", func(st *wspool.Stats) int64 { return st.Attempts }),
		gauge("last_error_time", "s", "Unix time of the feed's most recent failure; absent if none.", floatGauge,
			func(st *wspool.Stats) (float64, bool) {
				return float64(st.LastErrorAt.UnixNano()) / 1e9, st.LastError != nil && !st.LastErrorAt.IsZero()
			}),
		count("messages.received", "{message}", "Messages read from the socket.", func(st *wspool.Stats) int64 { return st.MessagesIn }),
		count("bytes.received", "By", "Payload bytes of the messages read from the socket.", func(st *wspool.Stats) int64 { return st.BytesIn }),
		count("messages.sent", "{message}", "Messages written to the socket.", func(st *wspool.Stats) int64 { return st.MessagesOut }),
		count("bytes.sent", "By", "Payload bytes of the messages written to the socket.", func(st *wspool.Stats) int64 { return st.BytesOut }),
		count("messages.delivered", "{message}", "Handler calls that completed, with or without error.", func(st *wspool.Stats) int64 { return st.Delivered }),
		count("heartbeat_replies", "{message}", "Inbound messages recognised as application heartbeat replies.",
			func(st *wspool.Stats) int64 { return st.HeartbeatReplies }),
		count("handler_errors", "{error}", "Handler and callback errors and panics.", func(st *wspool.Stats) int64 { return st.HandlerErrors }),
		count("callback_events.dropped", "{event}", "OnStateChange and OnError calls dropped because those callbacks fell too far behind.",
			func(st *wspool.Stats) int64 { return st.EventsDropped }),
		count("messages.discarded_at_connect", "{message}", "Messages read while OnConnect ran and never delivered because that attempt failed.",
			func(st *wspool.Stats) int64 { return st.DiscardedAtConnect }),
		count("messages.dropped", "{message}", "Inbound messages dropped by the queue's overflow policy or discarded at shutdown.",
			func(st *wspool.Stats) int64 { return st.Dropped }),
		gauge("queue.depth", "{message}", "Messages in the inbound queue.", intGauge,
			always(func(st *wspool.Stats) float64 { return float64(st.QueueDepth) })),
		gauge("queue.high_water", "{message}", "Most messages the inbound queue has held at once.", intGauge,
			always(func(st *wspool.Stats) float64 { return float64(st.QueueHighWater) })),
		gauge("send.buffered", "{message}", "Messages waiting in the send buffer for a connection.", intGauge,
			always(func(st *wspool.Stats) float64 { return float64(st.SendBuffered) })),
		count("send.failures", "{message}", "Sends reported failed, whatever the reason.", func(st *wspool.Stats) int64 { return st.SendFailed }),
		count("rotations", "{rotation}", "Make-before-break connection replacements.", func(st *wspool.Stats) int64 { return st.Rotations }),
		count("duplicates.dropped", "{message}", "Messages dropped as duplicates.", func(st *wspool.Stats) int64 { return st.Duplicates }),
		count("sequence.gaps", "{gap}", "Sequence gaps seen.", func(st *wspool.Stats) int64 { return st.Gaps }),
		count("sequence.gap_messages", "{message}", "Sequence numbers the gaps skipped.", func(st *wspool.Stats) int64 { return st.GapMessages }),
		count("sequence.restarts", "{restart}", "Restarts of the upstream's numbering, which sequence.gaps does not count.",
			func(st *wspool.Stats) int64 { return st.Restarts }),
		count("server_pings", "{message}", "Upstream data-level pings answered.", func(st *wspool.Stats) int64 { return st.ServerPings }),
		gauge("rtt", "s", "Latest ping round-trip time; absent until the first pong.", floatGauge,
			func(st *wspool.Stats) (float64, bool) { return st.RTT.Seconds(), st.RTT > 0 }),
		gauge("rtt.smoothed", "s", "Exponentially weighted average of the ping round-trip time; absent until the first pong.", floatGauge,
			func(st *wspool.Stats) (float64, bool) { return st.SmoothedRTT.Seconds(), st.SmoothedRTT > 0 }),
		count("messages.won", "{message}", "With WithStandby: data messages the primary connection delivered first.",
			func(st *wspool.Stats) int64 { return st.Won }),
		count("admission.waits", "{wait}", "Dials that waited for admission or a handshake slot.", func(st *wspool.Stats) int64 { return st.AdmissionWaits }),
		{name: "wspool.feed.admission.wait_time", unit: "s", desc: "Total time dials waited for admission or a handshake slot.", kind: floatCounter,
			feed: func(st *wspool.Stats) (float64, bool) { return st.AdmissionWaited.Seconds(), true }},
		gauge("admission.waiting", "1", "1 while a dial of the feed waits for admission or a handshake slot, else 0.", intGauge,
			always(func(st *wspool.Stats) float64 { return b2f(st.AdmissionWaiting) })),
	}
}

// standbyStats returns the metrics of standby connections.
func standbyStats() []*stat {
	count := func(name, unit, desc string, v func(s *wspool.StandbyStats) int64) *stat {
		return &stat{name: "wspool.feed.standby." + name, unit: unit, desc: desc, kind: intCounter,
			standby: func(s *wspool.StandbyStats) float64 { return float64(v(s)) }}
	}
	return []*stat{
		{name: "wspool.feed.standby.connected", unit: "1", desc: "1 while the standby connection is connected, else 0.", kind: intGauge,
			standby: func(s *wspool.StandbyStats) float64 { return b2f(s.Connected) }},
		count("connects", "{connection}", "Connections of the standby connection.", func(s *wspool.StandbyStats) int64 { return s.Connects }),
		count("disconnects", "{connection}", "Ended connections of the standby connection.", func(s *wspool.StandbyStats) int64 { return s.Disconnects }),
		count("messages.received", "{message}", "Messages the standby connection read.", func(s *wspool.StandbyStats) int64 { return s.MessagesIn }),
		count("messages.won", "{message}", "Data messages the standby connection delivered first.", func(s *wspool.StandbyStats) int64 { return s.Won }),
	}
}

// poolStats returns the pool-wide metrics other than wspool.feeds.
func poolStats() []*stat {
	count := func(name, unit, desc string, v func(ps *wspool.PoolStats) int64) *stat {
		return &stat{name: "wspool.pool." + name, unit: unit, desc: desc, kind: intCounter,
			pool: func(ps *wspool.PoolStats) float64 { return float64(v(ps)) }}
	}
	return []*stat{
		count("connects", "{connection}", "Connections of all feeds that completed the handshake and OnConnect.", func(ps *wspool.PoolStats) int64 { return ps.Connects }),
		count("disconnects", "{connection}", "Connections of all feeds that ended.", func(ps *wspool.PoolStats) int64 { return ps.Disconnects }),
		count("connect_attempts", "{attempt}", "Dial attempts of all feeds.", func(ps *wspool.PoolStats) int64 { return ps.Attempts }),
		count("messages.received", "{message}", "Messages all feeds read.", func(ps *wspool.PoolStats) int64 { return ps.MessagesIn }),
		count("bytes.received", "By", "Payload bytes all feeds read.", func(ps *wspool.PoolStats) int64 { return ps.BytesIn }),
		count("messages.sent", "{message}", "Messages all feeds wrote.", func(ps *wspool.PoolStats) int64 { return ps.MessagesOut }),
		count("bytes.sent", "By", "Payload bytes all feeds wrote.", func(ps *wspool.PoolStats) int64 { return ps.BytesOut }),
		count("handler_errors", "{error}", "Handler and callback errors and panics of all feeds.", func(ps *wspool.PoolStats) int64 { return ps.HandlerErrors }),
		count("messages.dropped", "{message}", "Inbound messages all feeds' queues dropped.", func(ps *wspool.PoolStats) int64 { return ps.Dropped }),
		count("send.failures", "{message}", "Sends of all feeds reported failed.", func(ps *wspool.PoolStats) int64 { return ps.SendFailed }),
		{name: "wspool.pool.admission.waiting", unit: "{feed}", desc: "Feeds whose dial waits for admission or a handshake slot now.", kind: intGauge,
			pool: func(ps *wspool.PoolStats) float64 { return float64(ps.AdmissionWaiting) }},
	}
}

// newInstrument creates s's observable instrument on meter.
func (s *stat) newInstrument(meter metric.Meter) error {
	var err error
	switch s.kind {
	case intCounter:
		s.inst, err = meter.Int64ObservableCounter(s.name, metric.WithUnit(s.unit), metric.WithDescription(s.desc))
	case floatCounter:
		s.inst, err = meter.Float64ObservableCounter(s.name, metric.WithUnit(s.unit), metric.WithDescription(s.desc))
	case intGauge:
		s.inst, err = meter.Int64ObservableGauge(s.name, metric.WithUnit(s.unit), metric.WithDescription(s.desc))
	case floatGauge:
		s.inst, err = meter.Float64ObservableGauge(s.name, metric.WithUnit(s.unit), metric.WithDescription(s.desc))
	}
	return err
}

// observe records v for s.
func (s *stat) observe(o metric.Observer, v float64, opt metric.ObserveOption) {
	switch inst := s.inst.(type) {
	case metric.Int64Observable:
		o.ObserveInt64(inst, int64(v), opt)
	case metric.Float64Observable:
		o.ObserveFloat64(inst, v, opt)
	}
}

// Options configures RegisterStats.
type Options struct {
	// TotalsOnly reports only the pool-wide metrics (wspool.feeds and the
	// wspool.pool. family, from Pool.Totals): a fixed number of streams
	// however many feeds the pool has. See the package documentation's
	// cardinality note.
	TotalsOnly bool
}

// RegisterStats creates the observable instruments for pool's statistics on
// meter and registers one callback that reports them from one snapshot per
// collection, every metric with the attribute wspool.pool=name and the
// per-feed ones with wspool.feed. Unregister the returned Registration to
// stop reporting.
func RegisterStats(meter metric.Meter, pool *wspool.Pool, name string, opts Options) (metric.Registration, error) {
	feeds, err := meter.Int64ObservableGauge("wspool.feeds", metric.WithUnit("{feed}"),
		metric.WithDescription("Number of feeds in the pool in each state."))
	if err != nil {
		return nil, err
	}
	perPool := poolStats()
	var perFeed, perStandby []*stat
	if !opts.TotalsOnly {
		perFeed, perStandby = feedStats(), standbyStats()
	}
	insts := []metric.Observable{feeds}
	var stateGauge metric.Int64ObservableGauge
	if !opts.TotalsOnly {
		stateGauge, err = meter.Int64ObservableGauge("wspool.feed.state", metric.WithUnit("1"),
			metric.WithDescription("Current state of the feed: 1 for the state it is in, 0 for the others."))
		if err != nil {
			return nil, err
		}
		insts = append(insts, stateGauge)
	}
	for _, group := range [][]*stat{perPool, perFeed, perStandby} {
		for _, s := range group {
			if err := s.newInstrument(meter); err != nil {
				return nil, err
			}
			insts = append(insts, s.inst)
		}
	}
	poolAttr := PoolKey.String(name)
	stateAttrs := make([]metric.ObserveOption, len(states))
	for i, s := range states {
		stateAttrs[i] = metric.WithAttributes(poolAttr, StateKey.String(StateValue(s)))
	}
	poolOpt := metric.WithAttributes(poolAttr)
	return meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		var ps wspool.PoolStats
		if opts.TotalsOnly {
			ps = pool.Totals()
		} else {
			ps = pool.Stats()
		}
		idle := ps.Total - ps.Connected - ps.Connecting - ps.BackingOff - ps.Closed
		for i, n := range []int{idle, ps.Connecting, ps.Connected, ps.BackingOff, ps.Closed} {
			o.ObserveInt64(feeds, int64(n), stateAttrs[i])
		}
		for _, s := range perPool {
			s.observe(o, s.pool(&ps), poolOpt)
		}
		for i := range ps.Feeds {
			st := &ps.Feeds[i]
			feedAttr := FeedKey.String(st.Name)
			for _, s := range states {
				o.ObserveInt64(stateGauge, int64(b2f(st.State == s)),
					metric.WithAttributes(poolAttr, feedAttr, StateKey.String(StateValue(s))))
			}
			feedOpt := metric.WithAttributes(poolAttr, feedAttr)
			for _, s := range perFeed {
				if v, ok := s.feed(st); ok {
					s.observe(o, v, feedOpt)
				}
			}
			for j := range st.Standby {
				sb := &st.Standby[j]
				sbOpt := metric.WithAttributes(poolAttr, feedAttr, StandbyKey.String(strconv.Itoa(sb.Index)))
				for _, s := range perStandby {
					s.observe(o, s.standby(sb), sbOpt)
				}
			}
		}
		return nil
	}, insts...)
}

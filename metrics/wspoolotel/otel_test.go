package wspoolotel_test

import (
	"context"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/metrics/wspoolotel"
	"github.com/wspool/wspool/wspooltest"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// statsInstrument names the instrument of each wspool.Stats field ("" for
// the feed attribute). A field missing here fails
// TestEveryFieldHasAnInstrument.
var statsInstrument = map[string][]string{
	"Name":               {""},
	"State":              {"wspool.feed.state", "wspool.feed.connected"},
	"Connects":           {"wspool.feed.connects"},
	"Disconnects":        {"wspool.feed.disconnects"},
	"Attempts":           {"wspool.feed.connect_attempts"},
	"LastError":          {"wspool.feed.last_error_time"},
	"LastErrorAt":        {"wspool.feed.last_error_time"},
	"MessagesIn":         {"wspool.feed.messages.received"},
	"BytesIn":            {"wspool.feed.bytes.received"},
	"MessagesOut":        {"wspool.feed.messages.sent"},
	"BytesOut":           {"wspool.feed.bytes.sent"},
	"Delivered":          {"wspool.feed.messages.delivered"},
	"HeartbeatReplies":   {"wspool.feed.heartbeat_replies"},
	"HandlerErrors":      {"wspool.feed.handler_errors"},
	"EventsDropped":      {"wspool.feed.callback_events.dropped"},
	"DiscardedAtConnect": {"wspool.feed.messages.discarded_at_connect"},
	"Dropped":            {"wspool.feed.messages.dropped"},
	"QueueDepth":         {"wspool.feed.queue.depth"},
	"QueueHighWater":     {"wspool.feed.queue.high_water"},
	"SendBuffered":       {"wspool.feed.send.buffered"},
	"SendFailed":         {"wspool.feed.send.failures"},
	"Rotations":          {"wspool.feed.rotations"},
	"Duplicates":         {"wspool.feed.duplicates.dropped"},
	"Gaps":               {"wspool.feed.sequence.gaps"},
	"GapMessages":        {"wspool.feed.sequence.gap_messages"},
	"ServerPings":        {"wspool.feed.server_pings"},
	"Restarts":           {"wspool.feed.sequence.restarts"},
	"RTT":                {"wspool.feed.rtt"},
	"SmoothedRTT":        {"wspool.feed.rtt.smoothed"},
	"ConnectedSince":     {"wspool.feed.connected_since"},
	"Won":                {"wspool.feed.messages.won"},
	"Standby": {"wspool.feed.standby.connected", "wspool.feed.standby.connects", "wspool.feed.standby.disconnects",
		"wspool.feed.standby.messages.received", "wspool.feed.standby.messages.won"},
	"AdmissionWaits":   {"wspool.feed.admission.waits"},
	"AdmissionWaited":  {"wspool.feed.admission.wait_time"},
	"AdmissionWaiting": {"wspool.feed.admission.waiting"},
}

// poolInstrument names the instrument of each wspool.PoolStats field.
var poolInstrument = map[string][]string{
	"Feeds":            {""},
	"Total":            {"wspool.feeds"},
	"Connected":        {"wspool.feeds"},
	"Connecting":       {"wspool.feeds"},
	"BackingOff":       {"wspool.feeds"},
	"Closed":           {"wspool.feeds"},
	"Connects":         {"wspool.pool.connects"},
	"Disconnects":      {"wspool.pool.disconnects"},
	"Attempts":         {"wspool.pool.connect_attempts"},
	"MessagesIn":       {"wspool.pool.messages.received"},
	"BytesIn":          {"wspool.pool.bytes.received"},
	"MessagesOut":      {"wspool.pool.messages.sent"},
	"BytesOut":         {"wspool.pool.bytes.sent"},
	"HandlerErrors":    {"wspool.pool.handler_errors"},
	"Dropped":          {"wspool.pool.messages.dropped"},
	"SendFailed":       {"wspool.pool.send.failures"},
	"AdmissionWaiting": {"wspool.pool.admission.waiting"},
}

var timingInstrument = map[wspool.TimingKind]string{
	wspool.TimingHandshake:    "wspool.handshake.duration",
	wspool.TimingOnConnect:    "wspool.on_connect.duration",
	wspool.TimingFirstMessage: "wspool.first_message.duration",
	wspool.TimingHandler:      "wspool.handler.duration",
	wspool.TimingQueueWait:    "wspool.queue_wait.duration",
}

// gauges lists the instruments that are gauges; the other stats are
// monotonic sums.
var gauges = []string{
	"wspool.feeds", "wspool.pool.admission.waiting", "wspool.feed.state", "wspool.feed.connected", "wspool.feed.connected_since",
	"wspool.feed.last_error_time", "wspool.feed.queue.depth", "wspool.feed.queue.high_water", "wspool.feed.send.buffered",
	"wspool.feed.rtt", "wspool.feed.rtt.smoothed", "wspool.feed.admission.waiting", "wspool.feed.standby.connected",
}

// TestEveryFieldHasAnInstrument fails when wspool.Stats, wspool.PoolStats or
// wspool.TimingKind gains something without an instrument here.
func TestEveryFieldHasAnInstrument(t *testing.T) {
	for typ, table := range map[reflect.Type]map[string][]string{
		reflect.TypeFor[wspool.Stats](): statsInstrument, reflect.TypeFor[wspool.PoolStats](): poolInstrument,
	} {
		for f := range typ.Fields() {
			if _, ok := table[f.Name]; !ok && f.IsExported() {
				t.Errorf("%s.%s has no instrument: add one to metrics/wspoolotel (stats.go, doc.go) and metrics/wspoolprom", typ.Name(), f.Name)
			}
		}
	}
	for k := wspool.TimingKind(1); k.String() != "unknown"; k++ {
		if got := wspoolotel.TimingInstrumentName(k); got != timingInstrument[k] {
			t.Errorf("TimingInstrumentName(%v) = %q, want %q", k, got, timingInstrument[k])
		}
	}
}

// collect reads reader into a map by instrument name.
func collect(t *testing.T, reader *sdkmetric.ManualReader) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// point is one data point's attributes and value.
type point struct {
	attrs attribute.Set
	value float64
}

// points returns m's data points (sums and gauges; histograms give their
// count as the value).
func points(m metricdata.Metrics) []point {
	var ps []point
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			ps = append(ps, point{p.Attributes, float64(p.Value)})
		}
	case metricdata.Sum[float64]:
		for _, p := range d.DataPoints {
			ps = append(ps, point{p.Attributes, p.Value})
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			ps = append(ps, point{p.Attributes, float64(p.Value)})
		}
	case metricdata.Gauge[float64]:
		for _, p := range d.DataPoints {
			ps = append(ps, point{p.Attributes, p.Value})
		}
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			ps = append(ps, point{p.Attributes, float64(p.Count)})
		}
	}
	return ps
}

// find returns the value of m's point whose attributes include every pair.
func find(m metricdata.Metrics, pairs ...attribute.KeyValue) (float64, bool) {
	for _, p := range points(m) {
		ok := true
		for _, kv := range pairs {
			v, has := p.attrs.Value(kv.Key)
			ok = ok && has && v == kv.Value
		}
		if ok {
			return p.value, true
		}
	}
	return 0, false
}

// isMonotonic reports whether m is a monotonic sum.
func isMonotonic(m metricdata.Metrics) bool {
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		return d.IsMonotonic
	case metricdata.Sum[float64]:
		return d.IsMonotonic
	}
	return false
}

func isGauge(m metricdata.Metrics) bool {
	switch m.Data.(type) {
	case metricdata.Gauge[int64], metricdata.Gauge[float64]:
		return true
	}
	return false
}

// TestManualReaderLive runs a pool of real feeds on loopback (a sequenced
// stream with a standby connection, pings, a queue and timings; a feed whose
// server answers 503) and reads the instruments through the SDK's
// ManualReader: every instrument of the tables above with its kind, unit,
// the wspool.pool attribute on every point and wspool.feed on per-feed ones,
// and values that match the feeds' Stats.
func TestManualReaderLive(t *testing.T) {
	stream := wspooltest.NewStream(5 * time.Millisecond)
	defer stream.Close()
	srv, err := wspooltest.NewServer(stream.Serve)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	down, err := wspooltest.NewServer(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()
	down.Refuse(http.StatusServiceUnavailable, 0)

	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(context.Background())
	meter := provider.Meter("github.com/wspool/wspool/metrics/wspoolotel")

	timings, err := wspoolotel.NewTimings(meter, "live", false)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := wspool.NewPool(wspool.WithTimings(timings.Observe),
		wspool.WithPingInterval(50*time.Millisecond), wspool.WithBackoff(20*time.Millisecond, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	prices, err := pool.Add(srv.URL("/prices"), func(context.Context, wspool.Message) error { return nil },
		wspool.WithName("prices"),
		wspool.WithOnConnect(func(ctx context.Context, c *wspool.Conn) error {
			return c.Send(ctx, wspool.TextMessage, []byte("subscribe"))
		}),
		wspool.WithQueue(wspool.Queue{Messages: 64}),
		wspool.WithSequence(wspool.Sequence{Extract: func(m wspool.Message) (string, uint64, bool) {
			n, err := strconv.ParseUint(string(m.Data), 10, 64)
			return "", n, err == nil
		}}),
		wspool.WithStandby(wspool.Standby{Connections: 1}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Add(down.URL("/down"), nil, wspool.WithName("down")); err != nil {
		t.Fatal(err)
	}
	reg, err := wspoolotel.RegisterStats(meter, pool, "live", wspoolotel.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pool.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	pricesAttr := wspoolotel.FeedKey.String("prices")
	deadline := time.Now().Add(30 * time.Second)
	var ms map[string]metricdata.Metrics
	for {
		ms = collect(t, reader)
		_, lastErr := find(ms["wspool.feed.last_error_time"], wspoolotel.FeedKey.String("down"))
		rtt, _ := find(ms["wspool.feed.rtt"], pricesAttr)
		delivered, _ := find(ms["wspool.feed.messages.delivered"], pricesAttr)
		won, _ := find(ms["wspool.feed.messages.won"], pricesAttr)
		standby, _ := find(ms["wspool.feed.standby.connected"], pricesAttr)
		ready := rtt > 0 && delivered > 10 && won > 0 && standby == 1 && lastErr
		for _, name := range timingInstrument {
			n, _ := find(ms[name])
			ready = ready && n > 0
		}
		if ready {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30s the feeds have not shown everything: prices %+v", prices.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}

	want := map[string]bool{}
	for _, table := range []map[string][]string{statsInstrument, poolInstrument} {
		for _, names := range table {
			for _, n := range names {
				if n != "" {
					want[n] = true
				}
			}
		}
	}
	for _, n := range timingInstrument {
		want[n] = true
	}
	for name := range want {
		m, ok := ms[name]
		if !ok {
			t.Errorf("no instrument %s", name)
			continue
		}
		if m.Description == "" || m.Unit == "" {
			t.Errorf("%s: description %q, unit %q", name, m.Description, m.Unit)
		}
		_, hist := m.Data.(metricdata.Histogram[float64])
		switch {
		case strings.HasSuffix(name, ".duration"):
			if !hist || m.Unit != "s" {
				t.Errorf("%s: want a histogram in s, got %T in %q", name, m.Data, m.Unit)
			}
		case slices.Contains(gauges, name):
			if !isGauge(m) {
				t.Errorf("%s: want a gauge, got %T", name, m.Data)
			}
		case !isMonotonic(m):
			t.Errorf("%s: want a monotonic sum, got %T", name, m.Data)
		}
		for _, p := range points(m) {
			if v, _ := p.attrs.Value(wspoolotel.PoolKey); v.AsString() != "live" {
				t.Errorf("%s: point without wspool.pool=live: %v", name, p.attrs.ToSlice())
			}
			if _, ok := p.attrs.Value(wspoolotel.FeedKey); strings.HasPrefix(name, "wspool.feed.") && !ok {
				t.Errorf("%s: point without wspool.feed: %v", name, p.attrs.ToSlice())
			}
		}
	}
	for name := range ms {
		if !want[name] {
			t.Errorf("instrument %s is in no table of this test", name)
		}
	}
	if v, _ := find(ms["wspool.feed.rtt"], pricesAttr); v <= 0 || v >= 1 {
		t.Errorf("rtt %v, want seconds in (0, 1) on loopback", v)
	}
	if v, _ := find(ms["wspool.feed.standby.connected"], pricesAttr, wspoolotel.StandbyKey.String("1")); v != 1 {
		t.Errorf("standby 1 connected %v, want 1", v)
	}
	if v, _ := find(ms["wspool.feed.state"], pricesAttr, wspoolotel.StateKey.String("connected")); v != 1 {
		t.Errorf("prices state connected %v, want 1", v)
	}
	if v, _ := find(ms["wspool.feeds"], wspoolotel.StateKey.String("connected")); v != 1 {
		t.Errorf("wspool.feeds{connected} = %v, want 1", v)
	}
	if v, _ := find(ms["wspool.feed.connects"], pricesAttr); v < 1 || v > float64(prices.Stats().Connects) {
		t.Errorf("prices connects %v, Stats says %d", v, prices.Stats().Connects)
	}

	// Unregistered, the stats are no longer reported.
	if err := reg.Unregister(); err != nil {
		t.Fatal(err)
	}
	if _, ok := find(collect(t, reader)["wspool.feed.connects"], pricesAttr); ok {
		t.Error("wspool.feed.connects still reported after Unregister")
	}
}

// TestTotalsOnly: with Options.TotalsOnly, only the pool-wide instruments
// report, and two pools register side by side on one meter.
func TestTotalsOnly(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(context.Background())
	meter := provider.Meter("test")
	a, b := newIdlePool(t, 3), newIdlePool(t, 2)
	if _, err := wspoolotel.RegisterStats(meter, a, "a", wspoolotel.Options{TotalsOnly: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := wspoolotel.RegisterStats(meter, b, "b", wspoolotel.Options{}); err != nil {
		t.Fatal(err)
	}
	ms := collect(t, reader)
	idle := wspoolotel.StateKey.String("idle")
	if v, _ := find(ms["wspool.feeds"], wspoolotel.PoolKey.String("a"), idle); v != 3 {
		t.Errorf("pool a idle feeds %v, want 3", v)
	}
	if v, _ := find(ms["wspool.feeds"], wspoolotel.PoolKey.String("b"), idle); v != 2 {
		t.Errorf("pool b idle feeds %v, want 2", v)
	}
	for name, m := range ms {
		if !strings.HasPrefix(name, "wspool.feed.") {
			continue
		}
		if _, ok := find(m, wspoolotel.PoolKey.String("a")); ok {
			t.Errorf("%s reported for the totals-only pool a", name)
		}
	}
}

func newIdlePool(t *testing.T, n int) *wspool.Pool {
	t.Helper()
	p, err := wspool.NewPool()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	for i := range n {
		if _, err := p.Add("ws://127.0.0.1:1/f"+strconv.Itoa(i), nil); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

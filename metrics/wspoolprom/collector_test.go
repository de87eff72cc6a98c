package wspoolprom_test

import (
	"context"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/metrics/wspoolprom"
	"github.com/wspool/wspool/wspooltest"
)

// statsMetric names the metric family of each wspool.Stats field ("" for
// the feed label). A field missing here fails TestEveryFieldHasAMetric: a
// new field needs a metric (collector.go, doc.go, and the OTel module).
var statsMetric = map[string][]string{
	"Name":               {""},
	"State":              {"wspool_feed_state", "wspool_feed_connected"},
	"Connects":           {"wspool_feed_connects_total"},
	"Disconnects":        {"wspool_feed_disconnects_total"},
	"Attempts":           {"wspool_feed_connect_attempts_total"},
	"LastError":          {"wspool_feed_last_error_timestamp_seconds"},
	"LastErrorAt":        {"wspool_feed_last_error_timestamp_seconds"},
	"MessagesIn":         {"wspool_feed_messages_received_total"},
	"BytesIn":            {"wspool_feed_received_bytes_total"},
	"MessagesOut":        {"wspool_feed_messages_sent_total"},
	"BytesOut":           {"wspool_feed_sent_bytes_total"},
	"Delivered":          {"wspool_feed_messages_delivered_total"},
	"HeartbeatReplies":   {"wspool_feed_heartbeat_replies_total"},
	"HandlerErrors":      {"wspool_feed_handler_errors_total"},
	"EventsDropped":      {"wspool_feed_callback_events_dropped_total"},
	"DiscardedAtConnect": {"wspool_feed_connect_discarded_messages_total"},
	"Dropped":            {"wspool_feed_dropped_messages_total"},
	"QueueDepth":         {"wspool_feed_queue_depth"},
	"QueueHighWater":     {"wspool_feed_queue_high_water"},
	"SendBuffered":       {"wspool_feed_send_buffered"},
	"SendFailed":         {"wspool_feed_send_failures_total"},
	"Rotations":          {"wspool_feed_rotations_total"},
	"Duplicates":         {"wspool_feed_duplicates_dropped_total"},
	"Gaps":               {"wspool_feed_sequence_gaps_total"},
	"GapMessages":        {"wspool_feed_sequence_gap_messages_total"},
	"ServerPings":        {"wspool_feed_server_pings_total"},
	"Restarts":           {"wspool_feed_sequence_restarts_total"},
	"RTT":                {"wspool_feed_rtt_seconds"},
	"SmoothedRTT":        {"wspool_feed_smoothed_rtt_seconds"},
	"ConnectedSince":     {"wspool_feed_connected_since_seconds"},
	"Won":                {"wspool_feed_won_messages_total"},
	"Standby": {"wspool_feed_standby_connected", "wspool_feed_standby_connects_total", "wspool_feed_standby_disconnects_total",
		"wspool_feed_standby_messages_received_total", "wspool_feed_standby_won_messages_total"},
	"AdmissionWaits":   {"wspool_feed_admission_waits_total"},
	"AdmissionWaited":  {"wspool_feed_admission_wait_seconds_total"},
	"AdmissionWaiting": {"wspool_feed_admission_waiting"},
}

// poolMetric names the metric family of each wspool.PoolStats field.
var poolMetric = map[string][]string{
	"Feeds":            {""}, // the per-feed metrics
	"Total":            {"wspool_feeds"},
	"Connected":        {"wspool_feeds"},
	"Connecting":       {"wspool_feeds"},
	"BackingOff":       {"wspool_feeds"},
	"Closed":           {"wspool_feeds"},
	"Connects":         {"wspool_pool_connects_total"},
	"Disconnects":      {"wspool_pool_disconnects_total"},
	"Attempts":         {"wspool_pool_connect_attempts_total"},
	"MessagesIn":       {"wspool_pool_messages_received_total"},
	"BytesIn":          {"wspool_pool_received_bytes_total"},
	"MessagesOut":      {"wspool_pool_messages_sent_total"},
	"BytesOut":         {"wspool_pool_sent_bytes_total"},
	"HandlerErrors":    {"wspool_pool_handler_errors_total"},
	"Dropped":          {"wspool_pool_dropped_messages_total"},
	"SendFailed":       {"wspool_pool_send_failures_total"},
	"AdmissionWaiting": {"wspool_pool_admission_waiting"},
}

// timingKinds lists every wspool.TimingKind with its histogram's name.
var timingKinds = map[wspool.TimingKind]string{
	wspool.TimingHandshake:    "wspool_handshake_duration_seconds",
	wspool.TimingOnConnect:    "wspool_on_connect_duration_seconds",
	wspool.TimingFirstMessage: "wspool_first_message_duration_seconds",
	wspool.TimingHandler:      "wspool_handler_duration_seconds",
	wspool.TimingQueueWait:    "wspool_queue_wait_duration_seconds",
}

// TestEveryFieldHasAMetric fails when wspool.Stats, wspool.PoolStats or
// wspool.TimingKind gains something that has no metric here.
func TestEveryFieldHasAMetric(t *testing.T) {
	for typ, table := range map[reflect.Type]map[string][]string{
		reflect.TypeFor[wspool.Stats](): statsMetric, reflect.TypeFor[wspool.PoolStats](): poolMetric,
	} {
		for f := range typ.Fields() {
			if _, ok := table[f.Name]; !ok && f.IsExported() {
				t.Errorf("%s.%s has no metric: add one to metrics/wspoolprom (collector.go, doc.go) and metrics/wspoolotel", typ.Name(), f.Name)
			}
		}
	}
	for k := wspool.TimingKind(1); k.String() != "unknown"; k++ {
		if timingKinds[k] == "" {
			t.Errorf("TimingKind %v has no histogram in this test's table", k)
		} else if got := wspoolprom.TimingMetricName(k); got != timingKinds[k] {
			t.Errorf("TimingMetricName(%v) = %q, want %q", k, got, timingKinds[k])
		}
	}
}

// familyType is the type of each family the package exports.
func familyTypes() map[string]dto.MetricType {
	types := map[string]dto.MetricType{}
	add := func(names ...string) {
		for _, n := range names {
			if n == "" {
				continue
			}
			typ := dto.MetricType_GAUGE
			if strings.HasSuffix(n, "_total") {
				typ = dto.MetricType_COUNTER
			}
			types[n] = typ
		}
	}
	for _, ns := range statsMetric {
		add(ns...)
	}
	for _, ns := range poolMetric {
		add(ns...)
	}
	for _, n := range timingKinds {
		types[n] = dto.MetricType_HISTOGRAM
	}
	return types
}

// TestCollectorLive runs a pool of real feeds on loopback (a sequenced
// stream with a standby connection, pings, a queue and timings; a feed whose
// server answers 503) and checks the scrape: every family of the tables
// above with its type, the pool label on every series and the feed label on
// every per-feed one, values that match the feeds' Stats, and no promlint
// problem.
func TestCollectorLive(t *testing.T) {
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

	timings := wspoolprom.NewTimings("live", wspoolprom.TimingOpts{})
	pool, err := wspool.NewPool(wspool.WithTimings(timings.Observe),
		wspool.WithPingInterval(50*time.Millisecond), wspool.WithBackoff(20*time.Millisecond, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	seq, err := pool.Add(srv.URL("/prices"), func(context.Context, wspool.Message) error { return nil },
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
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pool.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(wspoolprom.NewCollector(pool, "live"), timings)

	// Wait until every optional series has a value to show.
	deadline := time.Now().Add(30 * time.Second)
	var mfs map[string]*dto.MetricFamily
	for {
		mfs = gather(t, reg)
		ready := value(mfs, "wspool_feed_rtt_seconds", "prices") > 0 &&
			value(mfs, "wspool_feed_messages_delivered_total", "prices") > 10 &&
			value(mfs, "wspool_feed_won_messages_total", "prices") > 0 &&
			value(mfs, "wspool_feed_standby_connected", "prices") == 1 &&
			has(mfs, "wspool_feed_last_error_timestamp_seconds", "down")
		for _, name := range timingKinds {
			ready = ready && mfs[name] != nil && mfs[name].GetMetric()[0].GetHistogram().GetSampleCount() > 0
		}
		if ready {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30s the feeds have not shown everything: prices %+v; families %v", seq.Stats(), slices.Sorted(maps.Keys(mfs)))
		}
		time.Sleep(20 * time.Millisecond)
	}

	types := familyTypes()
	for name, typ := range types {
		mf := mfs[name]
		if mf == nil {
			t.Errorf("no family %s", name)
			continue
		}
		if mf.GetType() != typ {
			t.Errorf("%s: type %v, want %v", name, mf.GetType(), typ)
		}
		for _, m := range mf.GetMetric() {
			if label(m, "pool") != "live" {
				t.Errorf("%s: series without pool=\"live\": %v", name, m.GetLabel())
			}
			if strings.HasPrefix(name, "wspool_feed_") && label(m, "feed") == "" {
				t.Errorf("%s: series without a feed label: %v", name, m.GetLabel())
			}
		}
	}
	for name := range mfs {
		if _, ok := types[name]; !ok {
			t.Errorf("family %s is in no table of this test", name)
		}
	}
	// Values in their units, matching Stats.
	if v := value(mfs, "wspool_feed_rtt_seconds", "prices"); v <= 0 || v >= 1 {
		t.Errorf("rtt %v, want seconds in (0, 1) on loopback", v)
	}
	if v := value(mfs, "wspool_feed_standby_connected", "prices"); v != 1 {
		t.Errorf("standby connected %v", v)
	}
	if v := value(mfs, "wspool_feed_state", "down", "state", "backing_off") +
		value(mfs, "wspool_feed_state", "down", "state", "connecting"); v != 1 {
		t.Errorf("down is neither backing off nor connecting")
	}
	if got, want := value(mfs, "wspool_feeds", "", "state", "connected"), 1.0; got != want {
		t.Errorf("wspool_feeds{state=connected} = %v, want %v", got, want)
	}
	if in, pin := value(mfs, "wspool_feed_messages_received_total", "prices"), value(mfs, "wspool_pool_messages_received_total", ""); pin < in {
		t.Errorf("pool received %v < feed's %v", pin, in)
	}

	body := gatherText(t, reg)
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// TestTwoPoolsOneRegistry: collectors of two pools register side by side
// under different pool names, and a totals-only collector exports the
// pool-wide families only.
func TestTwoPoolsOneRegistry(t *testing.T) {
	a, b := newIdlePool(t, "a1", "a2"), newIdlePool(t, "b1")
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(wspoolprom.NewCollector(a, "a"), wspoolprom.NewTotalsCollector(b, "b"),
		wspoolprom.NewTimings("a", wspoolprom.TimingOpts{}), wspoolprom.NewTimings("b", wspoolprom.TimingOpts{}))
	mfs := gather(t, reg)
	if got := value(mfs, "wspool_feeds", "", "pool", "a", "state", "idle"); got != 2 {
		t.Errorf("pool a idle feeds %v, want 2", got)
	}
	if got := value(mfs, "wspool_feeds", "", "pool", "b", "state", "idle"); got != 1 {
		t.Errorf("pool b idle feeds %v, want 1", got)
	}
	for _, m := range mfs["wspool_feed_connects_total"].GetMetric() {
		if label(m, "pool") != "a" {
			t.Errorf("per-feed series of the totals-only pool b: %v", m.GetLabel())
		}
	}
	if n := testutil.CollectAndCount(wspoolprom.NewTotalsCollector(b, "b")); n != 16 {
		t.Errorf("totals-only collector: %d series, want 16", n)
	}
}

// TestTimingsPerFeedForget: with PerFeed, Observe makes one series per feed
// and Forget deletes a feed's.
func TestTimingsPerFeedForget(t *testing.T) {
	tm := wspoolprom.NewTimings("p", wspoolprom.TimingOpts{PerFeed: true, Buckets: []float64{0.001, 0.1}})
	tm.Observe(wspool.Timing{Feed: "x", Kind: wspool.TimingHandler, D: time.Millisecond})
	tm.Observe(wspool.Timing{Feed: "y", Kind: wspool.TimingHandler, D: time.Second})
	tm.Observe(wspool.Timing{Feed: "y", Kind: wspool.TimingKind(200), D: time.Second}) // ignored
	if n := testutil.CollectAndCount(tm, "wspool_handler_duration_seconds"); n != 2 {
		t.Fatalf("%d handler histograms, want 2", n)
	}
	tm.Forget("x")
	if n := testutil.CollectAndCount(tm, "wspool_handler_duration_seconds"); n != 1 {
		t.Fatalf("%d handler histograms after Forget, want 1", n)
	}
}

func newIdlePool(t *testing.T, feeds ...string) *wspool.Pool {
	t.Helper()
	p, err := wspool.NewPool()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	for _, f := range feeds {
		if _, err := p.Add("ws://127.0.0.1:1/"+f, nil, wspool.WithName(f)); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func gather(t *testing.T, g prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		m[f.GetName()] = f
	}
	return m
}

func gatherText(t *testing.T, g prometheus.Gatherer) string {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, f := range fams {
		if _, err := expfmt.MetricFamilyToText(&b, f); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// find returns the series of family name with feed (if not "") and the
// given label pairs.
func find(mfs map[string]*dto.MetricFamily, name, feed string, pairs ...string) *dto.Metric {
	for _, m := range mfs[name].GetMetric() {
		if feed != "" && label(m, "feed") != feed {
			continue
		}
		ok := true
		for i := 0; i+1 < len(pairs); i += 2 {
			ok = ok && label(m, pairs[i]) == pairs[i+1]
		}
		if ok {
			return m
		}
	}
	return nil
}

func has(mfs map[string]*dto.MetricFamily, name, feed string, pairs ...string) bool {
	return find(mfs, name, feed, pairs...) != nil
}

func value(mfs map[string]*dto.MetricFamily, name, feed string, pairs ...string) float64 {
	m := find(mfs, name, feed, pairs...)
	switch {
	case m == nil:
		return -1
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	default:
		return m.GetGauge().GetValue()
	}
}

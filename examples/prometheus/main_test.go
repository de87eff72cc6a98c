package main

import (
	"bytes"
	"context"
	"io"
	"math"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

var (
	feedNames  = []string{"burst", "down", "flaky", "prices", "ticker"}
	stateNames = []string{"backing_off", "closed", "connected", "connecting", "idle"}
)

// families lists every family wspoolprom exports (its package documentation)
// and its type: the scrape must show each one.
var families = map[string]dto.MetricType{
	"wspool_feeds":                                 dto.MetricType_GAUGE,
	"wspool_pool_connects_total":                   dto.MetricType_COUNTER,
	"wspool_pool_disconnects_total":                dto.MetricType_COUNTER,
	"wspool_pool_connect_attempts_total":           dto.MetricType_COUNTER,
	"wspool_pool_messages_received_total":          dto.MetricType_COUNTER,
	"wspool_pool_received_bytes_total":             dto.MetricType_COUNTER,
	"wspool_pool_messages_sent_total":              dto.MetricType_COUNTER,
	"wspool_pool_sent_bytes_total":                 dto.MetricType_COUNTER,
	"wspool_pool_handler_errors_total":             dto.MetricType_COUNTER,
	"wspool_pool_dropped_messages_total":           dto.MetricType_COUNTER,
	"wspool_pool_send_failures_total":              dto.MetricType_COUNTER,
	"wspool_pool_admission_waiting":                dto.MetricType_GAUGE,
	"wspool_feed_state":                            dto.MetricType_GAUGE,
	"wspool_feed_connected":                        dto.MetricType_GAUGE,
	"wspool_feed_connected_since_seconds":          dto.MetricType_GAUGE,
	"wspool_feed_connects_total":                   dto.MetricType_COUNTER,
	"wspool_feed_disconnects_total":                dto.MetricType_COUNTER,
	"wspool_feed_connect_attempts_total":           dto.MetricType_COUNTER,
	"wspool_feed_last_error_timestamp_seconds":     dto.MetricType_GAUGE,
	"wspool_feed_messages_received_total":          dto.MetricType_COUNTER,
	"wspool_feed_received_bytes_total":             dto.MetricType_COUNTER,
	"wspool_feed_messages_sent_total":              dto.MetricType_COUNTER,
	"wspool_feed_sent_bytes_total":                 dto.MetricType_COUNTER,
	"wspool_feed_messages_delivered_total":         dto.MetricType_COUNTER,
	"wspool_feed_heartbeat_replies_total":          dto.MetricType_COUNTER,
	"wspool_feed_handler_errors_total":             dto.MetricType_COUNTER,
	"wspool_feed_callback_events_dropped_total":    dto.MetricType_COUNTER,
	"wspool_feed_connect_discarded_messages_total": dto.MetricType_COUNTER,
	"wspool_feed_dropped_messages_total":           dto.MetricType_COUNTER,
	"wspool_feed_queue_depth":                      dto.MetricType_GAUGE,
	"wspool_feed_queue_high_water":                 dto.MetricType_GAUGE,
	"wspool_feed_send_buffered":                    dto.MetricType_GAUGE,
	"wspool_feed_send_failures_total":              dto.MetricType_COUNTER,
	"wspool_feed_rotations_total":                  dto.MetricType_COUNTER,
	"wspool_feed_duplicates_dropped_total":         dto.MetricType_COUNTER,
	"wspool_feed_sequence_gaps_total":              dto.MetricType_COUNTER,
	"wspool_feed_sequence_gap_messages_total":      dto.MetricType_COUNTER,
	"wspool_feed_server_pings_total":               dto.MetricType_COUNTER,
	"wspool_feed_sequence_restarts_total":          dto.MetricType_COUNTER,
	"wspool_feed_rtt_seconds":                      dto.MetricType_GAUGE,
	"wspool_feed_smoothed_rtt_seconds":             dto.MetricType_GAUGE,
	"wspool_feed_won_messages_total":               dto.MetricType_COUNTER,
	"wspool_feed_admission_waits_total":            dto.MetricType_COUNTER,
	"wspool_feed_admission_wait_seconds_total":     dto.MetricType_COUNTER,
	"wspool_feed_admission_waiting":                dto.MetricType_GAUGE,
	"wspool_feed_standby_connected":                dto.MetricType_GAUGE,
	"wspool_feed_standby_connects_total":           dto.MetricType_COUNTER,
	"wspool_feed_standby_disconnects_total":        dto.MetricType_COUNTER,
	"wspool_feed_standby_messages_received_total":  dto.MetricType_COUNTER,
	"wspool_feed_standby_won_messages_total":       dto.MetricType_COUNTER,
	"wspool_handshake_duration_seconds":            dto.MetricType_HISTOGRAM,
	"wspool_on_connect_duration_seconds":           dto.MetricType_HISTOGRAM,
	"wspool_first_message_duration_seconds":        dto.MetricType_HISTOGRAM,
	"wspool_handler_duration_seconds":              dto.MetricType_HISTOGRAM,
	"wspool_queue_wait_duration_seconds":           dto.MetricType_HISTOGRAM,
}

// partial lists the per-feed families exported only for some feeds: after a
// pong, while connected, after an error, with a standby connection.
var partial = []string{
	"wspool_feed_connected_since_seconds", "wspool_feed_rtt_seconds", "wspool_feed_smoothed_rtt_seconds",
	"wspool_feed_last_error_timestamp_seconds",
	"wspool_feed_standby_connected", "wspool_feed_standby_connects_total", "wspool_feed_standby_disconnects_total",
	"wspool_feed_standby_messages_received_total", "wspool_feed_standby_won_messages_total",
}

// syncBuffer collects run's log for the failure message.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startRun runs the program in-process on a free port and returns the URL of
// its /metrics; it is stopped (and must return nil) when the test ends.
func startRun(t *testing.T, cfg config) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logw := &syncBuffer{}
	urls := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, logw, func(u string) { urls <- u }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("run did not return within 30s of its context ending")
		}
		if t.Failed() {
			t.Logf("log:\n%s", logw.String())
		}
	})
	select {
	case u := <-urls:
		return u
	case err := <-done:
		t.Fatalf("run ended before serving: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("metrics not served within 30s")
	}
	return ""
}

func scrape(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("Content-Type %q, want the text format", ct)
	}
	return body
}

func parse(t *testing.T, body []byte) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("not the Prometheus text format: %v\n%s", err, body)
	}
	return mfs
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	}
	return math.NaN()
}

// series is one scrape's wspool gauges and counters: family name -> feed (or
// state, for wspool_feeds; feed/state for wspool_feed_state; "" for the
// other pool-wide families) -> value.
type series map[string]map[string]float64

func wspoolSeries(mfs map[string]*dto.MetricFamily) series {
	s := series{}
	for name, mf := range mfs {
		if !strings.HasPrefix(name, "wspool_") || mf.GetType() == dto.MetricType_HISTOGRAM {
			continue // the timing histograms are checked on their own
		}
		s[name] = map[string]float64{}
		for _, m := range mf.GetMetric() {
			key := label(m, "feed")
			switch name {
			case "wspool_feeds":
				key = label(m, "state")
			case "wspool_feed_state":
				key += "/" + label(m, "state")
			}
			s[name][key] = value(m)
		}
	}
	return s
}

// has reports whether family name has a value for key, and the value.
func (s series) get(name, key string) (float64, bool) {
	v, ok := s[name][key]
	return v, ok
}

// unmet lists the evidence the running program is meant to show that the
// scrape does not show yet.
func (s series) unmet() []string {
	var missing []string
	want := func(ok bool, what string) {
		if !ok {
			missing = append(missing, what)
		}
	}
	at := func(name, feed string) float64 { return s[name][feed] }
	want(at("wspool_feed_connects_total", "flaky") >= 2 && at("wspool_feed_disconnects_total", "flaky") >= 1, "flaky reconnected")
	want(at("wspool_feed_handler_errors_total", "ticker") >= 1, "ticker handler errors")
	want(at("wspool_feed_messages_sent_total", "ticker") >= 2 && at("wspool_feed_sent_bytes_total", "ticker") > 0, "ticker sent subscribe and orders")
	want(at("wspool_feed_dropped_messages_total", "burst") >= 1 && at("wspool_feed_queue_high_water", "burst") == 16, "burst dropping with a full queue")
	want(at("wspool_feed_connect_attempts_total", "down") >= 2, "down retried")
	want(at("wspool_feed_send_failures_total", "down") >= 1 && at("wspool_feed_send_buffered", "down") >= 1, "down buffering and failing sends")
	want(at("wspool_feed_state", "down/backing_off") == 1, "down backing off")
	for _, f := range []string{"ticker", "flaky", "burst", "prices"} {
		_, ok := s.get("wspool_feed_rtt_seconds", f)
		want(ok, f+" rtt measured")
	}
	want(at("wspool_feed_standby_connected", "prices") == 1, "prices standby connected")
	want(at("wspool_feed_sequence_gaps_total", "prices") >= 1, "prices gap seen")
	return missing
}

// TestMetrics runs the program, scrapes /metrics until every feed shows what
// it is there to show, and checks the exposition: families, types, help,
// labels, values consistent with each other and with the feeds' behaviour,
// counters that only go up, and no promlint problem.
func TestMetrics(t *testing.T) {
	start := time.Now()
	url := startRun(t, config{addr: "127.0.0.1:0", ping: 100 * time.Millisecond, dropEvery: 500 * time.Millisecond})

	first := wspoolSeries(parse(t, scrape(t, url)))
	var (
		body []byte
		mfs  map[string]*dto.MetricFamily
		s    series
	)
	deadline := time.Now().Add(60 * time.Second)
	for {
		body = scrape(t, url)
		mfs = parse(t, body)
		s = wspoolSeries(mfs)
		missing := s.unmet()
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 60s, the metrics still do not show: %s\n%s", strings.Join(missing, "; "), body)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Lint: names, units, _total on counters, help strings.
	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}

	// Every family, with its type, help and labels: what curl shows.
	for name, typ := range families {
		mf, ok := mfs[name]
		if !ok {
			t.Errorf("no %s", name)
			continue
		}
		if mf.GetType() != typ {
			t.Errorf("%s: type %v, want %v", name, mf.GetType(), typ)
		}
		if mf.GetHelp() == "" {
			t.Errorf("%s: no help", name)
		}
		var wantLabels []string
		switch {
		case name == "wspool_feeds":
			wantLabels = []string{"pool", "state"}
		case name == "wspool_feed_state":
			wantLabels = []string{"feed", "pool", "state"}
		case strings.HasPrefix(name, "wspool_feed_standby_"):
			wantLabels = []string{"feed", "pool", "standby"}
		case strings.HasPrefix(name, "wspool_feed_"):
			wantLabels = []string{"feed", "pool"}
		case typ == dto.MetricType_HISTOGRAM, strings.HasPrefix(name, "wspool_pool_"):
			wantLabels = []string{"pool"}
		}
		feeds := map[string]bool{}
		for _, m := range mf.GetMetric() {
			var got []string
			for _, l := range m.GetLabel() {
				got = append(got, l.GetName())
			}
			sort.Strings(got)
			if !slices.Equal(got, wantLabels) {
				t.Errorf("%s: labels %v, want %v", name, got, wantLabels)
			}
			if label(m, "pool") != "example" {
				t.Errorf("%s: pool label %q, want example", name, label(m, "pool"))
			}
			if typ == dto.MetricType_HISTOGRAM && m.GetHistogram().GetSampleCount() == 0 {
				t.Errorf("%s: no observations", name)
			}
			feeds[label(m, "feed")] = true
		}
		if !strings.HasPrefix(name, "wspool_feed_") || slices.Contains(partial, name) {
			continue
		}
		var got []string
		for f := range feeds {
			got = append(got, f)
		}
		sort.Strings(got)
		if !slices.Equal(got, feedNames) {
			t.Errorf("%s for feeds %v, want %v", name, got, feedNames)
		}
	}
	for _, name := range []string{"wspool_feed_rtt_seconds", "wspool_feed_smoothed_rtt_seconds"} {
		if _, ok := s.get(name, "down"); ok {
			t.Errorf("%s for down, which never connected", name)
		}
	}
	if mf := mfs["wspool_feeds"]; mf == nil || len(mf.GetMetric()) != len(stateNames) {
		t.Errorf("wspool_feeds: want one series per state: %v", mf)
	}
	for name, mf := range mfs {
		if _, ok := families[name]; !ok && strings.HasPrefix(name, "wspool_") {
			t.Errorf("unexpected family %s (%v)", name, mf.GetType())
		}
	}

	// States: one per feed, matching connected, counted by wspool_feeds.
	counts := map[string]float64{}
	for _, f := range feedNames {
		var sum float64
		for _, st := range stateNames {
			v, ok := s.get("wspool_feed_state", f+"/"+st)
			if !ok || (v != 0 && v != 1) {
				t.Errorf("wspool_feed_state{feed=%q,state=%q} = %v (present %v), want 0 or 1", f, st, v, ok)
			}
			sum += v
			counts[st] += v
		}
		if sum != 1 {
			t.Errorf("feed %s is in %v states at once", f, sum)
		}
		if c, st := s["wspool_feed_connected"][f], s["wspool_feed_state"][f+"/connected"]; c != st {
			t.Errorf("feed %s: connected %v but state connected %v", f, c, st)
		}
	}
	for _, st := range stateNames {
		if got := s["wspool_feeds"][st]; got != counts[st] {
			t.Errorf("wspool_feeds{state=%q} = %v, but %v feeds are in it", st, got, counts[st])
		}
	}

	// Values in their units.
	for _, f := range []string{"ticker", "flaky", "burst", "prices"} {
		for _, name := range []string{"wspool_feed_rtt_seconds", "wspool_feed_smoothed_rtt_seconds"} {
			if v := s[name][f]; v <= 0 || v >= 1 { // loopback: microseconds
				t.Errorf("%s{feed=%q} = %v, want seconds in (0, 1)", name, f, v)
			}
		}
		if v, ok := s.get("wspool_feed_connected_since_seconds", f); ok {
			since := time.Unix(0, int64(v*1e9))
			if since.Before(start.Add(-time.Second)) || since.After(time.Now().Add(time.Second)) {
				t.Errorf("%s connected since %v: not Unix seconds during the test (started %v)", f, since, start)
			}
		}
		if b, m := s["wspool_feed_received_bytes_total"][f], s["wspool_feed_messages_received_total"][f]; m < 1 || b < m {
			t.Errorf("%s: %v bytes in %v messages", f, b, m)
		}
	}
	if v := s["wspool_feed_connects_total"]["down"]; v != 0 {
		t.Errorf("down connected %v times", v)
	}

	// Counters never go down between scrapes.
	for name, typ := range families {
		if typ != dto.MetricType_COUNTER {
			continue
		}
		for f, before := range first[name] {
			if after := s[name][f]; after < before {
				t.Errorf("%s{feed=%q} went down from %v to %v", name, f, before, after)
			}
		}
	}
}

// TestCollectorIdle checks the exact exposition for a feed that never ran,
// and the Collector's consistency under a pedantic registry.

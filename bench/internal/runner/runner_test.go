package runner

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/bench/internal/firehose"
	"github.com/wspool/wspool/internal/wstest"
)

var modes = []string{ModeWspool, ModeRaw}

// receiveModes are the clients StartReceiver knows, reference clients included.
var receiveModes = []string{ModeWspool, ModeRaw, ModeGws, ModeFrames}

func startServer(tb testing.TB, cfg firehose.Config) *firehose.Server {
	tb.Helper()
	s, err := firehose.Start("127.0.0.1:0", cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func testCtx(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}

// BenchmarkThroughput measures messages received from an in-process firehose
// server; one op is one message. The server shares the process (and its CPU),
// so wsbench's multi-process numbers are the ones to quote; this is for
// profiling (-cpuprofile, -memprofile) and quick comparisons.
func BenchmarkThroughput(b *testing.B) {
	srv := startServer(b, firehose.Config{})
	for _, feeds := range []int{1, 16} {
		for _, size := range []int{64, 4096, 16 << 20} {
			if size > 4096 && feeds > 1 {
				continue
			}
			for _, mode := range receiveModes {
				b.Run(fmt.Sprintf("feeds=%d/size=%d/%s", feeds, size, mode), func(b *testing.B) {
					ctx := testCtx(b, 5*time.Minute)
					u := WithQuery(srv.URL(), "size", fmt.Sprint(size))
					r, err := StartReceiver(ctx, mode, u, feeds, Tuning{})
					if err != nil {
						b.Fatal(err)
					}
					defer r.Close()
					if err := r.WaitAll(ctx, 10*time.Second); err != nil {
						b.Fatal(err)
					}
					b.ReportAllocs()
					b.ResetTimer()
					target := r.Total() + int64(b.N)
					deadline := time.Now().Add(2 * time.Minute)
					for r.Total() < target {
						if time.Now().After(deadline) {
							b.Fatal("timed out")
						}
						time.Sleep(time.Millisecond)
					}
					b.StopTimer()
					b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
				})
			}
		}
	}
}

// BenchmarkFirstBigMessage measures one fresh connection receiving one
// 16 MiB message: dial, read, close, with every buffer pool emptied (two
// GCs, outside the timer) before each. One op is one connection.
func BenchmarkFirstBigMessage(b *testing.B) {
	srv := startServer(b, firehose.Config{})
	u := WithQuery(srv.URL(), "size", fmt.Sprint(16<<20), "count", "1")
	for _, mode := range receiveModes {
		b.Run(mode, func(b *testing.B) {
			ctx := testCtx(b, 5*time.Minute)
			b.ReportAllocs()
			for range b.N {
				b.StopTimer()
				runtime.GC()
				runtime.GC()
				b.StartTimer()
				r, err := StartReceiver(ctx, mode, u, 1, Tuning{})
				if err != nil {
					b.Fatal(err)
				}
				if err := r.WaitAll(ctx, 10*time.Second); err != nil {
					b.Fatal(err)
				}
				r.Close()
			}
		})
	}
}

// BenchmarkSend measures Send on one feed to an in-process echo server; one
// op is one message sent (and echoed back).
func BenchmarkSend(b *testing.B) {
	srv := startServer(b, firehose.Config{Mode: firehose.ModeEcho})
	for _, mode := range modes {
		b.Run(mode, func(b *testing.B) {
			ctx := testCtx(b, 5*time.Minute)
			s, err := newSender(ctx, mode, srv.URL(), 0)
			if err != nil {
				b.Fatal(err)
			}
			defer s.close()
			payload := make([]byte, 64)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := s.send(ctx, payload); err != nil {
					b.Fatal(err)
				}
			}
			deadline := time.Now().Add(time.Minute)
			for s.echoes.Load() < int64(b.N) {
				if time.Now().After(deadline) {
					b.Fatal("echoes missing")
				}
				time.Sleep(100 * time.Microsecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkConnect measures connecting feeds to an in-process idle server;
// one op is one feed connected (and kept open until the end).
func BenchmarkConnect(b *testing.B) {
	srv := startServer(b, firehose.Config{Mode: firehose.ModeIdle})
	for _, mode := range modes {
		b.Run(mode, func(b *testing.B) {
			ctx := testCtx(b, 5*time.Minute)
			b.ReportAllocs()
			b.ResetTimer()
			res, err := RunIdle(ctx, IdleConfig{Mode: mode, URL: srv.URL(), Feeds: b.N, ConnectTimeout: 2 * time.Minute})
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(res.HeapPerFeed, "heapB/feed")
		})
	}
}

func TestThroughputAndIdleAndSend(t *testing.T) {
	srv := startServer(t, firehose.Config{})
	ctx := testCtx(t, time.Minute)
	for _, mode := range modes {
		tr, err := RunThroughput(ctx, ThroughputConfig{Mode: mode, URL: srv.URL(), Feeds: 2, Size: 64, Warmup: 10 * time.Millisecond, Window: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if tr.Msgs <= 0 || tr.MsgsPerSec <= 0 || tr.CPUSeconds < 0 {
			t.Fatalf("%+v", tr)
		}
		ir, err := RunIdle(ctx, IdleConfig{Mode: mode, URL: srv.URL(), Feeds: 20, Window: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if ir.Connected != 20 || ir.After.Goroutines < 20 {
			t.Fatalf("%+v", ir)
		}
		sr, err := RunSend(ctx, SendConfig{Mode: mode, URL: srv.URL(), Size: 64, Warmup: 10 * time.Millisecond, Window: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if sr.Sent <= 0 || sr.Echoed <= 0 || sr.Lost != 0 {
			t.Fatalf("%+v", sr)
		}
	}
}

// TestReferenceClients runs gws and the gobwas frame loop through the
// throughput (small and 1 MiB messages) and idle runs.
func TestReferenceClients(t *testing.T) {
	srv := startServer(t, firehose.Config{})
	ctx := testCtx(t, time.Minute)
	for _, mode := range []string{ModeGws, ModeFrames} {
		for _, size := range []int{64, 1 << 20} {
			tr, err := RunThroughput(ctx, ThroughputConfig{Mode: mode, URL: srv.URL(), Feeds: 2, Size: size, Warmup: 10 * time.Millisecond, Window: 100 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			if tr.Msgs <= 0 || tr.FirstBytes == 0 {
				t.Fatalf("%s: %+v", mode, tr)
			}
		}
		ir, err := RunIdle(ctx, IdleConfig{Mode: mode, URL: srv.URL(), Feeds: 20, Window: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if ir.Connected != 20 || ir.After.Goroutines < 20 {
			t.Fatalf("%s: %+v", mode, ir)
		}
	}
}

func TestRecovery(t *testing.T) {
	srv, err := firehose.Start("127.0.0.1:0", firehose.Config{Mode: firehose.ModeIdle})
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr()
	t.Cleanup(func() { srv.Close() })
	ctx := testCtx(t, time.Minute)
	pr, pw := io.Pipe()
	type out struct {
		res RecoveryResult
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := RunRecovery(ctx, RecoveryConfig{URL: srv.URL(), Feeds: 50, Poll: 10 * time.Millisecond, Timeout: 50 * time.Second, Events: pw})
		pw.Close()
		done <- out{res, err}
	}()
	sc := bufio.NewScanner(pr)
	if !sc.Scan() || !strings.HasPrefix(sc.Text(), "UP ") {
		t.Fatalf("want UP, got %q", sc.Text())
	}
	srv.Close()
	if !sc.Scan() || !strings.HasPrefix(sc.Text(), "DOWN ") {
		t.Fatalf("want DOWN, got %q", sc.Text())
	}
	time.Sleep(300 * time.Millisecond)
	srv2, err := firehose.Start(addr, firehose.Config{Mode: firehose.ModeIdle})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv2.Close() })
	go io.Copy(io.Discard, pr)
	o := <-done
	if o.err != nil {
		t.Fatal(o.err)
	}
	r := o.res
	if r.LastReconnectAt < srv2.ListenAt().UnixNano() || r.FirstReconnectAt > r.LastReconnectAt || r.AllSeenAt < r.LastReconnectAt {
		t.Fatalf("times: %+v (listen %d)", r, srv2.ListenAt().UnixNano())
	}
	// A feed can see its 101 before the server has counted the upgrade:
	// wait (bounded) for the count.
	var st firehose.Stats
	_ = wstest.WaitFor(context.Background(), 5*time.Second, func() bool {
		st = srv2.Stats()
		return st.Upgrades >= 50
	}) // on timeout the check below reports the counters
	if st.Upgrades != 50 || st.PeakInFlight > wspool.DefaultMaxConcurrentDials {
		t.Fatalf("server: %+v", st)
	}
}

// BenchmarkPoolStats measures Pool.Stats on a pool of 10,000 feeds (not
// running: the cost is the snapshot, not the network). The recovery
// benchmark polls it; the wsbench table reports it at 10,000 live feeds.
func BenchmarkPoolStats(b *testing.B) {
	p, err := wspool.NewPool()
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	for i := range 10000 {
		if _, err := p.Add("ws://127.0.0.1:1/", nil, wspool.WithName(fmt.Sprintf("f%05d", i))); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if st := p.Stats(); st.Total != 10000 {
			b.Fatal(st.Total)
		}
	}
}

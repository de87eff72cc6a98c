//go:build linux

package interop

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/rawws"
)

// BenchmarkCompressionTrades: one wspool feed reads a stream of trades (the
// peers' trade(), ~93 bytes each) from a local gorilla server with
// EnableCompression, with WithCompression off and on, one trade per message
// and ten per message. The server writes frames encoded up front (deflated
// at level 1 like gorilla's default, each message on its own) in large
// writes, so the process CPU is mostly the client's read path: inflate,
// UTF-8 check, delivery to a handler that only counts.
// Reported per message: wire-B/msg (bytes the server wrote, frame headers
// included) and cpu-ns/msg (user+system CPU of the whole process, from
// getrusage). Quote medians of several runs (-count 6) and the on/off
// ratios, never one timing.
//
//	cd interop && go test -run '^$' -bench CompressionTrades -count 6
func BenchmarkCompressionTrades(b *testing.B) {
	for _, batch := range []int{1, 10} {
		msgs := tradeMessages(0, 10000, batch)
		srv := newTradeServer(b, msgs)
		for _, compress := range []bool{false, true} {
			name := "batch=" + strconv.Itoa(batch) + "/compression=off"
			if compress {
				name = "batch=" + strconv.Itoa(batch) + "/compression=on"
			}
			b.Run(name, func(b *testing.B) { benchTrades(b, srv, compress) })
		}
	}
}

func benchTrades(b *testing.B, srv *tradeServer, compress bool) {
	var got atomic.Int64
	done := make(chan struct{})
	want := int64(b.N)
	q := "?c=0&n=" + strconv.Itoa(b.N)
	if compress {
		q = "?c=1&n=" + strconv.Itoa(b.N)
	}
	c, err := wspool.NewClient(srv.url+q, func(context.Context, wspool.Message) error {
		if got.Add(1) == want {
			close(done)
		}
		return nil
	}, wspool.WithCompression(compress), wspool.WithPingInterval(0))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-ran; err != nil {
			b.Errorf("Run: %v", err)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for c.State() != wspool.StateConnected {
		if time.Now().After(deadline) {
			b.Fatal("not connected after 10s")
		}
		time.Sleep(time.Millisecond)
	}
	wire0 := srv.written.Load()
	cpu0 := cpuTime()
	b.ResetTimer()
	if err := c.Send(ctx, wspool.TextMessage, []byte("go")); err != nil {
		b.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		b.Fatalf("%d of %d messages after 2 minutes", got.Load(), want)
	}
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/msg")
	b.ReportMetric(float64(srv.written.Load()-wire0)/float64(b.N), "wire-B/msg")
}

// cpuTime is the process's user+system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// tradeServer is a gorilla server with compression enabled. On a client's
// first message it writes n (from ?n=) messages of its stream, cycling,
// compressed if the client offered compression (?c=1 says so). The frames
// are encoded once up front and written in large writes, so that the
// server's share of the process CPU is small and the rest is the client's.
type tradeServer struct {
	url     string
	written atomic.Int64 // bytes written to all connections, handshakes included
	wg      sync.WaitGroup
}

// encodedStream is a stream's frames back to back and where each ends.
type encodedStream struct {
	b    []byte
	ends []int
}

func encodeStream(msgs []string, compress bool) encodedStream {
	var s encodedStream
	for _, m := range msgs {
		f := rawws.Text(m)
		if compress {
			f.RSV, f.Payload = rawws.RSV1, rawws.Deflate(f.Payload)
		}
		s.b = f.Append(s.b)
		s.ends = append(s.ends, len(s.b))
	}
	return s
}

// write writes n messages of the stream to w, cycling.
func (s encodedStream) write(w net.Conn, n int) error {
	for ; n >= len(s.ends); n -= len(s.ends) {
		if _, err := w.Write(s.b); err != nil {
			return err
		}
	}
	if n > 0 {
		_, err := w.Write(s.b[:s.ends[n-1]])
		return err
	}
	return nil
}

func newTradeServer(tb testing.TB, msgs []string) *tradeServer {
	tb.Helper()
	plain, deflated := encodeStream(msgs, false), encodeStream(msgs, true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &tradeServer{url: "ws://" + ln.Addr().String() + "/trades"}
	up := websocket.Upgrader{EnableCompression: true}
	hs := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.wg.Add(1)
			defer s.wg.Done()
			n, _ := strconv.Atoi(r.URL.Query().Get("n"))
			stream := plain
			if r.URL.Query().Get("c") == "1" {
				stream = deflated
			}
			c, err := up.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			defer c.Close()
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
			if stream.write(c.NetConn(), n) != nil {
				return
			}
			// Wait for the client's close.
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					return
				}
			}
		}),
	}
	go func() { _ = hs.Serve(countingListener{ln, &s.written}) }()
	tb.Cleanup(func() {
		_ = hs.Close()
		s.wg.Wait()
	})
	return s
}

// countingListener counts the bytes written to the connections it accepts.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{c, l.n}, nil
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

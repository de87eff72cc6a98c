package firehose

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/wstest"
)

func start(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := Start("127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func dial(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// pingAndClose sends a ping and a close frame, then reads until the server's
// close answer; the pong must arrive before it. Data messages are discarded.
func pingAndClose(t *testing.T, c *websocket.Conn) {
	t.Helper()
	var pong string
	c.SetPongHandler(func(s string) error { pong = s; return nil })
	if err := c.WriteControl(websocket.PingMessage, []byte("p1"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
	if err := c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for range 10_000_000 {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		if !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
			t.Fatalf("want close 1000, got %v", err)
		}
		if pong != "p1" {
			t.Fatalf("pong %q before the close", pong)
		}
		return
	}
	t.Fatal("no close")
}

func TestFirehoseCount(t *testing.T) {
	for _, size := range []int{1, 64, 125, 126, 4096, 65535, 65536, 70000} {
		s := start(t, Config{Size: size, Count: 0})
		const n = 300
		c := dial(t, s.URL()+"?count=300&size="+itoa(size))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for i := range n {
			typ, b, err := c.ReadMessage()
			if err != nil {
				t.Fatalf("size %d message %d: %v", size, i, err)
			}
			if typ != websocket.TextMessage || len(b) != size {
				t.Fatalf("size %d message %d: type %d len %d", size, i, typ, len(b))
			}
			if size > 0 && (b[0] != 'a' || b[len(b)-1] != 'a'+byte((len(b)-1)%26)) {
				t.Fatalf("size %d: bad payload", size)
			}
		}
		pingAndClose(t, c) // after the stream: no more data, pings answered
		if got := s.Stats().MsgsOut; got != n {
			t.Fatalf("size %d: server says %d messages, want %d", size, got, n)
		}
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func TestFirehoseUnlimitedAnswersPings(t *testing.T) {
	s := start(t, Config{Size: 64})
	c := dial(t, s.URL())
	pingAndClose(t, c)
	if s.Stats().MsgsOut == 0 {
		t.Fatal("nothing sent")
	}
}

func TestFirehoseRate(t *testing.T) {
	s := start(t, Config{Size: 16, Rate: 2000})
	c := dial(t, s.URL())
	deadline := time.Now().Add(500 * time.Millisecond)
	c.SetReadDeadline(deadline)
	n := 0
	for range 1_000_000 {
		if _, _, err := c.ReadMessage(); err != nil {
			break
		}
		n++
	}
	// 2000/s for 0.5 s is 1000; allow a wide margin on a noisy machine.
	if n < 300 || n > 1500 {
		t.Fatalf("got %d messages in 0.5 s at 2000/s", n)
	}
}

func TestIdle(t *testing.T) {
	s := start(t, Config{Mode: ModeIdle})
	c := dial(t, s.URL())
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, _, err := c.ReadMessage(); err == nil {
		t.Fatal("idle server sent a message")
	}
	c2 := dial(t, s.URL())
	pingAndClose(t, c2)
	if s.Stats().Pings != 1 {
		t.Fatalf("pings %d", s.Stats().Pings)
	}
}

func TestEcho(t *testing.T) {
	s := start(t, Config{Mode: ModeFirehose})
	c := dial(t, s.URL()+"?mode=echo")
	var want [][]byte
	for i := range 50 {
		m := bytes.Repeat([]byte{byte('a' + i%26)}, i*97)
		want = append(want, m)
		if err := c.WriteMessage(websocket.BinaryMessage, m); err != nil {
			t.Fatal(err)
		}
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i, m := range want {
		typ, b, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if typ != websocket.BinaryMessage || !bytes.Equal(b, m) {
			t.Fatalf("echo %d differs", i)
		}
	}
	// A fragmented message comes back whole.
	w, _ := c.NextWriter(websocket.TextMessage)
	w.Write([]byte("hello "))
	w.Write([]byte(strings.Repeat("x", 5000)))
	w.Close()
	_, b, err := c.ReadMessage()
	if err != nil || len(b) != 5006 {
		t.Fatalf("fragmented echo: %d %v", len(b), err)
	}
	pingAndClose(t, c)
}

func TestHandshakesInFlightAndStats(t *testing.T) {
	s := start(t, Config{Mode: ModeIdle, HandshakeDelay: 200 * time.Millisecond})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			c, _, err := websocket.DefaultDialer.Dial(s.URL(), nil)
			if err != nil {
				t.Error(err)
				return
			}
			c.Close()
		})
	}
	wg.Wait()
	// A client can see the 101 before the server has counted its upgrade:
	// wait (bounded) for the server's counters to settle.
	var st Stats
	_ = wstest.WaitFor(context.Background(), 5*time.Second, func() bool {
		st = getStats(t, s)
		return st.Upgrades == 8 && st.InFlight == 0
	}) // on timeout the check below reports the counters
	if st.Upgrades != 8 || st.PeakInFlight < 2 || st.PeakInFlight > 8 || st.InFlight != 0 {
		t.Fatalf("stats %+v", st)
	}
	if st.ListenAt == 0 || st.LastUpgradeAt < st.ListenAt {
		t.Fatalf("times %+v", st)
	}
}

func TestBadRequests(t *testing.T) {
	if _, err := Listen("0.0.0.0:0", Config{}); err == nil {
		t.Fatal("non-loopback address accepted")
	}
	if _, err := Listen("127.0.0.1:0", Config{Mode: "nope"}); err == nil {
		t.Fatal("bad mode accepted")
	}
	s := start(t, Config{})
	if _, _, err := websocket.DefaultDialer.Dial(s.URL()+"?mode=nope", nil); err == nil {
		t.Fatal("bad query mode accepted")
	}
	resp, err := http.Get("http://" + s.Addr() + "/nothing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatal(resp.Status)
	}
}

func TestCloseStopsStreams(t *testing.T) {
	s, err := Start("127.0.0.1:0", Config{Size: 1024})
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, s.URL())
	if _, _, err := c.ReadMessage(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs")
	}
}

func getStats(t *testing.T, s *Server) Stats {
	t.Helper()
	resp, err := http.Get("http://" + s.Addr() + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestStampedMessagesCarryTheirSendTime(t *testing.T) {
	s := start(t, Config{Size: 64, Rate: 1000, Stamp: true})
	before := time.Now().UnixNano()
	c := dial(t, s.URL())
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	prev := int64(0)
	for range 20 {
		_, m, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		ns, ok := ParseStamp(m)
		if !ok || len(m) != 64 {
			t.Fatalf("message %q has no stamp", m)
		}
		if now := time.Now().UnixNano(); ns < before || ns > now || ns < prev {
			t.Fatalf("stamp %d outside [%d, %d] or before the previous one %d", ns, before, now, prev)
		}
		prev = ns
	}
}

func TestStampRoundTrip(t *testing.T) {
	b := make([]byte, StampLen)
	for _, ns := range []int64{0, 1, 0x0123456789abcdef, time.Now().UnixNano()} {
		putStamp(b, ns)
		if got, ok := ParseStamp(b); !ok || got != ns {
			t.Errorf("%d: got %d %v", ns, got, ok)
		}
	}
	if _, ok := ParseStamp([]byte("0123456789abcdeX")); ok {
		t.Error("a non-hex stamp parsed")
	}
}

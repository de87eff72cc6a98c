//go:build linux

package interop

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wspool/wspool"
)

// permessage-deflate (RFC 7692) against real peers: wspool with
// WithCompression(true) negotiates with Python websockets and Node ws,
// messages of every kind flow both ways, and a recording TCP proxy (tap)
// between them shows what was compressed and how many bytes it saved.

// TestCompressionPython runs the compression scenario against Python
// websockets with its default permessage-deflate settings.
func TestCompressionPython(t *testing.T) {
	py, version := pythonWithWebsockets(t)
	t.Logf("peer: Python websockets %s (%s)", version, py)
	script := peerScript(t, "python_ws_server.py")
	runCompressionScenario(t, func(t testing.TB, port int) *proc {
		cmd := exec.Command(py, script, "--port", strconv.Itoa(port), "--ping-interval", "20", "--ping-timeout", "20", "--max-size", strconv.Itoa(16<<20))
		return startProc(t, "python websockets server", cmd, printed("READY"))
	}, nil)
}

// TestCompressionNode runs the compression scenario against Node ws
// (perMessageDeflate with threshold 0, so that small messages are compressed
// too), and against a ws server whose 101 names server_no_context_takeover
// alone.
func TestCompressionNode(t *testing.T) {
	node, nodePath, version := nodeWithWs(t)
	t.Logf("peer: Node %s, ws %s", nodeVersion(node), version)
	script := peerScript(t, "node_ws_server.js")
	start := func(mode string) func(t testing.TB, port int) *proc {
		return func(t testing.TB, port int) *proc {
			cmd := exec.Command(node, script, "--port", strconv.Itoa(port), "--ping-interval-ms", "20000", "--deflate", mode)
			cmd.Env = append(os.Environ(), "NODE_PATH="+nodePath)
			return startProc(t, "node ws server", cmd, printed("READY"))
		}
	}
	runCompressionScenario(t, start("on"), func(t *testing.T) {
		// ws rewrites its 101 to name server_no_context_takeover alone
		// (RFC 7692 lets a server leave out client_no_context_takeover);
		// this once failed with a false "invalid 101 response".
		port := freePort(t)
		start("snct-only")(t, port)
		s := newCompSession(t, fmt.Sprintf("127.0.0.1:%d", port), true)
		const want = "permessage-deflate; server_no_context_takeover"
		if got := s.ext(); got != want {
			t.Errorf("peer answered %q, want %q", got, want)
		}
		s.bothWays()
		s.trades(1000, 10)
		s.stop()
		down, up := s.tap.parse(false), s.tap.parse(true)
		t.Logf("down: %v; up: %v", down, up)
		if down.ext != want {
			t.Errorf("101 on the wire names %q, want %q", down.ext, want)
		}
		if down.compressed != down.dataMsgs || up.compressed != up.dataMsgs || down.compressed == 0 || up.compressed == 0 {
			t.Errorf("not every message compressed: down %v; up %v", down, up)
		}
	})
}

// runCompressionScenario starts a peer with start and checks: the
// extension negotiated (as the peer reports it and as the 101 on the wire
// says), text JSON and binary messages both ways (larger than the 32 KiB
// window and many small ones, each byte checked: echoes here, a SHA-256 at
// the peer), and the bytes on the wire for a stream of 10,000 trades with
// compression off and on, one trade per message and ten per message. extra,
// if set, runs last.
func runCompressionScenario(t *testing.T, start func(t testing.TB, port int) *proc, extra func(*testing.T)) {
	port := freePort(t)
	start(t, port)
	target := fmt.Sprintf("127.0.0.1:%d", port)

	t.Run("negotiated and both ways", func(t *testing.T) {
		s := newCompSession(t, target, true)
		ext := s.ext()
		t.Logf("peer's 101 names %q", ext)
		if !strings.HasPrefix(ext, "permessage-deflate") || !strings.Contains(ext, "server_no_context_takeover") {
			t.Errorf("peer negotiated %q, want permessage-deflate with server_no_context_takeover", ext)
		}
		s.bothWays()
		s.trades(10000, 1)
		s.stop()
		down, up := s.tap.parse(false), s.tap.parse(true)
		t.Logf("down: %v; up: %v", down, up)
		if down.ext != ext {
			t.Errorf("101 on the wire names %q, the peer says %q", down.ext, ext)
		}
		if down.compressed != down.dataMsgs || down.dataMsgs < 10000 {
			t.Errorf("down: %v; want every message compressed", down)
		}
		if up.compressed != up.dataMsgs || up.dataMsgs < 300 {
			t.Errorf("up: %v; want every message compressed", up)
		}
	})

	t.Run("off: nothing negotiated or compressed", func(t *testing.T) {
		s := newCompSession(t, target, false)
		if ext := s.ext(); ext != "" {
			t.Errorf("peer negotiated %q without an offer", ext)
		}
		s.trades(100, 1)
		s.stop()
		down, up := s.tap.parse(false), s.tap.parse(true)
		if down.ext != "" || down.compressed != 0 || up.compressed != 0 {
			t.Errorf("compression off, yet down: ext %q, %v; up: %v", down.ext, down, up)
		}
	})

	t.Run("wire bytes", func(t *testing.T) {
		const n = 10000
		for _, batch := range []int{1, 10} {
			var off, on [2]int64 // up, down
			for _, compress := range []bool{false, true} {
				s := newCompSession(t, target, compress)
				s.trades(n, batch)
				s.sendTrades(1000, 10)
				s.checkDigest()
				s.stop()
				up, down := s.tap.bytesForwarded()
				if compress {
					on = [2]int64{up, down}
				} else {
					off = [2]int64{up, down}
				}
			}
			msgs := (n + batch - 1) / batch
			downRatio := float64(on[1]) / float64(off[1])
			upRatio := float64(on[0]) / float64(off[0])
			t.Logf("%d trades, %d per message: down %d -> %d bytes (%.1f -> %.1f per message, ratio %.2f); up (100 messages of 10 trades) %d -> %d bytes (ratio %.2f)",
				n, batch, off[1], on[1], float64(off[1])/float64(msgs), float64(on[1])/float64(msgs), downRatio, off[0], on[0], upRatio)
			// Each message is compressed on its own (no context takeover):
			// one ~100-byte trade shrinks a little, ten of them a lot.
			if on[1] >= off[1] {
				t.Errorf("batch %d: compressed stream took %d bytes, uncompressed %d", batch, on[1], off[1])
			}
			if batch >= 10 && downRatio >= 0.5 {
				t.Errorf("batch %d: compressed/uncompressed = %.2f, want < 0.5", batch, downRatio)
			}
			if upRatio >= 0.5 {
				t.Errorf("client's batches: compressed/uncompressed = %.2f, want < 0.5", upRatio)
			}
		}
	})

	if extra != nil {
		t.Run("server_no_context_takeover only", extra)
	}
}

// trade is the i-th trade of the peers' stream (peers/*: trade()).
func trade(i int) string {
	p := 4350000 + (i*7919)%100000
	return fmt.Sprintf(`{"e":"trade","s":"BTCUSDT","t":%d,"p":"%d.%02d","q":"0.%04d","T":%d,"m":%t}`,
		i, p/100, p%100, (i*37)%10000, 1700000000123+int64(i)*7, i%3 == 0)
}

// tradeMessages is the stream of n trades in messages of batch.
func tradeMessages(from, n, batch int) []string {
	var out []string
	for lo := from; lo < from+n; lo += batch {
		var ts []string
		for i := lo; i < min(lo+batch, from+n); i++ {
			ts = append(ts, trade(i))
		}
		if batch == 1 {
			out = append(out, ts[0])
		} else {
			out = append(out, "["+strings.Join(ts, ",")+"]")
		}
	}
	return out
}

// compSession is one wspool Client talking to a peer through a tap.
type compSession struct {
	t   testing.TB
	tap *tap
	c   *wspool.Client

	mu   sync.Mutex
	msgs []wspool.Message

	sent     [][]byte // data messages sent (for the peer's digest)
	stopOnce sync.Once
	cancel   context.CancelFunc
	done     chan error
}

func newCompSession(t testing.TB, target string, compress bool) *compSession {
	t.Helper()
	s := &compSession{t: t, tap: newTap(t, target), done: make(chan error, 1)}
	c, err := wspool.NewClient("ws://"+s.tap.addr()+"/feed", s.handle,
		wspool.WithCompression(compress),
		wspool.WithPingInterval(0),
		wspool.WithBackoff(50*time.Millisecond, 500*time.Millisecond),
	)
	if err != nil {
		t.Fatal(err)
	}
	s.c = c
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() { s.done <- c.Run(ctx) }()
	t.Cleanup(s.stop)
	waitUntil(t, 10*time.Second, "connected", func() bool { return c.State() == wspool.StateConnected })
	return s
}

func (s *compSession) handle(_ context.Context, m wspool.Message) error {
	m.Data = bytes.Clone(m.Data)
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	s.mu.Unlock()
	return nil
}

// stop ends the client and waits for Run (idempotent).
func (s *compSession) stop() {
	s.stopOnce.Do(func() {
		s.cancel()
		select {
		case err := <-s.done:
			if err != nil {
				s.t.Errorf("Run returned %v", err)
			}
		case <-time.After(15 * time.Second):
			s.t.Errorf("Run did not return within 15s of cancel")
		}
		if st := s.c.Stats(); st.Connects != 1 {
			s.t.Errorf("Connects %d, want 1 (last error %v)", st.Connects, st.LastError)
		}
	})
}

func (s *compSession) numMsgs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

func (s *compSession) since(from int) []wspool.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]wspool.Message(nil), s.msgs[min(from, len(s.msgs)):]...)
}

func (s *compSession) send(typ wspool.MessageType, data []byte) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.c.Send(ctx, typ, data); err != nil {
		s.t.Fatalf("Send: %v", err)
	}
}

// command sends a JSON command and returns the first reply of type typ
// after it, decoded into a map.
func (s *compSession) command(cmd map[string]any, typ string) map[string]any {
	s.t.Helper()
	from := s.numMsgs()
	s.send(wspool.TextMessage, mustJSON(cmd))
	var got map[string]any
	waitUntil(s.t, 20*time.Second, "reply "+typ, func() bool {
		for _, m := range s.since(from) {
			var v map[string]any
			if m.Type == wspool.TextMessage && json.Unmarshal(m.Data, &v) == nil && v["type"] == typ {
				got = v
				return true
			}
		}
		return false
	})
	return got
}

// ext is the Sec-WebSocket-Extensions the peer answered with.
func (s *compSession) ext() string {
	s.t.Helper()
	v, _ := s.command(map[string]any{"op": "ext"}, "ext")["data"].(string)
	return v
}

// trades asks the peer for n trades in messages of batch and checks that
// exactly those messages arrived, in order, byte for byte.
func (s *compSession) trades(n, batch int) {
	s.t.Helper()
	from := s.numMsgs()
	s.command(map[string]any{"op": "trades", "count": n, "batch": batch}, "trades_done")
	var got []string
	for _, m := range s.since(from) {
		if m.Type == wspool.TextMessage && (bytes.HasPrefix(m.Data, []byte(`{"e":`)) || bytes.HasPrefix(m.Data, []byte("["))) {
			got = append(got, string(m.Data))
		}
	}
	want := tradeMessages(0, n, batch)
	if len(got) != len(want) {
		s.t.Fatalf("%d trade messages, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			s.t.Fatalf("trade message %d is %q, want %q", i, got[i], want[i])
		}
	}
}

// sendTrades sends n trades to the peer in text messages of batch (data
// messages: the peer hashes them).
func (s *compSession) sendTrades(n, batch int) {
	s.t.Helper()
	for _, m := range tradeMessages(0, n, batch) {
		s.send(wspool.TextMessage, []byte(m))
		s.sent = append(s.sent, []byte(m))
	}
}

// checkDigest asks the peer for the count, size and SHA-256 of the data
// messages it received, and compares with what was sent.
func (s *compSession) checkDigest() {
	s.t.Helper()
	h := sha256.New()
	var size int
	for _, b := range s.sent {
		h.Write(b)
		size += len(b)
	}
	v := s.command(map[string]any{"op": "digest"}, "digest")
	want := map[string]any{"n": float64(len(s.sent)), "bytes": float64(size), "sha256": hex.EncodeToString(h.Sum(nil))}
	for k, w := range want {
		if v[k] != w {
			s.t.Errorf("peer's digest %s = %v, want %v", k, v[k], w)
		}
	}
}

// bothWays sends text JSON and binary messages and checks what comes back:
// an echo of a small and of a ~1 MB JSON text, a 300 KiB binary message
// (half trades, half random bytes) and 200 small binary messages echoed
// byte for byte in order, 100 text batches of trades; then the peer's digest
// of every data message.
func (s *compSession) bothWays() {
	s.t.Helper()
	for _, data := range []string{"hello, compressed", strings.Join(tradeMessages(0, 12000, 1), "\n")} {
		v := s.command(map[string]any{"op": "echo", "data": data}, "echo")
		if v["data"] != data {
			got, _ := v["data"].(string)
			s.t.Fatalf("echo of %d bytes came back as %d bytes", len(data), len(got))
		}
	}

	rng := rand.New(rand.NewPCG(1, 2))
	big := []byte(strings.Join(tradeMessages(0, 2000, 1), ""))[:150<<10]
	noise := make([]byte, 150<<10)
	for i := range noise {
		noise[i] = byte(rng.Uint32())
	}
	bins := [][]byte{append(big, noise...)}
	for i := range 200 {
		b := make([]byte, 1+rng.IntN(300))
		for j := range b {
			b[j] = "ab{}:,0123456789"[rng.IntN(16)] // compressible, not text
		}
		b[0] = byte(i)
		bins = append(bins, b)
	}
	from := s.numMsgs()
	for _, b := range bins {
		s.send(wspool.BinaryMessage, b)
		s.sent = append(s.sent, b)
	}
	s.sendTrades(1000, 10)
	var got []wspool.Message
	waitUntil(s.t, 20*time.Second, fmt.Sprintf("%d binary echoes", len(bins)), func() bool {
		got = got[:0]
		for _, m := range s.since(from) {
			if m.Type == wspool.BinaryMessage {
				got = append(got, m)
			}
		}
		return len(got) >= len(bins)
	})
	for i, b := range bins {
		if !bytes.Equal(got[i].Data, b) {
			s.t.Fatalf("binary echo %d: %d bytes back for %d sent, or different bytes", i, len(got[i].Data), len(b))
		}
	}
	if len(got) != len(bins) {
		s.t.Fatalf("%d binary echoes, want %d", len(got), len(bins))
	}
	s.checkDigest()
}

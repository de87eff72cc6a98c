//go:build linux

package interop

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
)

// The Python and Node peers run the same scenario (peers/*: same protocol,
// both with their own keepalive pings every second and a one-second pong
// deadline).

// TestPythonWebsockets runs the scenario against a server on the Python
// websockets library (Debian's python3-websockets).
func TestPythonWebsockets(t *testing.T) {
	py, version := pythonWithWebsockets(t)
	t.Logf("peer: Python websockets %s (%s)", version, py)
	script := peerScript(t, "python_ws_server.py")
	start := func(port int) *proc {
		cmd := exec.Command(py, script, "--port", strconv.Itoa(port), "--ping-interval", "1", "--ping-timeout", "1")
		return startProc(t, "python websockets server", cmd, printed("READY"))
	}
	runPeerScenario(t, start, nil)
}

// TestNodeWs runs the scenario against a server on the npm package ws, and
// checks that an application close code (4000) and its reason reach the
// feed's state change.
func TestNodeWs(t *testing.T) {
	node, nodePath, version := nodeWithWs(t)
	t.Logf("peer: Node %s, ws %s", nodeVersion(node), version)
	script := peerScript(t, "node_ws_server.js")
	start := func(port int) *proc {
		cmd := exec.Command(node, script, "--port", strconv.Itoa(port), "--ping-interval-ms", "1000")
		cmd.Env = append(os.Environ(), "NODE_PATH="+nodePath)
		return startProc(t, "node ws server", cmd, printed("READY"))
	}
	runPeerScenario(t, start, func(t *testing.T, f *feed) {
		const reason = "maintenance window (interop test)"
		n := f.numChanges()
		connects := f.onConnects()
		from := f.numMsgs()
		f.send(map[string]any{"op": "close", "code": 4000, "reason": reason})
		sc := f.waitDrop(n, 5*time.Second)
		t.Logf("state change on close: %v -> %v, err: %v", sc.From, sc.To, sc.Err)
		if got := wspool.CloseStatus(sc.Err); got != 4000 {
			t.Errorf("CloseStatus(state change err) = %d, want 4000 (err %v)", got, sc.Err)
		}
		if !strings.Contains(errString(sc.Err), reason) {
			t.Errorf("state change err %q does not carry the reason %q", errString(sc.Err), reason)
		}
		if got := wspool.CloseStatus(f.c.Stats().LastError); got != 4000 {
			t.Errorf("CloseStatus(Stats.LastError) = %d, want 4000 (%v)", got, f.c.Stats().LastError)
		}
		// 4000 is not permanent by default: the feed comes back.
		f.waitConnected(connects+1, 10*time.Second)
		if conn, _ := f.waitTicks(from); conn < 2 {
			t.Errorf("ticks after the 4000 close came on connection %d, want a new one", conn)
		}
	})
}

// runPeerScenario: connect, OnConnect subscribes, ticks in order, an echo
// round trip, the peer's keepalive pings answered over a window longer than
// its pong deadline (and, as a control, a client that does not answer them
// is dropped), then SIGKILL and a restart on the same port: the feed comes
// back and OnConnect runs again. extra, if set, runs last.
func runPeerScenario(t *testing.T, start func(port int) *proc, extra func(*testing.T, *feed)) {
	port := freePort(t)
	url := fmt.Sprintf("ws://127.0.0.1:%d/feed", port)
	srv := start(port)

	// wspool's own pings off, so that during the keepalive window the only
	// frames on the wire are the peer's pings and our pongs.
	f := newFeed(t, "trades", 50).run(url, wspool.WithPingInterval(0))

	var conn int
	t.Run("connect subscribe order", func(t *testing.T) {
		f.waitConnected(1, 10*time.Second)
		var pid int
		conn, pid = f.waitTicks(0)
		if pid != srv.cmd.Process.Pid {
			t.Errorf("ticks from pid %d, want the server's %d", pid, srv.cmd.Process.Pid)
		}
		if n := f.onConnects(); n != 1 {
			t.Errorf("OnConnect ran %d times, want 1", n)
		}
	})

	t.Run("echo", func(t *testing.T) {
		m, rtt := f.echo("hello through a real peer")
		t.Logf("echo round trip %v", rtt)
		if m.Conn != conn {
			t.Errorf("echo came on connection %d, want %d", m.Conn, conn)
		}
	})

	t.Run("peer keepalive pings answered", func(t *testing.T) {
		before := f.stats()
		// An observation window, not a wait for something to get ready: the
		// peer pings every 1s and drops a connection whose pong is 1s late,
		// so 3.5s covers three pings and three deadlines.
		time.Sleep(3500 * time.Millisecond)
		after := f.stats()
		t.Logf("peer keepalive over 3.5s: pings %d -> %d, pongs %d -> %d", before.PingsSent, after.PingsSent, before.PongsReceived, after.PongsReceived)
		if after.Conn != conn {
			t.Fatalf("stats came on connection %d, want %d: the peer dropped us", after.Conn, conn)
		}
		if got := after.PongsReceived - before.PongsReceived; got < 2 {
			t.Errorf("peer got %d pongs in 3.5s, want >= 2", got)
		}
		if lag := after.PingsSent - after.PongsReceived; lag > 1 {
			t.Errorf("%d of the peer's pings unanswered", lag)
		}
		if st := f.c.Stats(); st.Disconnects != 0 || st.Connects != 1 {
			t.Errorf("Connects %d, Disconnects %d; want 1, 0 (last error %v)", st.Connects, st.Disconnects, st.LastError)
		}
	})

	t.Run("control: silent client dropped by peer keepalive", func(t *testing.T) {
		assertDropsNonAnsweringClient(t, url)
	})

	t.Run("SIGKILL and restart on the same port", func(t *testing.T) {
		n := f.numChanges()
		from := f.numMsgs()
		srv.kill(t)
		sc := f.waitDrop(n, 5*time.Second)
		t.Logf("after SIGKILL: %v -> %v, err: %v", sc.From, sc.To, sc.Err)
		if sc.Err == nil {
			t.Errorf("state change after SIGKILL has no cause")
		}
		srv = start(port)
		f.waitConnected(2, 10*time.Second)
		var pid int
		conn, pid = f.waitTicks(from)
		if pid != srv.cmd.Process.Pid {
			t.Errorf("ticks after restart from pid %d, want the new server's %d", pid, srv.cmd.Process.Pid)
		}
		if m, _ := f.echo("after restart"); m.Conn != conn || m.PID != pid {
			t.Errorf("echo from %d/%d, want %d/%d", m.PID, m.Conn, pid, conn)
		}
		if f.onConnects() != 2 {
			t.Errorf("OnConnect ran %d times, want 2", f.onConnects())
		}
		st := f.c.Stats()
		t.Logf("stats: connects %d, disconnects %d, attempts %d", st.Connects, st.Disconnects, st.Attempts)
		if st.Connects != 2 || st.Disconnects != 1 {
			t.Errorf("Connects %d, Disconnects %d; want 2, 1", st.Connects, st.Disconnects)
		}
	})

	if extra != nil {
		t.Run("close code", func(t *testing.T) { extra(t, f) })
	}
}

// assertDropsNonAnsweringClient dials url with a plain gorilla client that
// swallows pings instead of answering them, and checks the peer drops it
// within a few seconds: the peer's keepalive is real, so a connection that
// survives it (as the wspool feed does) is answering.
func assertDropsNonAnsweringClient(t *testing.T, url string) {
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second} // no proxy
	c, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pings := 0
	c.SetPingHandler(func(string) error { pings++; return nil })
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(10 * time.Second))
	for {
		if _, _, err = c.ReadMessage(); err != nil {
			break
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("peer kept a client that never answered its %d pings for 10s", pings)
	}
	t.Logf("peer dropped a non-answering client after %v and %d pings: %v", time.Since(start).Round(time.Millisecond), pings, err)
	if pings == 0 {
		t.Errorf("peer dropped the client without pinging it first")
	}
}

func peerScript(t testing.TB, name string) string {
	p, err := filepath.Abs(filepath.Join("peers", name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// pythonWithWebsockets returns a Python 3 that can import websockets:
// $WSPOOL_INTEROP_PYTHON, else Debian's /usr/bin/python3 (with
// python3-websockets), else python3 from PATH.
func pythonWithWebsockets(t testing.TB) (path, version string) {
	t.Helper()
	var cands []string
	if p := os.Getenv("WSPOOL_INTEROP_PYTHON"); p != "" {
		cands = append(cands, p)
	}
	cands = append(cands, "/usr/bin/python3")
	if p, err := exec.LookPath("python3"); err == nil {
		cands = append(cands, p)
	}
	var tried []string
	for _, p := range cands {
		out, err := exec.Command(p, "-c", "import websockets, websockets.legacy.server; print(websockets.__version__)").Output()
		if err == nil {
			return p, strings.TrimSpace(string(out))
		}
		tried = append(tried, p)
	}
	peerMissing(t, "no python3 with the websockets library (tried %s; Debian package python3-websockets)", strings.Join(tried, ", "))
	return "", ""
}

// nodeWithWs returns node, the node_modules directory holding ws, and ws's
// version.
func nodeWithWs(t testing.TB) (node, nodePath, version string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		peerMissing(t, "node not found in PATH")
	}
	nodePath, err = filepath.Abs(filepath.Join("node", "node_modules"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(nodePath, "ws", "package.json"))
	if err != nil {
		peerMissing(t, "npm package ws not installed in interop/node (npm ci there): %v", err)
	}
	var pkg struct{ Version string }
	if err := json.Unmarshal(b, &pkg); err != nil {
		t.Fatal(err)
	}
	return node, nodePath, pkg.Version
}

func nodeVersion(node string) string {
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}

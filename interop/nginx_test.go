//go:build linux

package interop

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wspool/wspool"
)

// nginxProxy is nginx as a WebSocket reverse proxy in front of a backend,
// run in the foreground with every path (config, pid, logs, temp) in a test
// directory.
type nginxProxy struct {
	t    testing.TB
	bin  string
	dir  string
	conf string
	port int
	proc *proc
}

// nginxReadTimeout is proxy_read_timeout: an upgraded connection on which
// nothing arrives for this long is closed by nginx.
const nginxReadTimeout = 2 * time.Second

func startNginx(t testing.TB, backend string) *nginxProxy {
	t.Helper()
	n := &nginxProxy{t: t, bin: lookBin(t, "nginx", "nginx"), dir: t.TempDir(), port: freePort(t)}
	n.conf = filepath.Join(n.dir, "nginx.conf")
	// worker_shutdown_timeout: on a reload the old worker closes the
	// connections it still holds after 1s instead of keeping them forever
	// (upgraded connections never become idle), so a reload moves the feeds
	// to the new configuration.
	conf := fmt.Sprintf(`worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
worker_shutdown_timeout 1s;
events { worker_connections 256; }
http {
	access_log %[1]s/access.log;
	client_body_temp_path %[1]s/client_body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	map $http_upgrade $connection_upgrade { default upgrade; '' close; }
	server {
		listen 127.0.0.1:%[2]d;
		location / {
			proxy_pass http://%[3]s;
			proxy_http_version 1.1;
			proxy_set_header Upgrade $http_upgrade;
			proxy_set_header Connection $connection_upgrade;
			proxy_set_header Host $host;
			proxy_read_timeout %[4]ds;
			proxy_send_timeout %[4]ds;
		}
	}
}
`, n.dir, n.port, backend, int(nginxReadTimeout/time.Second))
	if err := os.WriteFile(n.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(n.bin, "-p", n.dir, "-e", filepath.Join(n.dir, "error.log"), "-c", n.conf, "-t").CombinedOutput(); err != nil {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}
	n.start()
	return n
}

func (n *nginxProxy) start() {
	n.t.Helper()
	cmd := exec.Command(n.bin, "-p", n.dir, "-e", filepath.Join(n.dir, "error.log"), "-c", n.conf, "-g", "daemon off;")
	n.proc = startProc(n.t, "nginx", cmd, listening(n.addr()))
}

func (n *nginxProxy) addr() string { return fmt.Sprintf("127.0.0.1:%d", n.port) }

func (n *nginxProxy) url() string { return "ws://" + n.addr() + "/feed" }

func (n *nginxProxy) errorLog() string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "error.log"))
	return string(b)
}

func nginxVersion(bin string) string {
	out, _ := exec.Command(bin, "-v").CombinedOutput()
	return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "nginx version: "))
}

// TestNginxReverseProxy: nginx (proxy_read_timeout 2s) in front of a gorilla
// server. Over a 5s gap in which the server sends nothing, a feed pinging
// every 500ms keeps its connection with zero disconnects while a feed with
// pings off is dropped by nginx after ~2s: the heartbeat is what keeps it.
// Then a reload (SIGHUP) and a full restart of nginx: the feed comes back.
func TestNginxReverseProxy(t *testing.T) {
	backend := startGoServer(t, nil)
	ngx := startNginx(t, backend.addr)
	t.Logf("peer: %s, proxy_read_timeout %v, backend %s", nginxVersion(ngx.bin), nginxReadTimeout, backend.addr)

	pool, err := wspool.NewPool()
	if err != nil {
		t.Fatal(err)
	}
	// A ping every 500ms: pings go out every max(PingInterval, PongTimeout)
	// (see TestPingIntervalAloneBehindNginx).
	beat := newFeed(t, "beat", 3)
	beatC, err := pool.Add(ngx.url(), beat.handle, beat.options(wspool.WithName("heartbeat"),
		wspool.WithPingInterval(500*time.Millisecond), wspool.WithPongTimeout(500*time.Millisecond))...)
	if err != nil {
		t.Fatal(err)
	}
	beat.c = beatC
	silent := newFeed(t, "silent", 3)
	silentC, err := pool.Add(ngx.url(), silent.handle, silent.options(wspool.WithName("silent"), wspool.WithPingInterval(0))...)
	if err != nil {
		t.Fatal(err)
	}
	silent.c = silentC
	runInBackground(t, pool.Run)

	var beatConn int
	t.Run("5s idle gap: pings keep it, no pings dropped", func(t *testing.T) {
		beat.waitConnected(1, 10*time.Second)
		silent.waitConnected(1, 10*time.Second)
		beatConn, _ = beat.waitTicks(0)
		silent.waitTicks(0)
		n := silent.numChanges()

		gapStart := time.Now()
		sc := silent.waitDrop(n, 5*time.Second)
		// Its last traffic was the last tick (the subscription just before).
		dropAfter := sc.At.Sub(silent.lastMsgAt())
		t.Logf("silent feed dropped by nginx after %v idle: %v -> %v, err: %v", dropAfter.Round(10*time.Millisecond), sc.From, sc.To, sc.Err)
		if dropAfter < nginxReadTimeout-300*time.Millisecond || dropAfter > nginxReadTimeout+2*time.Second {
			t.Errorf("silent feed dropped after %v, want about proxy_read_timeout %v", dropAfter, nginxReadTimeout)
		}
		if !strings.Contains(ngx.errorLog(), "upstream timed out") {
			t.Logf("nginx error log has no \"upstream timed out\":\n%s", ngx.errorLog())
		}
		// The rest of the 5s gap: the server still sends the heartbeat feed
		// nothing but pongs (an observation window, not a readiness wait).
		time.Sleep(5*time.Second - time.Since(gapStart))

		m, rtt := beat.echo("after the gap")
		st := beat.c.Stats()
		t.Logf("heartbeat feed after 5s gap: connects %d, disconnects %d, ping RTT %v, echo %v", st.Connects, st.Disconnects, st.RTT, rtt)
		if st.Disconnects != 0 || st.Connects != 1 || m.Conn != beatConn {
			t.Errorf("heartbeat feed: Connects %d, Disconnects %d, echo on connection %d (want 1, 0, %d); last error %v",
				st.Connects, st.Disconnects, m.Conn, beatConn, st.LastError)
		}
		if st.RTT <= 0 {
			t.Errorf("no ping round trip measured through nginx")
		}
		if err := pool.Remove("silent"); err != nil {
			t.Error(err)
		}
	})

	t.Run("reload (SIGHUP)", func(t *testing.T) {
		connects := beat.onConnects()
		n := beat.numChanges()
		from := beat.numMsgs()
		ngx.proc.signal(t, syscall.SIGHUP)
		sc := beat.waitDrop(n, 10*time.Second)
		t.Logf("after reload the old worker closed the connection (worker_shutdown_timeout 1s): %v", sc.Err)
		beat.waitConnected(connects+1, 10*time.Second)
		beatConn, _ = beat.waitTicks(from)
		if m, _ := beat.echo("after reload"); m.Conn != beatConn {
			t.Errorf("echo on connection %d, want %d", m.Conn, beatConn)
		}
		if !strings.Contains(ngx.errorLog(), "reconfiguring") {
			t.Errorf("nginx error log does not show the reload:\n%s", ngx.errorLog())
		}
	})

	t.Run("full restart", func(t *testing.T) {
		connects := beat.onConnects()
		n := beat.numChanges()
		from := beat.numMsgs()
		oldPID := ngx.proc.cmd.Process.Pid
		ngx.proc.signal(t, syscall.SIGTERM) // fast shutdown: workers close every connection
		ngx.proc.wait(t, 10*time.Second)
		sc := beat.waitDrop(n, 5*time.Second)
		t.Logf("nginx stopped: %v", sc.Err)
		ngx.start()
		if ngx.proc.cmd.Process.Pid == oldPID {
			t.Fatal("nginx was not restarted")
		}
		beat.waitConnected(connects+1, 10*time.Second)
		beatConn, _ = beat.waitTicks(from)
		if m, _ := beat.echo("after restart"); m.Conn != beatConn {
			t.Errorf("echo on connection %d, want %d", m.Conn, beatConn)
		}
		st := beat.c.Stats()
		t.Logf("heartbeat feed: connects %d, disconnects %d, attempts %d", st.Connects, st.Disconnects, st.Attempts)
	})
}

// TestPingIntervalAloneBehindNginx: WithPingInterval(500ms) alone keeps a
// connection through nginx's 2s proxy_read_timeout. (It used to fail: pings
// went out every max(PingInterval, PongTimeout) with the pong timeout at its
// 10s default; the pong timeout now follows a shorter ping interval unless it
// is set explicitly.)
func TestPingIntervalAloneBehindNginx(t *testing.T) {
	backend := startGoServer(t, nil)
	ngx := startNginx(t, backend.addr)
	f := newFeed(t, "interval-only", 3).run(ngx.url(), wspool.WithPingInterval(500*time.Millisecond))
	f.waitConnected(1, 10*time.Second)
	f.waitTicks(0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	<-ctx.Done() // the 5s idle gap
	if st := f.c.Stats(); st.Disconnects != 0 {
		t.Errorf("WithPingInterval(500ms) alone: %d disconnects over a 5s gap behind nginx's %v proxy_read_timeout (last error %v); "+
			"the first ping goes at 0.5s, the next only after the 10s pong timeout",
			st.Disconnects, nginxReadTimeout, st.LastError)
	}
}

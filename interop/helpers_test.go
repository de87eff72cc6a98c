//go:build linux

package interop

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wspool/wspool"
)

// ciMode reports whether CI=true is set: then a missing peer fails its test
// instead of skipping it, so the interop tests cannot silently not run in CI.
func ciMode() bool {
	v, _ := strconv.ParseBool(os.Getenv("CI"))
	return v
}

// peerMissing skips the test locally and fails it in CI.
func peerMissing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if ciMode() {
		t.Fatalf("interop peer missing: %s (CI=true, so this fails instead of skipping; .ci/install-interop.sh installs it)", msg)
	}
	t.Skipf("interop peer missing: %s (run .ci/install-interop.sh as root to install it; with CI=true this test fails instead)", msg)
}

// lookBin finds an executable in PATH or in the sbin directories, which a
// non-root PATH often lacks (nginx is /usr/sbin/nginx on Debian).
func lookBin(t testing.TB, name, pkg string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	peerMissing(t, "%s not found in PATH or /usr/sbin (Debian package %s)", name, pkg)
	return ""
}

// freePort returns a port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitUntil polls cond every 10ms until it holds or timeout passes.
func waitUntil(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lockedBuffer collects a subprocess's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// proc is a peer running as a subprocess in its own process group, so that a
// kill also reaches its children (nginx's workers).
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
	err  error // Wait's result, once done is closed
}

// startProc starts cmd and waits until ready reports nil (polled every 20ms
// for at most 15s), failing the test if the process exits first. The
// process group is killed with SIGKILL when the test ends.
func startProc(t testing.TB, name string, cmd *exec.Cmd, ready func(p *proc) error) *proc {
	t.Helper()
	p := &proc{name: name, cmd: cmd, out: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill(t)
		if out := p.out.String(); t.Failed() && out != "" {
			t.Logf("%s output:\n%s", name, out)
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-p.done:
			t.Fatalf("%s exited before it was ready (%v); output:\n%s", name, p.err, p.out)
		default:
		}
		err := ready(p)
		if err == nil {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after 15s: %v; output:\n%s", name, err, p.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// printed is a readiness check: the process printed line.
func printed(line string) func(p *proc) error {
	return func(p *proc) error {
		if strings.Contains(p.out.String(), line) {
			return nil
		}
		return fmt.Errorf("has not printed %q yet", line)
	}
}

// listening is a readiness check: addr accepts TCP connections.
func listening(addr string) func(p *proc) error {
	return func(*proc) error {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return err
		}
		return c.Close()
	}
}

// signal sends sig to the process (not its group).
func (p *proc) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v to %s: %v", sig, p.name, err)
	}
}

// wait waits for the process to exit.
func (p *proc) wait(t testing.TB, timeout time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %v", p.name, timeout)
	}
}

// kill sends SIGKILL to the process group and waits for the process.
func (p *proc) kill(t testing.TB) {
	t.Helper()
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.wait(t, 10*time.Second)
}

// msg is a reply of the test peers (Python, Node and the Go backend speak
// the same small JSON protocol; see peers/python_ws_server.py).
type msg struct {
	Type          string `json:"type"`
	Topic         string `json:"topic"`
	Seq           int    `json:"seq"`
	Data          string `json:"data"`
	Conn          int    `json:"conn"`
	PID           int    `json:"pid"`
	PingsSent     int    `json:"pings_sent"`
	PongsReceived int    `json:"pongs_received"`
}

// feed records what one wspool feed saw: decoded messages, state changes and
// OnConnect runs. Its handler and options go to NewClient or Pool.Add.
type feed struct {
	t     testing.TB
	topic string
	count int
	c     *wspool.Client

	mu       sync.Mutex
	msgs     []msg
	changes  []wspool.StateChange
	connects int // OnConnect runs that subscribed
	lastMsg  time.Time
	badMsgs  []string
}

// newFeed returns a recorder whose OnConnect subscribes to count ticks of
// topic (count 0: no subscription).
func newFeed(t testing.TB, topic string, count int) *feed {
	return &feed{t: t, topic: topic, count: count}
}

func (f *feed) handle(_ context.Context, m wspool.Message) error {
	var v msg
	if err := json.Unmarshal(m.Data, &v); err != nil {
		f.mu.Lock()
		f.badMsgs = append(f.badMsgs, string(m.Data))
		f.mu.Unlock()
		return err
	}
	f.mu.Lock()
	f.msgs = append(f.msgs, v)
	f.lastMsg = time.Now()
	f.mu.Unlock()
	return nil
}

// options are the recording hooks; more options may follow them.
func (f *feed) options(more ...wspool.Option) []wspool.Option {
	opts := []wspool.Option{
		wspool.WithOnConnect(func(ctx context.Context, c *wspool.Conn) error {
			f.mu.Lock()
			f.connects++
			f.mu.Unlock()
			if f.count == 0 {
				return nil
			}
			return c.Send(ctx, wspool.TextMessage, mustJSON(map[string]any{"op": "subscribe", "topic": f.topic, "count": f.count}))
		}),
		wspool.WithOnStateChange(func(sc wspool.StateChange) {
			f.mu.Lock()
			f.changes = append(f.changes, sc)
			f.mu.Unlock()
		}),
		// Fast retries: the tests restart peers and wait for the feed.
		wspool.WithBackoff(50*time.Millisecond, 500*time.Millisecond),
	}
	return append(opts, more...)
}

// run starts a standalone Client for url and stops it when the test ends.
func (f *feed) run(url string, opts ...wspool.Option) *feed {
	f.t.Helper()
	c, err := wspool.NewClient(url, f.handle, f.options(opts...)...)
	if err != nil {
		f.t.Fatal(err)
	}
	f.c = c
	runInBackground(f.t, c.Run)
	return f
}

// runInBackground runs run until the test ends and checks it returned nil.
func runInBackground(t testing.TB, run func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("Run did not return within 15s of cancel")
		}
	})
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// send sends one JSON command on the feed.
func (f *feed) send(v any) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.c.Send(ctx, wspool.TextMessage, mustJSON(v)); err != nil {
		f.t.Fatalf("Send: %v (state %v)", err, f.c.State())
	}
}

// snapshot returns copies of the recorded messages and state changes.
func (f *feed) snapshot() ([]msg, []wspool.StateChange, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]msg(nil), f.msgs...), append([]wspool.StateChange(nil), f.changes...), f.connects
}

func (f *feed) onConnects() int {
	_, _, n := f.snapshot()
	return n
}

// find returns the first message from index from on that matches.
func (f *feed) find(from int, match func(msg) bool) (msg, bool) {
	msgs, _, _ := f.snapshot()
	for _, m := range msgs[min(from, len(msgs)):] {
		if match(m) {
			return m, true
		}
	}
	return msg{}, false
}

// lastMsgAt is when the latest message arrived.
func (f *feed) lastMsgAt() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastMsg
}

func (f *feed) numMsgs() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.msgs)
}

// echo sends data to be echoed and waits for the echo; it returns the reply
// and how long the round trip took.
func (f *feed) echo(data string) (msg, time.Duration) {
	f.t.Helper()
	from := f.numMsgs()
	start := time.Now()
	f.send(map[string]any{"op": "echo", "data": data})
	var got msg
	waitUntil(f.t, 5*time.Second, "echo of "+data, func() bool {
		m, ok := f.find(from, func(m msg) bool { return m.Type == "echo" && m.Data == data })
		got = m
		return ok
	})
	return got, time.Since(start)
}

// stats asks the peer for its keepalive counters on this connection.
func (f *feed) stats() msg {
	f.t.Helper()
	from := f.numMsgs()
	f.send(map[string]any{"op": "stats"})
	var got msg
	waitUntil(f.t, 5*time.Second, "stats reply", func() bool {
		m, ok := f.find(from, func(m msg) bool { return m.Type == "stats" })
		got = m
		return ok
	})
	return got
}

// waitTicks waits for the ticks of the first connection that delivered
// ticks at or after message index from (record numMsgs before a reconnect),
// checks that all count of them arrived in order, nothing missing or
// repeated, and returns that connection's number and server pid.
func (f *feed) waitTicks(from int) (conn, pid int) {
	f.t.Helper()
	var ticks []msg
	waitUntil(f.t, 10*time.Second, fmt.Sprintf("%d ticks", f.count), func() bool {
		msgs, _, _ := f.snapshot()
		ticks = ticks[:0]
		for _, m := range msgs[min(from, len(msgs)):] {
			if m.Type != "tick" {
				continue
			}
			if len(ticks) == 0 {
				conn, pid = m.Conn, m.PID
			}
			if m.Conn == conn && m.PID == pid {
				ticks = append(ticks, m)
			}
		}
		return len(ticks) >= f.count
	})
	for i, m := range ticks {
		if m.Seq != i || m.Topic != f.topic {
			f.t.Fatalf("tick %d of connection %d/%d is %+v: out of order", i, pid, conn, m)
		}
	}
	if len(ticks) != f.count {
		f.t.Fatalf("connection %d/%d delivered %d ticks, want %d", pid, conn, len(ticks), f.count)
	}
	return conn, pid
}

// waitDrop waits for the feed to lose the connection it has (a transition
// out of StateConnected after index from of the state changes) and returns
// that transition.
func (f *feed) waitDrop(from int, timeout time.Duration) wspool.StateChange {
	f.t.Helper()
	var sc wspool.StateChange
	waitUntil(f.t, timeout, "the connection to drop", func() bool {
		_, changes, _ := f.snapshot()
		for _, c := range changes[min(from, len(changes)):] {
			if c.From == wspool.StateConnected {
				sc = c
				return true
			}
		}
		return false
	})
	return sc
}

func (f *feed) numChanges() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.changes)
}

// waitConnected waits until OnConnect has run n times in all and the feed
// is connected.
func (f *feed) waitConnected(n int, timeout time.Duration) {
	f.t.Helper()
	waitUntil(f.t, timeout, fmt.Sprintf("connection #%d", n), func() bool {
		return f.onConnects() >= n && f.c.State() == wspool.StateConnected
	})
}

// errString is err's text, or "<nil>".
func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

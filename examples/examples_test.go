package examples_test

// These tests build every example program once (with -race when the tests
// run with -race), run each briefly against its own loopback server, and
// check its output for the evidence it is meant to show. They wait for that
// evidence as it is printed, with generous timeouts; nothing relies on a
// fixed sleep.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var programs = []string{"demo", "resume", "heartbeats", "tail", "backpressure", "standby", "topics", "orderbook"}

var (
	binDir   string
	buildErr error
	buildOut []byte
	build    sync.Once
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binary returns the path of the built example program name, building all of
// them on first use.
func binary(t *testing.T, name string) string {
	t.Helper()
	build.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "wspool-examples-")
		if buildErr != nil {
			return
		}
		args := []string{"build", "-o", binDir + string(filepath.Separator)}
		if raceEnabled {
			args = append(args, "-race")
		}
		for _, p := range programs {
			args = append(args, "./"+p)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		goTool, err := exec.LookPath("go") // go test puts GOROOT/bin first in PATH
		if err != nil {
			buildErr = err
			return
		}
		cmd := exec.CommandContext(ctx, goTool, args...)
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("building the examples: %v\n%s", buildErr, buildOut)
	}
	exe := filepath.Join(binDir, name)
	if runtime.GOOS == "windows" {
		exe += ".exe"
	}
	return exe
}

// proc is a running example program whose stdout is collected line by line.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd

	mu      sync.Mutex
	lines   []string
	changed chan struct{} // closed and replaced when lines grow or the program exits
	exited  bool
	waitErr error
	stderr  bytes.Buffer // written by exec's copier; read only after exit
}

// start runs the example name with args; it is killed after hardLimit at the
// latest, and when the test ends.
func start(t *testing.T, hardLimit time.Duration, name string, args ...string) *proc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hardLimit)
	p := &proc{t: t, name: name, changed: make(chan struct{})}
	p.cmd = exec.CommandContext(ctx, binary(t, name), args...)
	p.cmd.Stderr = &p.stderr
	p.cmd.WaitDelay = 5 * time.Second
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
		}
		err := p.cmd.Wait()
		p.mu.Lock()
		p.exited, p.waitErr = true, err
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}()
	t.Cleanup(func() {
		cancel()
		p.waitExit(10 * time.Second) // reap it
		if t.Failed() {
			t.Logf("%s %s\n--- stdout:\n%s\n--- stderr:\n%s", name, strings.Join(args, " "), p.output(), p.stderrText())
		}
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// stderrText is stderr once the program has exited (empty before).
func (p *proc) stderrText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.exited {
		return "(still running)"
	}
	return p.stderr.String()
}

// waitFor waits until cond holds for the stdout lines so far; it fails the
// test if the program exits or timeout passes first.
func (p *proc) waitFor(timeout time.Duration, what string, cond func(lines []string) bool) {
	p.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		ok, exited, ch := cond(p.lines), p.exited, p.changed
		p.mu.Unlock()
		if ok {
			return
		}
		if exited {
			p.t.Fatalf("%s exited before %s", p.name, what)
		}
		select {
		case <-ch:
		case <-deadline.C:
			p.t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
	}
}

// waitExit waits for the program to exit and returns its exit code (-1 if
// it did not exit in time or was killed).
func (p *proc) waitExit(timeout time.Duration) int {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		exited, err, ch := p.exited, p.waitErr, p.changed
		p.mu.Unlock()
		if exited {
			if err == nil {
				return 0
			}
			if ee, ok := err.(*exec.ExitError); ok {
				return ee.ExitCode()
			}
			return -1
		}
		select {
		case <-ch:
		case <-deadline.C:
			return -1
		}
	}
}

// mustExit waits for the program to exit with code want.
func (p *proc) mustExit(timeout time.Duration, want int) {
	p.t.Helper()
	if got := p.waitExit(timeout); got != want {
		p.t.Fatalf("%s exit code %d, want %d", p.name, got, want)
	}
}

// summaries parses the "summary feed=NAME key=value ..." lines, by feed.
func summaries(t *testing.T, out string) map[string]map[string]string {
	t.Helper()
	kv := regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\S+)`)
	m := map[string]map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, "summary ") {
			continue
		}
		f := map[string]string{}
		for _, sm := range kv.FindAllStringSubmatch(l, -1) {
			v := sm[2]
			if uq, err := strconv.Unquote(v); err == nil {
				v = uq
			}
			f[sm[1]] = v
		}
		m[f["feed"]] = f
	}
	return m
}

func num(t *testing.T, feed map[string]string, key string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(feed[key], 10, 64)
	if err != nil {
		t.Fatalf("feed %s: %s=%q is not a number", feed["feed"], key, feed[key])
	}
	return n
}

func contains(sub string) func([]string) bool {
	return func(lines []string) bool {
		for _, l := range lines {
			if strings.Contains(l, sub) {
				return true
			}
		}
		return false
	}
}

func allOf(conds ...func([]string) bool) func([]string) bool {
	return func(lines []string) bool {
		for _, c := range conds {
			if !c(lines) {
				return false
			}
		}
		return true
	}
}

// TestDemo waits until all three feeds have connected and the flaky one has
// reconnected, then stops the demo as Ctrl-C would and checks its summary.
func TestDemo(t *testing.T) {
	t.Parallel()
	if runtime.GOOS == "windows" {
		t.Skip("needs os.Interrupt")
	}
	p := start(t, 2*time.Minute, "demo", "-drop-every", "1s", "-refuse-for", "2s", "-duration", "90s")
	p.waitFor(60*time.Second, "every feed connected and flaky reconnected", allOf(
		contains("ticker: connected"),
		contains("late: connected"),
		contains("flaky: connected (reconnect #1)"),
		contains("FEED    STATE"), // the table (plain lines: stdout is a pipe)
	))
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	p.mustExit(30*time.Second, 0)

	out := p.output()
	if strings.Contains(out, "\x1b[") {
		t.Error("ANSI escapes in output to a pipe")
	}
	s := summaries(t, out)
	for _, name := range []string{"ticker", "flaky", "late"} {
		f, ok := s[name]
		if !ok {
			t.Fatalf("no summary for %s", name)
		}
		if num(t, f, "connects") < 1 || num(t, f, "messages") < 1 {
			t.Errorf("%s never connected or got no message: %v", name, f)
		}
		if f["state"] != "closed" {
			t.Errorf("%s: state %q after exit, want closed", name, f["state"])
		}
	}
	if num(t, s["flaky"], "reconnects") < 1 {
		t.Errorf("flaky: no reconnect: %v", s["flaky"])
	}
	if num(t, s["late"], "failed_attempts") < 1 || !strings.Contains(s["late"]["last_error"], "503") {
		t.Errorf("late: want a failed attempt with 503: %v", s["late"])
	}
}

func TestResume(t *testing.T) {
	t.Parallel()
	for _, via := range []string{"query", "message"} {
		t.Run(via, func(t *testing.T) {
			t.Parallel()
			p := start(t, 2*time.Minute, "resume", "-via", via, "-restarts", "3", "-up", "300ms", "-down", "300ms")
			p.mustExit(90*time.Second, 0)
			out := p.output()
			if !strings.Contains(out, "OK: the handler saw every sequence number from 1 to") ||
				!strings.Contains(out, "exactly once, with no gap, across 3 server restarts") {
				t.Errorf("no verdict of no gap in output")
			}
			if n := strings.Count(out, "server killed"); n != 3 {
				t.Errorf("%d server kills, want 3", n)
			}
		})
	}
}

// TestResumeCatchesGaps checks that the verification is not vacuous: without
// the cursor, the events produced while the server was down are missing.
func TestResumeCatchesGaps(t *testing.T) {
	t.Parallel()
	p := start(t, 2*time.Minute, "resume", "-resume=false", "-restarts", "1", "-up", "200ms", "-down", "300ms")
	p.mustExit(90*time.Second, 1)
	out := p.output()
	if !regexp.MustCompile(`FAIL: \d+ gaps`).MatchString(out) || !strings.Contains(out, "gap: after seq") {
		t.Errorf("want gaps reported")
	}
}

// TestTopics runs the topic-set example: 5,000 topics over a cap of 1,024,
// spread over five feeds, every topic delivering after the first subscribe,
// after every connection was dropped, and after a live change.
func TestTopics(t *testing.T) {
	t.Parallel()
	p := start(t, 2*time.Minute, "topics")
	p.mustExit(90*time.Second, 0)
	out := p.output()
	if !strings.Contains(out, "5000 topics at a cap of 1024 over 5 feeds") || !strings.Contains(out, "md-5: 904 topics") {
		t.Errorf("no spread of 5000 topics over 5 feeds in output")
	}
	if !strings.Contains(out, "OK: every one of 5000 topics delivered, at most 1024 per connection, 0 rejected") {
		t.Errorf("no verdict in output")
	}
}

// TestStandby runs the hot-standby example: connection losses, zero gaps.
func TestStandby(t *testing.T) {
	t.Parallel()
	p := start(t, 2*time.Minute, "standby", "-faults", "10")
	p.mustExit(90*time.Second, 0)
	out := p.output()
	if !regexp.MustCompile(`OK: every number from \d+ to \d+ exactly once, in order, across 10 connection losses`).MatchString(out) {
		t.Errorf("no verdict of no gap in output")
	}
	if n := strings.Count(out, "fault "); n < 10 {
		t.Errorf("%d faults reported, want 10", n)
	}
}

func TestOrderbook(t *testing.T) {
	t.Parallel()
	p := start(t, 2*time.Minute, "orderbook", "-duration", "3s")
	p.mustExit(90*time.Second, 0)
	out := p.output()
	m := regexp.MustCompile(`OK: the book matched the exchange's after all (\d+) faults`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no verdict that the book matched the exchange's")
	}
	if n, _ := strconv.Atoi(m[1]); n < 3 || strings.Count(out, "book matches the exchange") != n {
		t.Errorf("%s faults in the verdict, %d compared", m[1], strings.Count(out, "book matches the exchange"))
	}
	for _, want := range []string{"resyncs by cause:", "time in sync:", "time to resync:", "none by a resync"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in the output", want)
		}
	}
}

func TestHeartbeats(t *testing.T) {
	t.Parallel()
	p := start(t, 2*time.Minute, "heartbeats", "-duration", "4s")
	p.mustExit(60*time.Second, 0)
	s := summaries(t, p.output())
	var prev int64 = 1 << 62
	for _, name := range []string{"fast", "medium", "json"} { // by interval
		f, ok := s[name]
		if !ok {
			t.Fatalf("no summary for %s", name)
		}
		interval, err1 := time.ParseDuration(f["interval"])
		measured, err2 := time.ParseDuration(f["measured_interval"])
		if err1 != nil || err2 != nil {
			t.Fatalf("%s: bad durations: %v", name, f)
		}
		// Timers fire late on a busy machine, never early.
		if measured < interval*8/10 || measured > interval*2 {
			t.Errorf("%s: heartbeats every %v, configured %v", name, measured, interval)
		}
		heard := num(t, f, "heard")
		if heard < 2 || heard >= prev {
			t.Errorf("%s: server heard %d heartbeats (previous feed, faster: %d)", name, heard, prev)
		}
		prev = heard
		if num(t, f, "data") < 1 {
			t.Errorf("%s: handler got no data", name)
		}
	}
	for _, name := range []string{"fast", "medium"} { // DropReplies
		if num(t, s[name], "replies") < 1 || num(t, s[name], "replies_to_handler") != 0 {
			t.Errorf("%s: replies should be recognised and dropped: %v", name, s[name])
		}
	}
	// A reply read during the close handshake is not delivered.
	if r, h := num(t, s["json"], "replies"), num(t, s["json"], "replies_to_handler"); h < 1 || h > r {
		t.Errorf("json: replies should be recognised and reach the handler: %v", s["json"])
	}
}

func TestTailDemo(t *testing.T) {
	t.Parallel()
	p := start(t, 2*time.Minute, "tail", "--demo", "-duration", "3s")
	p.mustExit(60*time.Second, 0)
	var text, binary int
	for _, l := range strings.Split(p.output(), "\n") {
		var m struct{ Feed, Type, Data string }
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a JSON line: %q", l)
		}
		switch {
		case m.Feed == "demo-trades" && m.Type == "text" && strings.HasPrefix(m.Data, `{"type":"trade"`):
			text++
		case m.Feed == "demo-frames" && m.Type == "binary":
			b, err := base64.StdEncoding.DecodeString(m.Data)
			if err != nil || len(b) != 8 {
				t.Errorf("binary data %q: want 8 bytes in base64", m.Data)
			}
			binary++
		default:
			t.Errorf("unexpected line %q", l)
		}
	}
	if text < 2 || binary < 2 {
		t.Errorf("got %d text and %d binary lines, want at least 2 of each", text, binary)
	}
	if e := p.stderrText(); !strings.Contains(e, "demo-trades: connected") || !strings.Contains(e, "demo-frames: connected") {
		t.Errorf("no status lines on stderr:\n%s", e)
	}
}

func TestTailRaw(t *testing.T) {
	t.Parallel()
	p := start(t, 2*time.Minute, "tail", "--demo", "--raw", "-duration", "2s")
	p.mustExit(60*time.Second, 0)
	if !strings.Contains(p.output(), `{"type":"trade","id":1,`) {
		t.Errorf("no bare payload in output")
	}
}

// TestTailGivesUp runs tail against a server that answers 404: the feeds
// fail for good, and tail exits 1.
func TestTailGivesUp(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	u := "ws" + strings.TrimPrefix(srv.URL, "http")
	p := start(t, 2*time.Minute, "tail", u+"/a", u+"/b")
	p.mustExit(60*time.Second, 1)
	if e := p.stderrText(); !strings.Contains(e, "404") || !strings.Contains(e, "every feed failed") {
		t.Errorf("stderr does not report the 404:\n%s", e)
	}
}

func TestTailUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{}, {"http://example.com"}, {"ws://127.0.0.1:1/", "--raw"}} {
		t.Run(fmt.Sprint(args), func(t *testing.T) {
			p := start(t, time.Minute, "tail", args...)
			p.mustExit(30*time.Second, 2)
		})
	}
}

// TestBackpressure runs the three overflow policies against a fast server
// and a slow handler. Beyond the program's own checks (exit 0) it looks for
// the evidence: block slowed the server down and lost nothing; the drop
// policies kept the server at full rate, dropped, and accounted for every
// message; drop-oldest handed the handler fresher data than drop-newest.
func TestBackpressure(t *testing.T) {
	t.Parallel()
	p := start(t, 3*time.Minute, "backpressure", "-duration", "3s")
	p.mustExit(150*time.Second, 0)
	out := p.output()
	if !strings.Contains(out, "OK: every check passed") || strings.Contains(out, "FAIL") {
		t.Errorf("no verdict that every check passed")
	}
	if !strings.Contains(out, "server sent/s") {
		t.Errorf("no table")
	}
	s := summaries(t, out)
	for _, name := range []string{"block", "drop-oldest", "drop-newest"} {
		f, ok := s[name]
		if !ok {
			t.Fatalf("no summary for %s", name)
		}
		sent, read := num(t, f, "sent"), num(t, f, "read")
		delivered, dropped := num(t, f, "delivered"), num(t, f, "dropped")
		if read != sent || delivered+dropped != read || num(t, f, "missing") != dropped {
			t.Errorf("%s: accounting does not add up: %v", name, f)
		}
		if delivered < 100 {
			t.Errorf("%s: handler got only %d messages", name, delivered)
		}
		if name == "block" {
			if dropped != 0 {
				t.Errorf("block dropped %d", dropped)
			}
			continue
		}
		if dropped < delivered {
			t.Errorf("%s: dropped %d, delivered %d: the handler should not keep up", name, dropped, delivered)
		}
		// TCP pushed back on the server for block only.
		if b, d := num(t, s["block"], "send_rate"), num(t, f, "send_rate"); b*2 > d {
			t.Errorf("server sent %d msgs/s to block and %d to %s: block should be much slower", b, d, name)
		}
	}
	lag := func(name string) time.Duration {
		d, err := time.ParseDuration(s[name]["mean_lag"])
		if err != nil {
			t.Fatalf("%s: mean_lag: %v", name, err)
		}
		return d
	}
	if o, n := lag("drop-oldest"), lag("drop-newest"); o >= n {
		t.Errorf("mean lag %v with drop-oldest, %v with drop-newest: drop-oldest should deliver fresher data", o, n)
	}
}

// TestDocListsEveryExample: examples/doc.go and the README name every
// example program (each directory here with a main package).
func TestDocListsEveryExample(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	dirs, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if !d.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(d.Name(), "main.go")); err != nil {
			continue
		}
		run := "./examples/" + d.Name()
		if d.Name() == "prometheus" {
			run = "cd examples/prometheus && go run ."
		}
		if !bytes.Contains(doc, []byte(run)) {
			t.Errorf("examples/doc.go does not list %s (%q)", d.Name(), run)
		}
		if !bytes.Contains(readme, []byte(run)) {
			t.Errorf("README.md does not mention %s (%q)", d.Name(), run)
		}
	}
}

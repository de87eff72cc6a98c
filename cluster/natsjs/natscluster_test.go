//go:build unix

package natsjs_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// freePorts returns n free loopback ports.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// startNATSCluster starts three clustered JetStream servers on loopback and
// returns them with a client URL naming all three.
func startNATSCluster(t *testing.T) ([]*server.Server, string) {
	t.Helper()
	ports := freePorts(t, 6)
	var routes []string
	for i := 0; i < 3; i++ {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[3+i]))
	}
	var servers []*server.Server
	var urls []string
	for i := 0; i < 3; i++ {
		ns, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("n%d", i+1), Host: "127.0.0.1", Port: ports[i],
			JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
			Cluster: server.ClusterOpts{Name: "natsjs", Host: "127.0.0.1", Port: ports[3+i]},
			Routes:  server.RoutesFromStr(strings.Join(routes, ",")),
		})
		if err != nil {
			t.Fatal(err)
		}
		go ns.Start()
		servers = append(servers, ns)
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
	}
	t.Cleanup(func() {
		for _, ns := range servers {
			ns.Shutdown()
			ns.WaitForShutdown()
		}
	})
	for _, ns := range servers {
		if !ns.ReadyForConnections(10 * time.Second) {
			t.Fatal("nats-server not ready")
		}
	}
	waitFor(t, "a JetStream meta leader", 30*time.Second, func() bool {
		for _, ns := range servers {
			if ns.JetStreamIsLeader() {
				return true
			}
		}
		return false
	})
	return servers, strings.Join(urls, ",")
}

// TestClusterNATSLeaderLoss: three collectors on a three-node NATS cluster
// with R3 buckets and stream; the server leading the leases bucket shuts
// down. The election happens within the lease margin: no member loses or
// fences a lease, and downstream nothing is lost, doubled or reordered.
func TestClusterNATSLeaderLoss(t *testing.T) {
	servers, url := startNATSCluster(t)
	tc := testConfig{Name: "natsha", Slots: 1, TTL: 5 * time.Second, Replicas: 3}
	c := newTestCluster(t, url, tc, feedCount(), feedInterval())
	defer c.dump()
	c.startMembers("a", "b", "c")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js := c.nc2js()
	leader := func(stream string) string {
		s, err := js.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		i, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if i.Cluster == nil {
			t.Fatalf("%s: no cluster info", stream)
		}
		return i.Cluster.Leader
	}
	leasesLeader := leader("KV_" + tc.Name + "_leases")
	// Move the stream's leadership to the same server, so that one shutdown
	// costs both their leaders.
	if leader(tc.Name) != leasesLeader {
		req := fmt.Sprintf(`{"placement":{"preferred":%q}}`, leasesLeader)
		if _, err := c.nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+tc.Name, []byte(req), 5*time.Second); err != nil {
			t.Logf("stream leader step-down: %v", err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for leader(tc.Name) != leasesLeader && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
	}
	dataLeader := leader(tc.Name)
	c.w.waitFlowing(t, time.Now(), 30*time.Second) // a step-down stalls the stream briefly
	var victim *server.Server
	for _, ns := range servers {
		if ns.Name() == leasesLeader {
			victim = ns
		}
	}
	c.w.measureGapsFrom()
	i := c.w.mark()
	start := time.Now()
	victim.Shutdown()
	victim.WaitForShutdown()
	waitFor(t, "a new leader of the leases bucket", 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s, err := js.Stream(ctx, "KV_"+tc.Name+"_leases")
		if err != nil {
			return false
		}
		info, err := s.Info(ctx)
		return err == nil && info.Cluster != nil && info.Cluster.Leader != "" && info.Cluster.Leader != leasesLeader
	})
	elected := time.Since(start)
	// Two TTLs: any lease that could not be renewed would be lost by now.
	time.Sleep(2 * tc.TTL)
	c.w.waitFlowing(t, time.Now(), 30*time.Second)
	gaps := c.w.summary()
	_ = i
	st := c.stopAll()
	c.w.waitCaughtUp(t, js, c.admin.StreamName())
	s := c.w.summary()
	var lost, fenced, retries int64
	for n, x := range st {
		t.Logf("member %s: %+v", n, x)
		lost += x.Lost
		fenced += x.Fenced
		retries += x.PublishRetries
	}
	t.Logf("NATS leader loss, %d feeds, TTL %v: shut down %s (leader of the leases bucket; the stream's leader: %s); new leader seen after %v; leases lost %d, fenced %d; publish retries %d; largest gap of any feed %v (p99 %v, median %v); stream %d messages, lost %d, duplicated %d, out of order %d",
		len(c.names), tc.TTL, leasesLeader, dataLeader, elected.Round(time.Millisecond), lost, fenced, retries,
		gaps.worstGap, pct(gaps.gaps, 0.99), pct(gaps.gaps, 0.5), s.messages, s.lost, s.dups, s.ooo)
	if lost != 0 || fenced != 0 {
		t.Errorf("leases lost %d, fenced %d (want 0)", lost, fenced)
	}
	if s.lost != 0 || s.dups != 0 || s.ooo != 0 {
		t.Errorf("downstream: lost %d, duplicated %d, out of order %d (want 0 each)", s.lost, s.dups, s.ooo)
	}
}

// natsServerOpts configures a nats-server child process.
type natsServerOpts struct {
	Name        string `json:"name"`
	Port        int    `json:"port"`
	ClusterPort int    `json:"cluster_port"`
	Routes      string `json:"routes"`
	StoreDir    string `json:"store_dir"`
}

// natsServerMain runs a clustered nats-server in this process until SIGTERM
// (the test binary started with NATSJS_CHILD=natsserver), so that a test can
// kill it with SIGKILL.
func natsServerMain() int {
	var o natsServerOpts
	if err := json.Unmarshal([]byte(os.Getenv("NATSJS_SERVER")), &o); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: o.Name, Host: "127.0.0.1", Port: o.Port,
		JetStream: true, StoreDir: o.StoreDir, NoLog: true, NoSigs: true,
		Cluster: server.ClusterOpts{Name: "natsjs", Host: "127.0.0.1", Port: o.ClusterPort},
		Routes:  server.RoutesFromStr(o.Routes),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		fmt.Fprintln(os.Stderr, "not ready")
		return 2
	}
	fmt.Println("READY")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	ns.Shutdown()
	ns.WaitForShutdown()
	return 0
}

// TestClusterNATSLeaderKill: like TestClusterNATSLeaderLoss, but the nats
// servers are processes and the server leading the leases bucket and the
// stream is killed with SIGKILL (its connections close at once, so the
// others notice at once), or frozen with SIGSTOP (like a machine that lost
// power: its connections stay open, and the others notice only after raft's
// election timeout, 4-9 s by default, so the TTL must cover it). With TTL
// 25 s no lease is lost.
func TestClusterNATSLeaderKill(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGSTOP} {
		t.Run(sig.String(), func(t *testing.T) { natsLeaderFault(t, sig) })
	}
}

func natsLeaderFault(t *testing.T, sig syscall.Signal) {
	ports := freePorts(t, 6)
	var routes, urls []string
	for i := 0; i < 3; i++ {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[3+i]))
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
	}
	servers := map[string]*proc{}
	for i := 0; i < 3; i++ {
		o, _ := json.Marshal(natsServerOpts{
			Name: fmt.Sprintf("n%d", i+1), Port: ports[i], ClusterPort: ports[3+i],
			Routes: strings.Join(routes, ","), StoreDir: t.TempDir(),
		})
		p := &proc{name: fmt.Sprintf("n%d", i+1), done: make(chan struct{})}
		p.cmd = exec.Command(os.Args[0], "-test.run=^$")
		p.cmd.Env = append(os.Environ(), "NATSJS_CHILD=natsserver", "NATSJS_SERVER="+string(o))
		p.cmd.Stdout, p.cmd.Stderr = p, p
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			p.cmd.Wait()
			close(p.done)
		}()
		servers[p.name] = p
	}
	t.Cleanup(func() {
		for _, p := range servers {
			p.cmd.Process.Kill() // a stopped process dies too
			<-p.done
		}
	})
	for _, p := range servers {
		waitFor(t, p.name+" ready", 30*time.Second, func() bool { return strings.Contains(p.output(), "READY") })
	}
	url := strings.Join(urls, ",")
	// JetStream is usable once a meta leader exists.
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
		nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	waitFor(t, "JetStream on the NATS cluster", 60*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := js.AccountInfo(ctx)
		return err == nil
	})

	// A lease survives an outage of TTL/2 at worst (its last renewal may be
	// TTL/4 old, and it is proven until TTL - Margin after it). A frozen
	// leader costs raft's election timeout (4-9 s) plus the clients' ping
	// detection (about 3 s here): TTL 25 s.
	tc := testConfig{Name: "natskill", Slots: 1, TTL: 25 * time.Second, Replicas: 3}
	c := newTestCluster(t, url, tc, feedCount(), feedInterval())
	defer c.dump()
	c.startMembers("a", "b", "c")
	leader := func(stream string) string {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s, err := js.Stream(ctx, stream)
		if err != nil {
			return ""
		}
		i, err := s.Info(ctx)
		if err != nil || i.Cluster == nil {
			return ""
		}
		return i.Cluster.Leader
	}
	leases := "KV_" + tc.Name + "_leases"
	leasesLeader := leader(leases)
	if leader(tc.Name) != leasesLeader {
		req := fmt.Sprintf(`{"placement":{"preferred":%q}}`, leasesLeader)
		nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+tc.Name, []byte(req), 5*time.Second)
		deadline := time.Now().Add(10 * time.Second)
		for leader(tc.Name) != leasesLeader && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
	}
	dataLeader := leader(tc.Name)
	c.w.waitFlowing(t, time.Now(), 30*time.Second) // a step-down stalls the stream briefly
	victim := servers[leasesLeader]
	if victim == nil {
		t.Fatalf("leases leader %q unknown", leasesLeader)
	}
	c.w.measureGapsFrom()
	start := time.Now()
	c.w.mu.Lock()
	c.w.hist, c.w.histFrom = map[int]int{}, start.Add(-2*time.Second)
	c.w.mu.Unlock()
	victim.cmd.Process.Signal(sig)
	if sig == syscall.SIGKILL {
		<-victim.done
	}
	waitFor(t, "a new leader of the leases bucket", 60*time.Second, func() bool {
		l := leader(leases)
		return l != "" && l != leasesLeader
	})
	elected := time.Since(start)
	waitFor(t, "a new leader of the stream", 60*time.Second, func() bool {
		l := leader(tc.Name)
		return l != "" && l != leasesLeader
	})
	dataElected := time.Since(start)
	// One more renewal round on the new leader settles every lease.
	time.Sleep(tc.TTL / 2)
	c.w.waitFlowing(t, time.Now(), 30*time.Second)
	gaps := c.w.summary()
	c.w.mu.Lock()
	var hs []string
	for i := 0; i < 40; i++ {
		hs = append(hs, fmt.Sprint(c.w.hist[i]))
	}
	c.w.mu.Unlock()
	t.Logf("messages stored per 500 ms from 2 s before the signal: %s", strings.Join(hs, " "))
	st := c.stopAll()
	c.w.waitCaughtUp(t, js, c.admin.StreamName())
	s := c.w.summary()
	var lost, fenced, retries int64
	for n, x := range st {
		t.Logf("member %s: %+v", n, x)
		lost += x.Lost
		fenced += x.Fenced
		retries += x.PublishRetries
	}
	t.Logf("NATS leader %v, %d feeds, TTL %v: signalled %s (leader of the leases bucket; the stream's: %s); stream info named new leaders after %v (leases) and %v (stream); leases lost %d, fenced %d; publish retries %d; largest gap of any feed %v (p99 %v, median %v); stream %d messages, lost %d, duplicated %d, out of order %d",
		sig, len(c.names), tc.TTL, leasesLeader, dataLeader, elected.Round(time.Millisecond), dataElected.Round(time.Millisecond),
		lost, fenced, retries, gaps.worstGap, pct(gaps.gaps, 0.99), pct(gaps.gaps, 0.5), s.messages, s.lost, s.dups, s.ooo)
	if lost != 0 || fenced != 0 {
		t.Errorf("leases lost %d, fenced %d (want 0)", lost, fenced)
	}
	if s.lost != 0 || s.dups != 0 || s.ooo != 0 {
		t.Errorf("downstream: lost %d, duplicated %d, out of order %d (want 0 each)", s.lost, s.dups, s.ooo)
	}
}

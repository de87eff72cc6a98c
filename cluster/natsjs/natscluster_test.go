//go:build unix

package natsjs_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
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

//go:build unix

package natsjs_test

import (
	"io"
	"net"
	"sync"
	"testing"
)

// partitionProxy is a TCP proxy between a member and NATS that can cut the
// member off like a network partition: while partitioned it forwards
// nothing in either direction but keeps every connection open and holds
// what it has read (bytes in flight, which TCP would retransmit), and new
// connections are accepted but get nothing through. When the partition
// heals, everything held is delivered, however old: the publishes the
// member sent before it noticed reach the server late, on the connection
// they were sent on.
type partitionProxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	cut    bool
	healed chan struct{} // closed when a partition ends
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func startPartitionProxy(t *testing.T, target string) *partitionProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &partitionProxy{ln: ln, target: target, healed: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	close(p.healed)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// URL is the nats:// URL of the proxy.
func (p *partitionProxy) URL() string { return "nats://" + p.ln.Addr().String() }

// partition cuts the member off; heal delivers what was held and forwards
// again.
func (p *partitionProxy) partition() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.cut {
		p.cut, p.healed = true, make(chan struct{})
	}
}

func (p *partitionProxy) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		p.cut = false
		close(p.healed)
	}
}

// wait returns once the link is up.
func (p *partitionProxy) wait() {
	p.mu.Lock()
	ch := p.healed
	p.mu.Unlock()
	<-ch
}

func (p *partitionProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *partitionProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		if !p.track(c) || !p.track(u) {
			c.Close()
			u.Close()
			return
		}
		p.wg.Add(2)
		go p.pipe(c, u)
		go p.pipe(u, c)
	}
}

// pipe copies src to dst, holding each chunk read while partitioned until
// the partition heals; at src's end it closes dst (after delivering).
func (p *partitionProxy) pipe(src, dst net.Conn) {
	defer p.wg.Done()
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.wait()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				return
			}
			p.wait()
			return
		}
	}
}

func (p *partitionProxy) close() {
	p.ln.Close()
	p.heal()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

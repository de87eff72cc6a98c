package wspooltest

import (
	"time"

	"github.com/wspool/wspool/internal/faultproxy"
)

// Proxy is a TCP proxy on a free port of 127.0.0.1 that forwards every
// connection to a target address and injects faults into them on demand.
// Faults apply to open and future connections alike.
type Proxy struct {
	p *faultproxy.Proxy
}

// NewProxy starts a proxy forwarding to target ("host:port", such as
// Server.Addr), passing data through with no fault.
func NewProxy(target string) (*Proxy, error) {
	p, err := faultproxy.New(target)
	if err != nil {
		return nil, err
	}
	return &Proxy{p: p}, nil
}

// Addr returns the "127.0.0.1:port" to dial instead of the target: a
// WebSocket URL through the proxy is "ws://" + Addr() + path.
func (p *Proxy) Addr() string { return p.p.Addr() }

// Reset aborts every open connection with a TCP reset to both sides.
func (p *Proxy) Reset() { p.p.ResetAll() }

// Blackhole(true) stops forwarding while keeping every socket open: the
// client's writes are acknowledged by the kernel and nothing comes back, as
// with a stuck middlebox or a peer gone without a trace. Only the client's
// own liveness checks (pings and a pong timeout) notice. Blackhole(false)
// forwards again, losing nothing held meanwhile.
func (p *Proxy) Blackhole(on bool) {
	if on {
		p.p.SetMode(faultproxy.Blackhole)
	} else {
		p.p.SetMode(faultproxy.PassThrough)
	}
}

// Latency delays everything forwarded, in each direction, by d. Zero removes
// the delay.
func (p *Proxy) Latency(d time.Duration) { p.p.SetLatency(d) }

// Throttle limits each direction of each connection to about bytesPerSec
// bytes per second. Zero removes the limit.
func (p *Proxy) Throttle(bytesPerSec int) { p.p.SetBandwidth(bytesPerSec) }

// Refuse(true) makes the proxy reset every new connection at once, like a
// server that is down; open connections are not affected. Refuse(false)
// accepts connections again.
func (p *Proxy) Refuse(on bool) { p.p.SetRefuse(on) }

// Conns returns how many proxied connections are open.
func (p *Proxy) Conns() int { return p.p.ConnCount() }

// Close stops the proxy, resets every open connection and returns once
// nothing of it is left running.
func (p *Proxy) Close() error { return p.p.Close() }

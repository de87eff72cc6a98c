package wspool

import (
	"net"
	"time"
)

// KeepAlive configures TCP keepalive on every socket a feed dials (also the
// socket to an HTTP proxy, and sockets from a user-supplied Dialer's
// NetDialContext). The zero value means the defaults: Idle
// DefaultKeepAliveIdle, Interval DefaultKeepAliveInterval, Count
// DefaultKeepAliveCount. A negative field leaves the operating system's value.
type KeepAlive struct {
	// Disable turns TCP keepalive off for the feed.
	Disable bool
	// Idle is the time a connection must be idle before the first probe.
	Idle time.Duration
	// Interval is the time between unanswered probes.
	Interval time.Duration
	// Count is the number of unanswered probes before the connection is dropped.
	Count int
	// UserTimeout sets TCP_USER_TIMEOUT (Linux only; ignored elsewhere): the
	// longest time written data may stay unacknowledged before the kernel drops
	// the connection, instead of its default of about 15 minutes of
	// retransmissions. Zero means Idle+Interval*Count; negative leaves it unset.
	UserTimeout time.Duration
}

// userTimeout resolves KeepAlive.UserTimeout; <= 0 means leave unset.
func (ka KeepAlive) userTimeout() time.Duration {
	if ka.Disable || ka.UserTimeout < 0 {
		return 0
	}
	if ka.UserTimeout > 0 {
		return ka.UserTimeout
	}
	if ka.Idle < 0 || ka.Interval < 0 || ka.Count < 0 {
		return 0
	}
	return ka.Idle + ka.Interval*time.Duration(ka.Count)
}

// tcpConnOf finds the *net.TCPConn under conn, unwrapping TLS and wspool's own
// wrapper; nil if there is none (a unix socket, a user's custom conn).
func tcpConnOf(conn net.Conn) *net.TCPConn {
	for i := 0; i < 8 && conn != nil; i++ {
		switch c := conn.(type) {
		case *net.TCPConn:
			return c
		case interface{ NetConn() net.Conn }:
			conn = c.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// setPortableKeepAlive applies the part of ka that every platform supports.
func setPortableKeepAlive(tc *net.TCPConn, ka KeepAlive) error {
	if ka.Disable {
		return tc.SetKeepAlive(false)
	}
	return tc.SetKeepAliveConfig(net.KeepAliveConfig{
		Enable:   true,
		Idle:     ka.Idle,
		Interval: ka.Interval,
		Count:    ka.Count,
	})
}

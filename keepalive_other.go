//go:build !linux

package wspool

import (
	"fmt"
	"net"
)

// tuneSocket applies TCP keepalive (idle, interval, count) through
// net.KeepAliveConfig. TCP_USER_TIMEOUT is Linux-only and is not set here.
func tuneSocket(conn net.Conn, ka KeepAlive) error {
	tc := tcpConnOf(conn)
	if tc == nil {
		return nil
	}
	if err := setPortableKeepAlive(tc, ka); err != nil {
		return fmt.Errorf("wspool: set keepalive: %w", err)
	}
	return nil
}

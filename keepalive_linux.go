//go:build linux

package wspool

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// tuneSocket applies TCP keepalive and TCP_USER_TIMEOUT to the TCP socket
// under conn. TCP_USER_TIMEOUT bounds how long unacknowledged writes may hang
// (the kernel's default is about 15 minutes of retransmissions) and, while
// keepalive probes go unanswered, how long the connection survives.
func tuneSocket(conn net.Conn, ka KeepAlive) error {
	tc := tcpConnOf(conn)
	if tc == nil {
		return nil
	}
	if err := setPortableKeepAlive(tc, ka); err != nil {
		return fmt.Errorf("wspool: set keepalive: %w", err)
	}
	ut := ka.userTimeout()
	if ut <= 0 {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return fmt.Errorf("wspool: set TCP_USER_TIMEOUT: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(ut.Milliseconds()))
	}); err != nil {
		return fmt.Errorf("wspool: set TCP_USER_TIMEOUT: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("wspool: set TCP_USER_TIMEOUT: %w", serr)
	}
	return nil
}

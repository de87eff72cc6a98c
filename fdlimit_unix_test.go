//go:build unix

package wspool_test

import (
	"syscall"
	"testing"
)

// raiseFDLimit raises the soft fd limit to the hard one and skips the test if
// that is still below want.
func raiseFDLimit(t *testing.T, want uint64) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Skip("no rlimit:", err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	if rl.Cur < want {
		t.Skipf("fd limit %d below the %d this test needs", rl.Cur, want)
	}
}

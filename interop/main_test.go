//go:build linux

package interop

import (
	"os"
	"testing"
)

// TestMain runs the test binary as a dial child when the environment-proxy
// tests re-execute it (proxy_test.go), else the tests.
func TestMain(m *testing.M) {
	if mode := os.Getenv(childModeEnv); mode != "" {
		os.Exit(dialChild(mode))
	}
	os.Exit(m.Run())
}

//go:build !unix

package wspool_test

import "testing"

// raiseFDLimit: no rlimit here; the test runs with what the system allows.
func raiseFDLimit(t *testing.T, want uint64) {}

//go:build !unix

package sysstat

import (
	"errors"
	"time"
)

// CPUTime is not available on this platform; it returns 0.
func CPUTime() time.Duration { return 0 }

// RaiseFDLimit is not available on this platform.
func RaiseFDLimit() (uint64, error) { return 0, errors.New("sysstat: no rlimit on this platform") }

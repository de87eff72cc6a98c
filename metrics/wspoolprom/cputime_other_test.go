//go:build !unix

package wspoolprom_test

import (
	"testing"
	"time"
)

// cpuTime is not measured here: TestScrape10000Feeds logs 0 CPU.
func cpuTime(testing.TB) time.Duration { return 0 }

package wspool

import (
	"context"
	"testing"
	"time"

	"github.com/wspool/wspool/internal/wstest"
)

// runInternal runs c until the test ends, then stops it and waits for Run.
func runInternal(t *testing.T, c *Client) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-errc
	})
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := wstest.WaitFor(context.Background(), timeout, cond); err != nil {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

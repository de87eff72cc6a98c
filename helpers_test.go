package wspool_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/leakcheck"
	"github.com/wspool/wspool/internal/wstest"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

func newServer(t *testing.T, h wstest.ConnHandler) *wstest.Server {
	t.Helper()
	s, err := wstest.New(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// events records a feed's state changes and lets a test wait for them.
type events struct {
	mu  sync.Mutex
	all []wspool.StateChange
	ch  chan struct{} // pinged on every change
}

func newEvents() *events { return &events{ch: make(chan struct{}, 1)} }

func (e *events) record(sc wspool.StateChange) {
	e.mu.Lock()
	e.all = append(e.all, sc)
	e.mu.Unlock()
	select {
	case e.ch <- struct{}{}:
	default:
	}
}

func (e *events) option() wspool.Option { return wspool.WithOnStateChange(e.record) }

func (e *events) snapshot() []wspool.StateChange {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]wspool.StateChange(nil), e.all...)
}

// count returns how many transitions into state have been seen.
func (e *events) count(state wspool.State) int {
	n := 0
	for _, sc := range e.snapshot() {
		if sc.To == state {
			n++
		}
	}
	return n
}

// waitCount waits until at least n transitions into state were seen.
func (e *events) waitCount(t *testing.T, state wspool.State, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for e.count(state) < n {
		select {
		case <-e.ch:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %d transitions to %v; saw %d: %v", timeout, n, state, e.count(state), e.snapshot())
		}
	}
}

// runClient runs c in the background; the returned func cancels it and
// returns Run's error.
func runClient(t *testing.T, c *wspool.Client) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-errc:
			case <-time.After(20 * time.Second):
				t.Errorf("Run did not return after cancel")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := wstest.WaitFor(context.Background(), timeout, cond); err != nil {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// recv waits for one value from ch.
func recv[T any](t *testing.T, ch <-chan T, timeout time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(timeout):
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
	var zero T
	return zero
}

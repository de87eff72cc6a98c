package wspool_test

import (
	"context"
	"testing"
	"time"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/wstest"
)

// BenchmarkSendWritePath: Client.Send of a 64-byte message on a connected
// feed to a server that drains (pacing off): the cost of the
// write path, compared before and after a change to it.
func BenchmarkSendWritePath(b *testing.B) {
	srv, err := wstest.New(wstest.Drain)
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	c, err := wspool.NewClient(srv.URL("/"), nil, wspool.WithPingInterval(0))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	if err := wstest.WaitFor(ctx, 10*time.Second, func() bool { return c.State() == wspool.StateConnected }); err != nil {
		b.Fatal(err)
	}
	msg := make([]byte, 64)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := c.Send(ctx, wspool.TextMessage, msg); err != nil {
			b.Fatal(err)
		}
	}
}

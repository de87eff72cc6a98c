//go:build unix

package natsjs_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestDedupeMemory measures what JetStream's duplicate window costs per
// message id held, on the embedded server: the heap after publishing the
// same messages to a stream with ids and to one without. Set
// NATSJS_MEASURE=1 to run it.
func TestDedupeMemory(t *testing.T) {
	if os.Getenv("NATSJS_MEASURE") == "" {
		t.Skip("a measurement: set NATSJS_MEASURE=1")
	}
	const n = 200000
	ns := startNATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	fill := func(name string, ids bool) uint64 {
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
			Name: name, Subjects: []string{name + ".>"}, Storage: jetstream.MemoryStorage, Duplicates: time.Hour,
		}); err != nil {
			t.Fatal(err)
		}
		before := heap()
		for i := 0; i < n; i++ {
			subj := fmt.Sprintf("%s.feed.f%04d", name, i%1000)
			var opts []jetstream.PublishOpt
			if ids {
				opts = append(opts, jetstream.WithMsgID(fmt.Sprintf("f%04d:%d", i%1000, i)))
			}
			if _, err := js.PublishAsync(subj, []byte("12345678"), opts...); err != nil {
				t.Fatal(err)
			}
			if i%5000 == 4999 {
				<-js.PublishAsyncComplete()
			}
		}
		<-js.PublishAsyncComplete()
		return heap() - before
	}
	without := fill("plain", false)
	with := fill("dedupe", true)
	per := float64(int64(with)-int64(without)) / n
	t.Logf("%d messages: heap grew %d KiB without ids, %d KiB with ids (\"f0123:123456\"): %.0f B per id in the duplicate window",
		n, without>>10, with>>10, per)
}

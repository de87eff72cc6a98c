package runner

import (
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"time"
)

// garbageNode is a pointer-bearing object of the GC load's live heap.
type garbageNode struct {
	next *garbageNode
	_    [6]uint64
}

// GCLoad allocates garbage at a steady rate on one goroutine, the way a
// busy service does beside its feeds, and keeps a live heap of pointers
// that every collection has to mark.
type GCLoad struct {
	stop chan struct{}
	done sync.WaitGroup
}

// StartGCLoad builds a live heap of live bytes of 64-byte linked nodes,
// then starts allocating rate bytes per second of short-lived 1 KiB pointer
// slices.
func StartGCLoad(rate, live int) *GCLoad {
	g := &GCLoad{stop: make(chan struct{})}
	// The live heap is built before the load starts, so that the first
	// measurement does not pay for it.
	var head *garbageNode
	for range live / 64 {
		head = &garbageNode{next: head}
	}
	g.done.Go(func() {
		const objSize = 1024
		ring := make([][]*byte, 256) // the last 256 KiB of garbage stays reachable for a moment
		k := 0
		start := time.Now()
		var made int64
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-g.stop:
				runtime.KeepAlive(head)
				return
			case <-t.C:
			}
			due := int64(time.Since(start).Seconds()*float64(rate)) - made
			for ; due > 0; due -= objSize {
				ring[k%len(ring)] = make([]*byte, objSize/8)
				k++
				made += objSize
			}
		}
	})
	return g
}

// Stop stops the allocations and waits for the goroutine.
func (g *GCLoad) Stop() {
	close(g.stop)
	g.done.Wait()
}

// GCSettings describes the collector's settings: GOGC and GOMEMLIMIT as the
// runtime applies them.
func GCSettings() string {
	gogc := debug.SetGCPercent(-1)
	debug.SetGCPercent(gogc)
	limit := debug.SetMemoryLimit(-1)
	gs := strconv.Itoa(gogc)
	if gogc < 0 {
		gs = "off"
	}
	if os.Getenv("GOGC") == "" {
		gs += " (default)"
	}
	ls := "none"
	if limit != 1<<63-1 {
		ls = strconv.FormatInt(limit, 10) + " bytes"
	}
	return "GOGC=" + gs + ", GOMEMLIMIT=" + ls
}

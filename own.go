package wspool

import (
	"runtime"
	"sync"
)

// The library's own goroutines.
//
// Every callback may call every exported method, and Close, Pool.Remove and
// Pool.Close wait for a feed's goroutines to end; a blocking Send may wait
// for a connection. Called from one of the library's own goroutines (one that
// runs a callback: a feed's reader and reconnect loop, its queue's handler
// goroutine, a rotation, the send-buffer flush, a heartbeat or expiry timer),
// such a wait could be a wait for itself, directly or through another feed
// whose callback waits for this one. So these goroutines are registered while
// they run, and the waiting methods look the caller up: from an own goroutine
// Close starts the shutdown and returns without waiting for it, and Send
// never waits for a connection (see their docs).
//
// Go has no goroutine identity; the id is read from runtime.Stack's first
// line ("goroutine 123 [running]:"). That costs about a microsecond, so it is
// done once per goroutine start and on the rare paths that need it, never per
// message.

const ownShards = 16

var ownGoroutines [ownShards]struct {
	mu sync.Mutex
	m  map[uint64]int32
}

// goroutineID returns the calling goroutine's id, or 0 if it cannot be read.
func goroutineID() uint64 {
	var buf [40]byte
	b := buf[:runtime.Stack(buf[:], false)]
	const prefix = "goroutine "
	if len(b) < len(prefix) || string(b[:len(prefix)]) != prefix {
		return 0
	}
	var id uint64
	for _, ch := range b[len(prefix):] {
		if ch < '0' || ch > '9' {
			break
		}
		id = id*10 + uint64(ch-'0')
	}
	return id
}

// markOwn registers the calling goroutine as one of the library's own until
// unmarkOwn(id) with the returned id. Marks nest.
func markOwn() uint64 {
	id := goroutineID()
	if id == 0 {
		return 0
	}
	s := &ownGoroutines[id%ownShards]
	s.mu.Lock()
	if s.m == nil {
		s.m = make(map[uint64]int32)
	}
	s.m[id]++
	s.mu.Unlock()
	return id
}

func unmarkOwn(id uint64) {
	if id == 0 {
		return
	}
	s := &ownGoroutines[id%ownShards]
	s.mu.Lock()
	if s.m[id]--; s.m[id] <= 0 {
		delete(s.m, id)
	}
	s.mu.Unlock()
}

// onOwnGoroutine reports whether the caller is one of the library's own
// goroutines (and so, if it called into the library, inside a callback).
func onOwnGoroutine() bool {
	id := goroutineID()
	if id == 0 {
		return false
	}
	s := &ownGoroutines[id%ownShards]
	s.mu.Lock()
	_, ok := s.m[id]
	s.mu.Unlock()
	return ok
}

// goOwn runs f on a new goroutine registered as the library's own.
func goOwn(f func()) {
	go func() {
		id := markOwn()
		defer unmarkOwn(id)
		f()
	}()
}

// Package leakcheck finds goroutines left behind by tests: any goroutine with
// a frame in wspool, gorilla/websocket or an HTTP server connection after all
// tests have finished is a leak.
package leakcheck

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

var suspects = []string{
	"github.com/wspool/wspool",
	"github.com/gorilla/websocket",
	"net/http.(*conn).serve",
	"net/http.(*persistConn)",
}

// Stacks returns the stack of every goroutine, the caller's first.
func Stacks() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	return strings.Split(string(buf), "\n\n")
}

// Leaked returns the stacks of suspect goroutines other than the caller's.
func Leaked() []string {
	var out []string
	for i, g := range Stacks() {
		if i == 0 || strings.Contains(g, "internal/leakcheck.") {
			continue // the first block is the calling goroutine
		}
		for _, s := range suspects {
			if strings.Contains(g, s) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

// Wait polls until no suspect goroutine is left or the timeout passes, and
// returns what is left.
func Wait(timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		l := Leaked()
		if len(l) == 0 || time.Now().After(deadline) {
			return l
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Main runs the tests and then fails the binary if goroutines leaked. Use it
// as TestMain: func TestMain(m *testing.M) { leakcheck.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if l := Wait(10 * time.Second); len(l) > 0 {
			fmt.Fprintf(os.Stderr, "leakcheck: %d goroutine(s) left after tests:\n\n%s\n", len(l), strings.Join(l, "\n\n"))
			code = 1
		}
	}
	os.Exit(code)
}

// Package examples holds wspool's runnable example programs, one per
// directory, and a test (examples_test.go) that builds and runs each of them
// briefly. Every program starts its own WebSocket server(s) on 127.0.0.1, so
// none of them needs a network:
//
//	go run ./examples/demo                  live status table of three feeds (Ctrl-C to stop)
//	go run ./examples/resume                resume from the last sequence across server restarts
//	go run ./examples/heartbeats            app-level heartbeats with their own interval per feed
//	go run ./examples/tail --demo           tail feeds as JSON lines (or: tail [--raw] URL...)
//	go run ./examples/backpressure          the three queue overflow policies against a fast server
//	cd examples/prometheus && go run .      Pool.Stats and timings as Prometheus metrics (metrics/wspoolprom) on 127.0.0.1:9464/metrics
//
// The Prometheus example is a separate module (its client_golang dependency
// stays out of the library's go.mod).
//
// Each program's doc comment (go doc ./examples/demo) says what it shows and
// lists its flags.
package examples

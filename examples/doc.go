// Package examples holds wspool's runnable example programs, one per
// directory, and a test (examples_test.go) that builds and runs each of them
// briefly. Every program starts its own WebSocket server(s) on 127.0.0.1, so
// none of them needs a network:
//
// Four run until Ctrl-C unless given -duration; the others stop by
// themselves after a bounded run and print their checks:
//
//	go run ./examples/demo [-duration 30s]        live status table of three feeds riding through drops and refusals (until Ctrl-C)
//	go run ./examples/heartbeats [-duration 30s]  app-level heartbeats with their own interval per feed (until Ctrl-C)
//	go run ./examples/tail --demo [-duration 30s] tail feeds as JSON lines, or: tail [--raw] URL... (until Ctrl-C)
//	cd examples/prometheus && go run . [-duration 1m]
//	                                              Pool.Stats and timings as Prometheus metrics (metrics/wspoolprom) on 127.0.0.1:9464/metrics (until Ctrl-C)
//	go run ./examples/resume                      resume from the last sequence across server restarts
//	go run ./examples/backpressure                the three queue overflow policies against a fast server (5s; -duration)
//	go run ./examples/standby                     a hot standby connection losing connections with zero gaps
//	go run ./examples/topics                      5,000 topics spread over feeds with a cap of 1,024 each (package topics)
//	go run ./examples/orderbook                   an order book kept as snapshot plus numbered diffs through faults (package syncstate; 10s, -duration)
//
// The Prometheus example is a separate module (its client_golang dependency
// stays out of the library's go.mod).
//
// Each program's doc comment (go doc ./examples/demo) says what it shows and
// lists its flags.
package examples

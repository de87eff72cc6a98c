// Command firehose is a WebSocket server for benchmarking clients: after the
// handshake it streams pre-encoded frames in large batches (so the client is
// the bottleneck), or stays idle answering pings, or echoes. See package
// github.com/wspool/wspool/bench/internal/firehose.
//
//	firehose -addr 127.0.0.1:9000 -size 64            # stream 64-byte messages
//	firehose -addr 127.0.0.1:9000 -size 64 -rate 1000 # 1000 msgs/s per connection
//	firehose -addr 127.0.0.1:9000 -mode idle          # accept, answer pings
//	firehose -addr 127.0.0.1:9000 -mode echo          # echo every message
//
// Each connection may override the flags in its URL query, e.g.
// ws://127.0.0.1:9000/?mode=firehose&size=4096&count=100000. GET /stats
// returns the counters (connections, handshakes in flight and their peak).
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/wspool/wspool/bench/internal/firehose"
)

func main() {
	if err := firehose.Main("firehose", os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "firehose:", err)
		os.Exit(1)
	}
}

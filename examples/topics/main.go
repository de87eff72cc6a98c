// Command topics spreads thousands of market-data topics over as many
// connections as an upstream's per-connection cap needs, with package topics:
// an embedded local server (wspooltest) speaks a Binance-like protocol
// ({"method":"SUBSCRIBE","params":[...],"id":N}, answered {"id":N} or {"id":N,"error":"..."}),
// caps topics per connection (a subscription over the cap is rejected) and
// sends one update per topic once subscribed. The program subscribes 5,000
// topics at a cap of 1,024, prints how they were spread, drops the
// connections (each feed resubscribes its topics on its new one), changes the
// set while running, and checks that every topic delivered each time. No
// network is used.
//
//	go run ./examples/topics [-topics 5000] [-cap 1024]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/topics"
	"github.com/wspool/wspool/wspooltest"
)

func main() {
	n := flag.Int("topics", 5000, "topics to subscribe")
	limit := flag.Int("cap", 1024, "topics per connection (the server's cap and the set's)")
	flag.Parse()
	if err := run(*n, *limit); err != nil {
		fmt.Println("FAIL:", err)
		os.Exit(1)
	}
}

// request and answer are the wire format.
type request struct {
	Method string   `json:"method"`
	Params []string `json:"params"`
	ID     uint64   `json:"id"`
}

type answer struct {
	ID     uint64 `json:"id,omitempty"`
	Error  string `json:"error,omitempty"`
	Stream string `json:"stream,omitempty"`
	Price  int    `json:"price,omitempty"`
}

// server is the embedded upstream.
type server struct {
	cap      int
	mu       sync.Mutex
	most     int // most topics seen on one connection
	rejected int
}

func (s *server) serve(c *wspooltest.Conn) {
	subs := map[string]bool{}
	for {
		_, data, err := c.Read(context.Background())
		if err != nil {
			return
		}
		var req request
		if json.Unmarshal(data, &req) != nil {
			continue
		}
		ans := answer{ID: req.ID}
		var updates []string
		s.mu.Lock()
		switch req.Method {
		case "UNSUBSCRIBE":
			for _, p := range req.Params {
				delete(subs, p)
			}
		case "SUBSCRIBE":
			n := len(subs)
			for _, p := range req.Params {
				if !subs[p] {
					n++
				}
			}
			if n > s.cap {
				ans.Error = fmt.Sprintf("too many streams: %d, limit %d", n, s.cap)
				s.rejected++
				break
			}
			for _, p := range req.Params {
				subs[p] = true
			}
			s.most = max(s.most, len(subs))
			updates = req.Params
		}
		s.mu.Unlock()
		b, _ := json.Marshal(ans)
		if c.SendText(string(b)) != nil {
			return
		}
		for i, p := range updates {
			b, _ := json.Marshal(answer{Stream: p, Price: 100 + i})
			if c.SendText(string(b)) != nil {
				return
			}
		}
	}
}

// tally counts the updates of each topic.
type tally struct {
	mu     sync.Mutex
	counts map[string]int
}

func (t *tally) add(topic string) {
	t.mu.Lock()
	t.counts[topic]++
	t.mu.Unlock()
}

// waitAll waits until every topic has at least min updates.
func (t *tally) waitAll(topics []string, min int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		t.mu.Lock()
		missing := 0
		for _, tp := range topics {
			if t.counts[tp] < min {
				missing++
			}
		}
		t.mu.Unlock()
		if missing == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d topics without update %d after %v", missing, len(topics), min, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func topicName(i int) string { return fmt.Sprintf("sym%04d@trade", i) }

func run(n, limit int) error {
	up := &server{cap: limit}
	srv, err := wspooltest.NewServer(up.serve)
	if err != nil {
		return err
	}
	defer srv.Close()

	pool, err := wspool.NewPool(wspool.WithBackoff(20*time.Millisecond, 200*time.Millisecond))
	if err != nil {
		return err
	}
	got := &tally{counts: map[string]int{}}
	var errMu sync.Mutex
	var topicErrs []error
	set, err := topics.New(pool, topics.Config{
		URL:   srv.URL("/ws"),
		Name:  "md",
		Cap:   limit,
		Batch: 256, // topics per SUBSCRIBE message
		Subscribe: func(id uint64, params []string) (wspool.MessageType, []byte) {
			b, _ := json.Marshal(request{Method: "SUBSCRIBE", Params: params, ID: id})
			return wspool.TextMessage, b
		},
		Unsubscribe: func(id uint64, params []string) (wspool.MessageType, []byte) {
			b, _ := json.Marshal(request{Method: "UNSUBSCRIBE", Params: params, ID: id})
			return wspool.TextMessage, b
		},
		Ack: func(m wspool.Message) (uint64, bool, error) {
			var a answer
			if json.Unmarshal(m.Data, &a) != nil || a.ID == 0 {
				return 0, false, nil
			}
			if a.Error != "" {
				return a.ID, true, errors.New(a.Error)
			}
			return a.ID, true, nil
		},
		AckTimeout: 10 * time.Second,
		Handler: func(_ context.Context, m wspool.Message) error {
			var a answer
			if err := json.Unmarshal(m.Data, &a); err != nil {
				return err
			}
			got.add(a.Stream)
			return nil
		},
		// Upstreams also limit incoming messages per connection (Binance: 5
		// per second); every connection's replay goes through the pacing.
		Options: []wspool.Option{wspool.WithSendPacing(wspool.SendPacing{Messages: 5, Per: time.Second})},
		OnError: func(err error) {
			errMu.Lock()
			topicErrs = append(topicErrs, err)
			errMu.Unlock()
		},
	})
	if err != nil {
		return err
	}

	all := make([]string, n)
	for i := range all {
		all[i] = topicName(i)
	}
	if err := set.Add(all...); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- pool.Run(ctx) }()

	start := time.Now()
	if err := got.waitAll(all, 1, 60*time.Second); err != nil {
		return err
	}
	assign := set.Assignment()
	fmt.Printf("%d topics at a cap of %d over %d feeds (all delivering after %v):\n", n, limit, len(assign), time.Since(start).Round(time.Millisecond))
	for i := 1; i <= len(assign); i++ {
		name := fmt.Sprintf("md-%d", i)
		tps := assign[name]
		fmt.Printf("  %s: %d topics (%s .. %s)\n", name, len(tps), tps[0], tps[len(tps)-1])
	}

	// Every connection lost: each feed reconnects and subscribes its share
	// again, through the pacing.
	var dropped int
	for _, c := range srv.Conns() {
		c.Drop()
		dropped++
	}
	if err := got.waitAll(all, 2, 60*time.Second); err != nil {
		return fmt.Errorf("after dropping %d connections: %w", dropped, err)
	}
	fmt.Printf("dropped all %d connections: every feed resubscribed its topics, all %d delivering again\n", dropped, n)

	// Live changes: 100 topics out, 100 new ones in (into the room freed).
	removed := all[:100]
	set.Remove(removed...)
	added := make([]string, 100)
	for i := range added {
		added[i] = topicName(n + i)
	}
	if err := set.Add(added...); err != nil {
		return err
	}
	if err := got.waitAll(added, 1, 60*time.Second); err != nil {
		return fmt.Errorf("after the live change: %w", err)
	}
	for deadline := time.Now().Add(30 * time.Second); set.Unconfirmed() > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d topics unconfirmed after the live change", set.Unconfirmed())
		}
	}
	after := set.Assignment()
	total := 0
	for _, tps := range after {
		total += len(tps)
	}
	fmt.Printf("live change: removed %d, added %d: %d topics on %d feeds; the new ones went to %s\n",
		len(removed), len(added), total, len(after), feedOf(after, added[0]))

	cancel()
	if err := <-runErr; err != nil {
		return err
	}
	up.mu.Lock()
	most, rejected := up.most, up.rejected
	up.mu.Unlock()
	errMu.Lock()
	defer errMu.Unlock()
	if len(topicErrs) > 0 {
		return fmt.Errorf("topic errors: %v", topicErrs)
	}
	if most > limit || rejected > 0 || total != n {
		return fmt.Errorf("most %d topics on a connection, %d rejected, %d topics in the set", most, rejected, total)
	}
	fmt.Printf("OK: every one of %d topics delivered, at most %d per connection, 0 rejected\n", n, most)
	return nil
}

func feedOf(a map[string][]string, topic string) string {
	for name, tps := range a {
		for _, tp := range tps {
			if tp == topic {
				return name
			}
		}
	}
	return "nowhere"
}

package topics_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/topics"
	"github.com/wspool/wspool/wspooltest"
)

// Five topics at a cap of two per connection take three feeds. The upstream
// here answers "sub <id> <topic,...>" with "ok <id>" (or "err <id>" for a
// topic it does not know) and then sends one update per topic.
func Example() {
	srv, err := wspooltest.NewServer(func(c *wspooltest.Conn) {
		for {
			_, data, err := c.Read(context.Background())
			if err != nil {
				return
			}
			var id uint64
			var list string
			if _, err := fmt.Sscanf(string(data), "sub %d %s", &id, &list); err != nil {
				continue
			}
			if strings.Contains(list, "bogus") {
				c.SendText(fmt.Sprintf("err %d", id))
				continue
			}
			c.SendText(fmt.Sprintf("ok %d", id))
			for _, tp := range strings.Split(list, ",") {
				c.SendText(`{"topic":"` + tp + `"}`)
			}
		}
	})
	if err != nil {
		panic(err)
	}
	defer srv.Close()

	pool, err := wspool.NewPool()
	if err != nil {
		panic(err)
	}
	updates := make(chan string, 10)
	set, err := topics.New(pool, topics.Config{
		URL:  srv.URL("/ws"),
		Name: "md",
		Cap:  2,
		Subscribe: func(id uint64, tps []string) (wspool.MessageType, []byte) {
			return wspool.TextMessage, fmt.Appendf(nil, "sub %d %s", id, strings.Join(tps, ","))
		},
		// Answers are matched to their requests by id, and not handed to
		// Handler.
		Ack: func(m wspool.Message) (id uint64, isAck bool, err error) {
			var word string
			if _, err := fmt.Sscanf(string(m.Data), "%s %d", &word, &id); err != nil {
				return 0, false, nil
			}
			if word == "err" {
				return id, true, errors.New("unknown topic")
			}
			return id, true, nil
		},
		Handler: func(_ context.Context, m wspool.Message) error {
			var u struct{ Topic string }
			if err := json.Unmarshal(m.Data, &u); err != nil {
				return err
			}
			updates <- u.Topic
			return nil
		},
	})
	if err != nil {
		panic(err)
	}
	if err := set.Add("a", "b", "c", "d", "e"); err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- pool.Run(ctx) }()

	for range 5 {
		<-updates
	}
	for set.Unconfirmed() > 0 {
		time.Sleep(time.Millisecond)
	}
	a := set.Assignment()
	fmt.Println(a["md-1"], a["md-2"], a["md-3"])
	cancel()
	fmt.Println(<-done)
	// Output:
	// [a b] [c d] [e]
	// <nil>
}

package natsjs_test

import (
	"context"
	"log"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/cluster/natsjs"
)

// A collector process: one member of the cluster, named after its pod, that
// runs the feeds of the shards it owns until SIGTERM and then hands them
// over. Feeds carry a sequence number ("42") and resume with ?from=.
func ExampleMember_Run() {
	nc, err := nats.Connect("nats://nats-0:4222,nats://nats-1:4222,nats://nats-2:4222",
		nats.MaxReconnects(-1), nats.ReconnectBufSize(-1), // nothing sent late after a reconnect
		nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2)) // a frozen server left within ~3 s
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	m, err := natsjs.New(nc, natsjs.Config{
		Member:   os.Getenv("POD_NAME"),
		Replicas: 3,
		Seq: func(msg wspool.Message) (uint64, bool) {
			n, err := strconv.ParseUint(string(msg.Data), 10, 64)
			return n, err == nil
		},
		Resume: func(_ natsjs.Feed, u *url.URL, _ http.Header, last uint64) error {
			q := u.Query()
			q.Set("from", strconv.FormatUint(last+1, 10))
			u.RawQuery = q.Encode()
			return nil
		},
		FeedOptions: func(natsjs.Feed) []wspool.Option {
			return []wspool.Option{wspool.WithPingInterval(15 * time.Second)}
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := m.Run(ctx); err != nil {
		log.Fatal(err)
	}
}

// Registering the desired feeds, from any member or an admin tool.
func ExampleMember_Register() {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	m, err := natsjs.New(nc, natsjs.Config{Replicas: 3})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	err = m.Register(ctx,
		natsjs.Feed{Name: "btc-usd", URL: "wss://feeds.example/stream/btc-usd"},
		natsjs.Feed{Name: "eth-usd", URL: "wss://feeds.example/stream/eth-usd"})
	if err != nil {
		log.Fatal(err)
	}
}

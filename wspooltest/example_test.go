package wspooltest_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/wspooltest"
)

// A test scripts each connection from its own goroutine: the feed gets a
// message, the server drops the connection without a close frame, and the
// feed reconnects and gets the next one.
func ExampleServer() {
	srv, err := wspooltest.NewServer(nil) // connections stay open until dropped
	if err != nil {
		panic(err)
	}
	defer srv.Close()

	got := make(chan string)
	c, err := wspool.NewClient(srv.URL("/feed"), func(_ context.Context, m wspool.Message) error {
		got <- fmt.Sprintf("connection %d: %s", m.ConnID, m.Data)
		return nil
	}, wspool.WithBackoff(10*time.Millisecond, 100*time.Millisecond))
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go c.Run(ctx)
	defer c.Close()

	for _, text := range []string{"hello", "hello again"} {
		conn, err := srv.Accept(ctx)
		if err != nil {
			panic(err)
		}
		conn.SendText(text)
		fmt.Println(<-got)
		conn.Drop() // abnormal closure: the feed redials
	}
	// Output:
	// connection 1: hello
	// connection 2: hello again
}

// A server that refuses the upgrade with 401: wspool treats it as permanent
// and Run returns the handshake error after one attempt.
func ExampleServer_Refuse() {
	srv, err := wspooltest.NewServer(nil)
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	srv.Refuse(401, 0)

	c, err := wspool.NewClient(srv.URL("/private"), nil)
	if err != nil {
		panic(err)
	}
	err = c.Run(context.Background())
	var he *wspool.HandshakeError
	fmt.Println(errors.As(err, &he), he.StatusCode, srv.Handshakes())
	// Output: true 401 1
}

// A feed that resumes a sequenced stream from the number after the last one
// it handled: dropped after 3, it goes on with 4 on a new connection, with no
// gap and no duplicate.
func ExampleStream() {
	st := wspooltest.NewStream(5 * time.Millisecond)
	defer st.Close()
	srv, err := wspooltest.NewServer(st.Serve)
	if err != nil {
		panic(err)
	}
	defer srv.Close()

	var last atomic.Uint64
	var seen []uint64
	done := make(chan struct{})
	c, err := wspool.NewClient(srv.URL("/trades"), func(_ context.Context, m wspool.Message) error {
		n, _ := strconv.ParseUint(string(m.Data), 10, 64)
		if n > 6 { // until Close returns, the stream goes on
			return nil
		}
		if n != last.Load()+1 {
			fmt.Println("unexpected", n)
		}
		last.Store(n)
		seen = append(seen, n) // handlers are never concurrent with themselves
		switch n {
		case 3:
			for _, conn := range srv.Conns() {
				conn.Drop()
			}
		case 6:
			close(done)
		}
		return nil
	},
		wspool.WithBackoff(10*time.Millisecond, 100*time.Millisecond),
		wspool.WithRequestFunc(func(_ context.Context, u *url.URL, _ http.Header) error {
			u.RawQuery = "from=" + strconv.FormatUint(last.Load()+1, 10)
			return nil
		}))
	if err != nil {
		panic(err)
	}
	go c.Run(context.Background())
	<-done
	c.Close() // starts the stop
	<-c.Done()
	fmt.Println(seen)
	fmt.Println("connections:", srv.Accepted())
	// Output:
	// [1 2 3 4 5 6]
	// connections: 2
}

// A proxy that stops forwarding without closing anything: only the feed's
// pings notice the dead peer, and the feed redials once the path is back.
func ExampleProxy() {
	srv, err := wspooltest.NewServer(func(c *wspooltest.Conn) {
		c.SendText("hello")
		<-c.Done()
	})
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	proxy, err := wspooltest.NewProxy(srv.Addr())
	if err != nil {
		panic(err)
	}
	defer proxy.Close()

	got := make(chan string, 2)
	down := make(chan error, 1)
	c, err := wspool.NewClient("ws://"+proxy.Addr()+"/feed", func(_ context.Context, m wspool.Message) error {
		got <- fmt.Sprintf("connection %d: %s", m.ConnID, m.Data)
		return nil
	},
		wspool.WithPingInterval(50*time.Millisecond),
		wspool.WithPongTimeout(100*time.Millisecond),
		wspool.WithBackoff(10*time.Millisecond, 100*time.Millisecond),
		wspool.WithOnStateChange(func(sc wspool.StateChange) {
			if sc.To == wspool.StateBackingOff {
				select {
				case down <- sc.Err:
				default:
				}
			}
		}))
	if err != nil {
		panic(err)
	}
	go c.Run(context.Background())
	defer c.Close()

	fmt.Println(<-got)
	proxy.Blackhole(true)
	fmt.Println("dead peer noticed:", errors.Is(<-down, wspool.ErrPongTimeout))
	proxy.Blackhole(false)
	fmt.Println(<-got)
	// Output:
	// connection 1: hello
	// dead peer noticed: true
	// connection 2: hello
}

// Testing your own order book code against an upstream that serves numbered
// updates: applied by the code under test, the updates must give the
// stream's true state, checksum by checksum.
func ExampleUpdates() {
	st := wspooltest.NewStream(0, wspooltest.Updates(wspool.NumberRange, 10, 1))
	defer st.Close()
	srv, err := wspooltest.NewServer(st.Serve)
	if err != nil {
		panic(err)
	}
	defer srv.Close()

	book := map[string]int64{} // the code under test applies each update to it
	applied := make(chan uint64, 100)
	c, err := wspool.NewClient(srv.URL("/book?from=1"), wspool.JSON(func(_ context.Context, u wspooltest.Update) error {
		for _, ch := range u.Changes {
			if ch.Value == 0 {
				delete(book, ch.Key)
			} else {
				book[ch.Key] = ch.Value
			}
		}
		if wspooltest.Checksum(book) != u.Checksum {
			fmt.Println("checksum mismatch after update", u.Last)
		}
		applied <- u.Last
		return nil
	}))
	if err != nil {
		panic(err)
	}
	go c.Run(context.Background())
	st.Publish("/book", 50)
	for <-applied != st.Head("/book") {
	}
	c.Close()
	fmt.Println(maps.Equal(book, st.State("/book")))
	// Output: true
}

// An upstream that allows 5 messages a second per connection: a feed paced
// at that rate is never closed for it; LimitCloses lists the connections that
// were (with 1008, "too many requests").
func ExampleStream_LimitMessages() {
	st := wspooltest.NewStream(0)
	defer st.Close()
	st.LimitMessages("/orders", 5, time.Second)
	srv, err := wspooltest.NewServer(st.Serve)
	if err != nil {
		panic(err)
	}
	defer srv.Close()

	c, err := wspool.NewClient(srv.URL("/orders"), func(context.Context, wspool.Message) error { return nil },
		wspool.WithSendPacing(wspool.SendPacing{Messages: 5, Per: time.Second, Margin: 100 * time.Millisecond}),
		wspool.WithSendBuffer(wspool.SendBuffer{Messages: 16})) // sends wait for the connection
	if err != nil {
		panic(err)
	}
	go c.Run(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 12 {
		if err := c.Send(ctx, wspool.TextMessage, []byte("order "+strconv.Itoa(i))); err != nil {
			panic(err)
		}
	}
	c.Close()
	<-c.Done()
	fmt.Println("closed for the rate:", len(st.LimitCloses()))
	// Output:
	// closed for the rate: 0
}

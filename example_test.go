package wspool_test

import (
	"context"
	"fmt"
	"go/parser"
	"go/token"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/wspooltest"
)

// quoteServer starts a local feed: after a "subscribe:SYMBOL" message it
// sends three quotes for that symbol.
func quoteServer() *wspooltest.Server {
	s, err := wspooltest.NewServer(func(c *wspooltest.Conn) {
		_, sub, err := c.Read(context.Background())
		if err != nil {
			return
		}
		for i := 1; i <= 3; i++ {
			_ = c.SendText(fmt.Sprintf("%s quote %d", sub[len("subscribe:"):], i))
		}
		<-c.Done() // until the client goes
	})
	if err != nil {
		panic(err)
	}
	return s
}

// A pool with two feeds, each subscribing in OnConnect; the handler of each
// feed sees only its own messages, in order.
func Example() {
	srv := quoteServer()
	defer srv.Close()

	pool, err := wspool.NewPool(wspool.WithPingInterval(5 * time.Second))
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan string)
	for _, sym := range []string{"BTC", "ETH"} {
		var got []string
		_, err := pool.Add(srv.URL("/"+sym),
			func(_ context.Context, m wspool.Message) error {
				got = append(got, string(m.Data)) // handlers are never concurrent with themselves
				if len(got) == 3 {
					done <- fmt.Sprint(got)
				}
				return nil
			},
			wspool.WithName(sym),
			wspool.WithOnConnect(func(ctx context.Context, c *wspool.Conn) error {
				return c.Send(ctx, wspool.TextMessage, []byte("subscribe:"+sym))
			}))
		if err != nil {
			panic(err)
		}
	}
	runErr := make(chan error)
	go func() { runErr <- pool.Run(ctx) }()
	results := map[string]bool{<-done: true, <-done: true}
	cancel()
	fmt.Println("Run returned:", <-runErr)
	fmt.Println(results["[BTC quote 1 BTC quote 2 BTC quote 3]"], results["[ETH quote 1 ETH quote 2 ETH quote 3]"])
	// Output:
	// Run returned: <nil>
	// true true
}

// A single Client with a state callback: the transitions and their order.
func ExampleNewClient() {
	srv := quoteServer()
	defer srv.Close()

	ctx, cancel := context.WithCancel(context.Background())
	var states []string
	c, err := wspool.NewClient(srv.URL("/"),
		func(_ context.Context, m wspool.Message) error {
			fmt.Println("message:", string(m.Data))
			if string(m.Data) == "X quote 3" {
				cancel()
			}
			return nil
		},
		wspool.WithOnConnect(func(ctx context.Context, c *wspool.Conn) error {
			return c.Send(ctx, wspool.TextMessage, []byte("subscribe:X"))
		}),
		// State changes come in order from the feed's event dispatcher,
		// not the handler's goroutine: collected here, printed after Run
		// (which returns once every callback has returned).
		wspool.WithOnStateChange(func(sc wspool.StateChange) {
			states = append(states, fmt.Sprint(sc.From, " -> ", sc.To))
		}))
	if err != nil {
		panic(err)
	}
	fmt.Println("Run:", c.Run(ctx))
	for _, st := range states {
		fmt.Println("state:", st)
	}
	// Output:
	// message: X quote 1
	// message: X quote 2
	// message: X quote 3
	// Run: <nil>
	// state: idle -> connecting
	// state: connecting -> connected
	// state: connected -> closed
}

// Invalid input fails at construction, not at 3 a.m.
func ExampleNewClient_validation() {
	_, err := wspool.NewClient("https://example.com/feed", nil)
	fmt.Println(err)
	_, err = wspool.NewClient("wss://example.com/feed", nil, wspool.WithPongTimeout(-time.Second))
	fmt.Println(err)
	// Output:
	// wspool: invalid URL: scheme "https", want ws or wss
	// wspool: invalid option: pong timeout must be positive, got -1s
}

// A handler of decoded JSON values; a message that does not decode is
// reported as a *DecodeError and the feed goes on.
func ExampleJSON() {
	type quote struct {
		Symbol string  `json:"s"`
		Price  float64 `json:"p"`
	}
	srv, _ := wspooltest.NewServer(func(c *wspooltest.Conn) {
		_ = c.SendText(`{"s":"BTC","p":64000.5}`)
		_ = c.SendText(`not json`)
		_ = c.SendText(`{"s":"ETH","p":3100}`)
		<-c.Done()
	})
	defer srv.Close()

	ctx, cancel := context.WithCancel(context.Background())
	var errs []string // OnError runs on the feed's event dispatcher, not the handler's goroutine
	c, _ := wspool.NewClient(srv.URL("/"),
		wspool.JSON(func(_ context.Context, q quote) error {
			fmt.Printf("%s %.1f\n", q.Symbol, q.Price)
			if q.Symbol == "ETH" {
				cancel()
			}
			return nil
		}),
		wspool.WithName("quotes"),
		wspool.WithOnError(func(feed string, err error) { errs = append(errs, err.Error()) }))
	c.Run(ctx) // returns once every callback has returned
	for _, e := range errs {
		fmt.Println("error:", e)
	}
	// Output:
	// BTC 64000.5
	// ETH 3100.0
	// error: wspool: feed quotes: handler: wspool: decode text message of 8 bytes: invalid character 'o' in literal null (expecting 'u')
}

// A sequenced feed that resumes after the last number delivered: a server
// replaying from the resume point sends some numbers twice; WithSequence
// drops the copies, and the handler sees each number once.
func ExampleWithSequence() {
	// The server numbers its messages and, when the URL says ?from=N,
	// replays from N. This one starts over at 1 on every connection and
	// drops the connection after 5 messages.
	srv, _ := wspooltest.NewServer(func(c *wspooltest.Conn) {
		from := 1
		fmt.Sscan(c.Request().URL.Query().Get("from"), &from)
		for n := max(from-2, 1); n < from+3; n++ { // replays two it had sent
			_ = c.SendText(fmt.Sprint(n))
		}
	})
	defer srv.Close()

	var c *wspool.Client
	seen := make(chan string, 100)
	c, _ = wspool.NewClient(srv.URL("/"), func(_ context.Context, m wspool.Message) error {
		seen <- string(m.Data)
		return nil
	},
		wspool.WithSequence(wspool.Sequence{Extract: func(m wspool.Message) (string, uint64, bool) {
			var n uint64
			_, err := fmt.Sscan(string(m.Data), &n)
			return "", n, err == nil
		}}),
		wspool.WithRequestFunc(func(_ context.Context, u *url.URL, _ http.Header) error {
			if last, ok := c.LastSequence(""); ok {
				u.RawQuery = fmt.Sprint("from=", last+1)
			}
			return nil
		}),
		wspool.WithBackoff(10*time.Millisecond, 20*time.Millisecond),
	)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	var got []string
	for range 9 {
		got = append(got, <-seen)
	}
	cancel()
	<-done
	fmt.Println(strings.Join(got, " "))
	fmt.Println("duplicates dropped:", c.Stats().Duplicates > 0)
	// Output:
	// 1 2 3 4 5 6 7 8 9
	// duplicates dropped: true
}

// CloseStatus reads the close code anywhere in an error chain.
func ExampleCloseStatus() {
	err := fmt.Errorf("feed ended: %w", &websocket.CloseError{Code: 1013, Text: "try later"})
	fmt.Println(wspool.CloseStatus(err))
	fmt.Println(wspool.CloseStatus(err) == wspool.CloseCodeTryAgainLater)
	// Output:
	// 1013 (try again later)
	// true
}

// Feeds added and removed while the pool runs; Totals sums the counters of
// the feeds the pool holds.
func ExamplePool_Add() {
	srv := quoteServer()
	defer srv.Close()

	pool, err := wspool.NewPool()
	if err != nil {
		panic(err)
	}
	quotes := make(chan string, 6)
	add := func(sym string) {
		_, err := pool.Add(srv.URL("/"+sym), func(_ context.Context, m wspool.Message) error {
			quotes <- string(m.Data)
			return nil
		}, wspool.WithName(sym), wspool.WithOnConnect(func(ctx context.Context, c *wspool.Conn) error {
			return c.Send(ctx, wspool.TextMessage, []byte("subscribe:"+sym))
		}))
		if err != nil {
			panic(err)
		}
	}
	add("BTC") // before Run: starts with the pool
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error)
	go func() { runErr <- pool.Run(ctx) }()
	for range 3 {
		<-quotes
	}
	add("ETH") // while running: starts at once
	for range 3 {
		<-quotes
	}
	fmt.Println("feeds:", pool.Totals().Total, "messages:", pool.Totals().MessagesIn)
	if err := pool.Remove("BTC"); err != nil {
		panic(err)
	}
	fmt.Println("feeds after Remove:", pool.Totals().Total)
	cancel()
	fmt.Println("Run returned:", <-runErr)
	// Output:
	// feeds: 2 messages: 6
	// feeds after Remove: 1
	// Run returned: <nil>
}

// An upstream that answers more than 5 upgrades per second with 429:
// admission at the same rate keeps eight feeds from ever being refused (the
// last three wait for the next second instead of failing).
func ExampleWithAdmission() {
	srv, err := wspooltest.NewServer(nil) // connections stay open
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	srv.LimitUpgrades(5, time.Second)

	connected := make(chan string, 8)
	pool, err := wspool.NewPool(
		wspool.WithAdmission(wspool.Admission{Rate: 5, Per: time.Second}),
		wspool.WithOnStateChange(func(sc wspool.StateChange) {
			if sc.To == wspool.StateConnected {
				connected <- sc.Feed
			}
		}))
	if err != nil {
		panic(err)
	}
	for i := range 8 {
		if _, err := pool.Add(srv.URL(fmt.Sprint("/feed", i)), nil); err != nil {
			panic(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error)
	go func() { runErr <- pool.Run(ctx) }()
	for range 8 {
		<-connected
	}
	cancel()
	<-runErr
	fmt.Println("connected:", srv.Accepted(), "refused:", srv.Handshakes()-srv.Accepted())
	// Output:
	// connected: 8 refused: 0
}

// An upstream that allows 2 messages per 100 ms on a connection: six
// subscriptions sent in OnConnect go out paced, the last two 200 ms after
// the first two.
func ExampleWithSendPacing() {
	received := make(chan string, 6)
	srv, err := wspooltest.NewServer(func(c *wspooltest.Conn) {
		for {
			_, msg, err := c.Read(context.Background())
			if err != nil {
				return
			}
			received <- string(msg)
		}
	})
	if err != nil {
		panic(err)
	}
	defer srv.Close()

	ctx, cancel := context.WithCancel(context.Background())
	took := make(chan time.Duration, 1)
	c, err := wspool.NewClient(srv.URL("/"), nil,
		wspool.WithSendPacing(wspool.SendPacing{Messages: 2, Per: 100 * time.Millisecond}),
		wspool.WithOnConnect(func(ctx context.Context, cn *wspool.Conn) error {
			start := time.Now()
			for _, topic := range []string{"a", "b", "c", "d", "e", "f"} {
				if err := cn.Send(ctx, wspool.TextMessage, []byte("subscribe:"+topic)); err != nil {
					return err
				}
			}
			took <- time.Since(start)
			return nil
		}))
	if err != nil {
		panic(err)
	}
	runErr := make(chan error)
	go func() { runErr <- c.Run(ctx) }()
	var got []string
	for range 6 {
		got = append(got, <-received)
	}
	fmt.Println(strings.Join(got, " "))
	fmt.Println("paced over at least 200ms:", <-took >= 200*time.Millisecond)
	cancel()
	<-runErr
	// Output:
	// subscribe:a subscribe:b subscribe:c subscribe:d subscribe:e subscribe:f
	// paced over at least 200ms: true
}

// TestExamplesUsePublicPackages: the Example functions of the module's
// public packages import no internal package, since go doc shows them to
// users who cannot import one.
func TestExamplesUsePublicPackages(t *testing.T) {
	fset := token.NewFileSet()
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != "." && (d.Name() == "internal" || d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(path, "go.mod")); path != "." && err == nil {
				return filepath.SkipDir // another module
			}
			return nil
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly|parser.ParseComments)
		if err != nil {
			return err
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !strings.Contains(string(src), "\nfunc Example") {
			return nil
		}
		for _, imp := range f.Imports {
			if strings.Contains(imp.Path.Value, "/internal/") || strings.HasSuffix(imp.Path.Value, "/internal\"") {
				t.Errorf("%s has Example functions and imports %s, which users cannot import", path, imp.Path.Value)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

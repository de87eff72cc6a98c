//go:build unix

package natsjs_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/cluster/natsjs"
)

// noRequest is a request func for options that must be refused.
func noRequest(context.Context, *url.URL, http.Header) error { return nil }

// TestPoolOptionsThatCannotApplyFailAtNew: a member names every feed and
// sets its request func itself, so WithName or WithRequestFunc among
// PoolOptions would be overridden for every feed: New refuses them (it used
// to accept them, and the pool's defaults were silently replaced), and
// refuses pool options NewPool refuses (they used to fail only at Run).
func TestPoolOptionsThatCannotApplyFailAtNew(t *testing.T) {
	ns := startNATS(t)
	nc, err := nats.Connect(ns.ClientURL(), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	quiet := slog.New(slog.DiscardHandler)
	for name, o := range map[string]wspool.Option{
		"WithName":        wspool.WithName("mine"),
		"WithRequestFunc": wspool.WithRequestFunc(noRequest),
	} {
		_, err := natsjs.New(nc, natsjs.Config{Member: "a", Logger: quiet,
			PoolOptions: []wspool.PoolOption{wspool.WithMaxConcurrentDials(8), o}})
		if !errors.Is(err, wspool.ErrInvalidOption) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s in PoolOptions: New = %v, want ErrInvalidOption naming it", name, err)
		}
	}
	if _, err := natsjs.New(nc, natsjs.Config{Member: "a", Logger: quiet,
		PoolOptions: []wspool.PoolOption{wspool.WithPingInterval(-time.Second)}}); !errors.Is(err, wspool.ErrInvalidOption) {
		t.Errorf("invalid PoolOptions: New = %v, want ErrInvalidOption", err)
	}
	if _, err := natsjs.New(nc, natsjs.Config{Member: "a", Logger: quiet,
		PoolOptions: []wspool.PoolOption{wspool.WithMaxConcurrentDials(8), wspool.WithPingInterval(time.Second),
			wspool.WithOnConnect(func(context.Context, *wspool.Conn) error { return nil })}}); err != nil {
		t.Errorf("New with pool options that apply: %v", err)
	}
}

// TestFeedOptionsThatCannotApplyFailAtRegister: Register checks each feed
// with the member's FeedOptions as wspool.NewClient would, and registers
// none of the feeds if one fails: WithName or WithRequestFunc among them
// (they used to be silently replaced by the member's own), an invalid
// option, or a URL that is not ws:// or wss://.
func TestFeedOptionsThatCannotApplyFailAtRegister(t *testing.T) {
	ns := startNATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	byFeed := map[string][]wspool.Option{
		"named":   {wspool.WithPingInterval(time.Second), wspool.WithName("mine")},
		"request": {wspool.WithRequestFunc(noRequest)},
		"invalid": {wspool.WithPingInterval(-time.Second)},
	}
	m, err := natsjs.New(nc, natsjs.Config{Name: "opts", Logger: slog.New(slog.DiscardHandler),
		FeedOptions: func(f natsjs.Feed) []wspool.Option { return byFeed[f.Name] }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	good := natsjs.Feed{Name: "good", URL: "ws://127.0.0.1:1/good"}
	for _, tc := range []struct {
		feed natsjs.Feed
		want string
	}{
		{natsjs.Feed{Name: "named", URL: "ws://127.0.0.1:1/a"}, "WithName"},
		{natsjs.Feed{Name: "request", URL: "ws://127.0.0.1:1/b"}, "WithRequestFunc"},
		{natsjs.Feed{Name: "invalid", URL: "ws://127.0.0.1:1/c"}, "ping interval"},
		{natsjs.Feed{Name: "http", URL: "http://127.0.0.1:1/d"}, "scheme"},
	} {
		err := m.Register(ctx, good, tc.feed)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.feed.Name) {
			t.Errorf("Register(%s) = %v, want an error naming the feed and %q", tc.feed.Name, err, tc.want)
		}
	}
	if feeds, err := m.Feeds(ctx); err != nil || len(feeds) != 0 {
		t.Fatalf("after refused registrations: Feeds = %v, %v; want none", feeds, err)
	}
	if err := m.Register(ctx, good); err != nil {
		t.Fatalf("Register(good) = %v", err)
	}
}

// logLines records the messages and "err" attributes a member logs at Error
// level.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) Enabled(context.Context, slog.Level) bool { return true }
func (l *logLines) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logLines) WithGroup(string) slog.Handler            { return l }
func (l *logLines) Handle(_ context.Context, r slog.Record) error {
	if r.Level < slog.LevelError {
		return nil
	}
	line := r.Message
	r.Attrs(func(a slog.Attr) bool {
		line += " " + a.Key + "=" + a.Value.String()
		return true
	})
	l.mu.Lock()
	l.lines = append(l.lines, line)
	l.mu.Unlock()
	return nil
}

func (l *logLines) find(sub ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		all := true
		for _, s := range sub {
			all = all && strings.Contains(line, s)
		}
		if all {
			return true
		}
	}
	return false
}

// TestFeedWithOptionsThatCannotApplyNotStarted: a feed registered through
// another member (whose FeedOptions differ) and whose options on the member
// that owns it include WithName does not start there, and the error is
// logged naming the feed and the option; the feed's neighbours run. It used
// to start with the member's name, the option silently replaced.
func TestFeedWithOptionsThatCannotApplyNotStarted(t *testing.T) {
	ns := startNATS(t)
	admin, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	reg, err := natsjs.New(admin, natsjs.Config{Name: "notstarted", Shards: 4, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Register(t.Context(),
		natsjs.Feed{Name: "good", URL: "ws://127.0.0.1:1/good"},
		natsjs.Feed{Name: "named", URL: "ws://127.0.0.1:1/named"}); err != nil {
		t.Fatal(err)
	}

	nc, err := nats.Connect(ns.ClientURL(), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	logs := &logLines{}
	m, err := natsjs.New(nc, natsjs.Config{Name: "notstarted", Member: "solo", Shards: 4, TTL: time.Second,
		Logger: slog.New(logs),
		FeedOptions: func(f natsjs.Feed) []wspool.Option {
			if f.Name == "named" {
				return []wspool.Option{wspool.WithName("mine")}
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	waitFor(t, "the refusal logged", 30*time.Second, func() bool {
		return logs.find("feed not started", "feed=named", "WithName", "FeedOptions")
	})
	waitFor(t, "the good feed running", 30*time.Second, func() bool { return m.Stats().Feeds >= 1 })
	if n := m.Stats().Feeds; n != 1 {
		t.Errorf("%d feeds running, want 1 (good)", n)
	}
}

package wspool_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/wstest"
)

func TestPoolClientAndTotals(t *testing.T) {
	srv := newServer(t, func(c *websocket.Conn, r *http.Request) {
		_ = c.WriteMessage(websocket.TextMessage, []byte("hi"))
		wstest.Drain(c, r)
	})
	p, err := wspool.NewPool()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := p.Add(srv.URL("/"), nil, wspool.WithName(fmt.Sprint("f", i))); err != nil {
			t.Fatal(err)
		}
	}
	if c := p.Client("f1"); c == nil || c.Name() != "f1" {
		t.Fatalf("Client(f1) = %v", c)
	}
	if c := p.Client("nope"); c != nil {
		t.Fatalf("Client(nope) = %v, want nil", c)
	}
	stop := runPool(t, p)
	waitFor(t, 10*time.Second, "three connected feeds with a message each", func() bool {
		tot := p.Totals()
		return tot.Connected == 3 && tot.MessagesIn == 3
	})
	tot, full := p.Totals(), p.Stats()
	if tot.Feeds != nil || tot.Total != 3 || tot.Connects != full.Connects || tot.MessagesIn != full.MessagesIn {
		t.Fatalf("Totals %+v disagree with Stats %+v", tot, full)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if tot := p.Totals(); tot.Closed != 3 {
		t.Fatalf("after Run: %+v", tot)
	}
}

func TestCloseStatusTyped(t *testing.T) {
	err := fmt.Errorf("wrapped: %w", &websocket.CloseError{Code: 1013, Text: "later"})
	if got := wspool.CloseStatus(err); got != wspool.CloseCodeTryAgainLater || got.String() != "1013 (try again later)" {
		t.Fatalf("CloseStatus = %v", got)
	}
	if got := wspool.CloseStatus(fmt.Errorf("no close")); got != wspool.CloseCodeNone || got.String() != "none" {
		t.Fatalf("CloseStatus of a plain error = %v", got)
	}
	if s := wspool.CloseCode(4000).String(); s != "4000" {
		t.Fatalf("private code renders %q", s)
	}
}

package wspool_test

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/wstest"
)

type trade struct {
	Symbol string  `json:"s"`
	Price  float64 `json:"p"`
}

func TestJSONHandler(t *testing.T) {
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		c.WriteMessage(websocket.TextMessage, []byte(`{"s":"BTC","p":1.5}`))
		c.WriteMessage(websocket.TextMessage, []byte(`{"s":`)) // broken
		c.WriteMessage(websocket.TextMessage, []byte(`{"s":"ETH","p":2}`))
		wstest.Drain(c, nil)
	})
	got := make(chan trade, 4)
	errs := make(chan error, 4)
	c, err := wspool.NewClient(srv.URL("/"),
		wspool.JSON(func(_ context.Context, tr trade) error { got <- tr; return nil }),
		wspool.WithOnError(func(_ string, err error) { errs <- err }))
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	if tr := recv(t, got, 5*time.Second, "first trade"); tr != (trade{"BTC", 1.5}) {
		t.Fatalf("got %+v", tr)
	}
	err = recv(t, errs, 5*time.Second, "decode error")
	var de *wspool.DecodeError
	if !errors.Is(err, wspool.ErrDecode) || !errors.As(err, &de) || de.Size != 5 {
		t.Fatalf("error %v, want a DecodeError of 5 bytes", err)
	}
	if tr := recv(t, got, 5*time.Second, "second trade"); tr != (trade{"ETH", 2}) {
		t.Fatalf("got %+v", tr)
	}
	if s := c.Stats(); s.HandlerErrors != 1 || s.Disconnects != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestDecodedCustomCodec(t *testing.T) {
	srv := newServer(t, func(c *websocket.Conn, _ *http.Request) {
		c.WriteMessage(websocket.BinaryMessage, []byte{1, 2, 3})
		wstest.Drain(c, nil)
	})
	var sum atomic.Int64
	sumBytes := func(data []byte, v *int) error {
		for _, b := range data {
			*v += int(b)
		}
		return nil
	}
	c, _ := wspool.NewClient(srv.URL("/"), wspool.Decoded(sumBytes, func(_ context.Context, v int) error {
		sum.Store(int64(v))
		return nil
	}))
	runClient(t, c)
	waitFor(t, 5*time.Second, "decoded value", func() bool { return sum.Load() == 6 })
}

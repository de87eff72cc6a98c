package syncstate_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/wspool/wspool"
	"github.com/wspool/wspool/syncstate"
	"github.com/wspool/wspool/wspooltest"
)

// An order book served as an HTTP snapshot plus a stream of diffs numbered
// first..last: the State fetches the snapshot, lines the diffs up with it,
// and after a gap fetches it again while the connection stays up.
func ExampleState() {
	exchange := wspooltest.NewStream(0, wspooltest.Updates(wspool.NumberRange, 10, 1))
	defer exchange.Close()
	srv, err := wspooltest.NewServer(exchange.Serve)
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	snapshotURL, err := exchange.SnapshotURL("/book")
	if err != nil {
		panic(err)
	}

	type book = map[string]int64
	state, err := syncstate.New(syncstate.Config[book, wspooltest.Update]{
		Fetch: func(ctx context.Context) (syncstate.Snapshot[book], error) {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, snapshotURL, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return syncstate.Snapshot[book]{}, err
			}
			defer resp.Body.Close()
			var s wspooltest.Snapshot
			err = json.NewDecoder(resp.Body).Decode(&s)
			return syncstate.Snapshot[book]{State: s.State, Last: s.Last, Epoch: s.Epoch}, err
		},
		Apply: func(b *book, u wspooltest.Update) error {
			for _, c := range u.Changes {
				if c.Value == 0 {
					delete(*b, c.Key)
				} else {
					(*b)[c.Key] = c.Value
				}
			}
			return nil
		},
		Position: func(u wspooltest.Update) wspool.Position {
			return wspool.Position{First: u.First, Last: u.Last, Epoch: u.Epoch}
		},
		Shape: wspool.NumberRange,
		OnResync: func(r syncstate.Resync) {
			if !r.Done {
				fmt.Println("resync:", r.Cause)
			}
		},
	})
	if err != nil {
		panic(err)
	}
	defer state.Close()
	feed, err := wspool.NewClient(srv.URL("/book?from=1"), wspool.JSON(func(_ context.Context, u wspooltest.Update) error {
		return state.Push(u)
	}))
	if err != nil {
		panic(err)
	}
	go feed.Run(context.Background())
	defer feed.Close()

	inSyncAtHead := func() {
		for {
			if last, in := state.Read(nil); in && last == exchange.Head("/book") {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	exchange.Publish("/book", 20)
	inSyncAtHead()
	exchange.Skip("/book", 2) // a gap
	exchange.Publish("/book", 5)
	inSyncAtHead()
	var same bool
	state.Read(func(b *book) { same = fmt.Sprint(*b) == fmt.Sprint(exchange.State("/book")) })
	fmt.Println("same book as the exchange:", same, "connections:", feed.Stats().Connects)
	// Output:
	// resync: start
	// resync: gap
	// same book as the exchange: true connections: 1
}

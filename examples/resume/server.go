package main

// The embedded upstream: a sequenced event stream that survives restarts of
// its WebSocket server. Events are numbered from 1; event n carries
// "event-n", so the log needs no storage. A client says where to start,
// either in the URL (?from=N) or in its first message:
//
//	-> {"op":"subscribe","from":N}            (only if the URL has no from)
//	<- {"type":"subscribed","from":N,"head":H}
//	<- {"seq":N,"data":"event-N"}
//	<- {"seq":N+1,"data":"event-N+1"}  ...
//
// from=0 means "live only": start after the current head.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/wstest"
)

// eventLog is the durable part of the upstream: it keeps producing events
// while the WebSocket server is down, and a restarted server replays them.
type eventLog struct {
	mu      sync.Mutex
	head    int64         // last event produced
	changed chan struct{} // closed and replaced on every append
}

func newEventLog() *eventLog { return &eventLog{changed: make(chan struct{})} }

func (l *eventLog) append() {
	l.mu.Lock()
	l.head++
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

func (l *eventLog) Head() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.head
}

func (l *eventLog) snapshot() (int64, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.head, l.changed
}

// produce appends rate events a second until ctx ends.
func (l *eventLog) produce(ctx context.Context, rate int) {
	tk := time.NewTicker(time.Second / time.Duration(rate))
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
			l.append()
		}
	}
}

type subscribeRequest struct {
	Op   string `json:"op"`
	From *int64 `json:"from"`
}

type event struct {
	Seq  int64  `json:"seq"`
	Data string `json:"data"`
}

func payload(seq int64) string { return "event-" + strconv.FormatInt(seq, 10) }

func startServer(log *eventLog) (*wstest.Server, error) {
	return wstest.New(func(c *websocket.Conn, r *http.Request) {
		if err := serveEvents(c, r, log); err != nil {
			_ = c.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.ClosePolicyViolation, err.Error()),
				time.Now().Add(time.Second))
		}
	})
}

func serveEvents(c *websocket.Conn, r *http.Request, log *eventLog) error {
	var from int64
	if v := r.URL.Query().Get("from"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("bad from %q", v)
		}
		from = n
	} else {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var req subscribeRequest
		if err := c.ReadJSON(&req); err != nil {
			return nil
		}
		if req.Op != "subscribe" || req.From == nil || *req.From < 0 {
			return errors.New(`want {"op":"subscribe","from":N} first`)
		}
		_ = c.SetReadDeadline(time.Time{})
		from = *req.From
	}
	head, _ := log.snapshot()
	if from == 0 {
		from = head + 1
	}
	if from > head+1 {
		return fmt.Errorf("from %d is past the head %d", from, head)
	}
	if err := c.WriteJSON(map[string]any{"type": "subscribed", "from": from, "head": head}); err != nil {
		return nil
	}

	// Keep reading, for pings and the close handshake.
	gone, release := wstest.ReadInBackground(c)
	defer release()

	next := from
	for {
		head, changed := log.snapshot()
		for ; next <= head; next++ {
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if err := c.WriteJSON(event{Seq: next, Data: payload(next)}); err != nil {
				return nil
			}
		}
		select {
		case <-gone:
			return nil
		case <-changed:
		}
	}
}

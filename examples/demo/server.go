package main

// The embedded upstream: one gorilla WebSocket server on 127.0.0.1 with three
// channels, one per path. A client must subscribe before it gets anything:
//
//	-> {"op":"subscribe","channel":"ticker"}
//	<- {"type":"subscribed","channel":"ticker"}
//	<- {"type":"tick","channel":"ticker","seq":1,"price":100.02}
//	<- ...
//
// /ticker never fails; /flaky drops the connection abruptly (no close frame,
// like a crashed server or a reset by a load balancer) every dropEvery;
// /late answers the upgrade with 503 Service Unavailable and Retry-After
// until refuseFor has passed since the server started.

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool/internal/wstest"
)

type serverConfig struct {
	rate      int           // ticks per second per connection
	dropEvery time.Duration // /flaky: connection lifetime
	refuseFor time.Duration // /late: 503 until then
}

func startServer(cfg serverConfig) (*wstest.Server, error) {
	start := time.Now()
	srv, err := wstest.New(func(c *websocket.Conn, r *http.Request) {
		serveChannel(c, strings.TrimPrefix(r.URL.Path, "/"), cfg)
	})
	if err != nil {
		return nil, err
	}
	srv.SetReject(func(r *http.Request) (int, http.Header) {
		left := cfg.refuseFor - time.Since(start)
		if r.URL.Path != "/late" || left <= 0 {
			return 0, nil
		}
		// Retry-After is in whole seconds: come back when we expect to be
		// ready, but at most 2s from now.
		secs := min(int(math.Ceil(left.Seconds())), 2)
		return http.StatusServiceUnavailable, http.Header{"Retry-After": {strconv.Itoa(secs)}}
	})
	return srv, nil
}

type subscribeRequest struct {
	Op      string `json:"op"`
	Channel string `json:"channel"`
}

type tick struct {
	Type    string  `json:"type"`
	Channel string  `json:"channel"`
	Seq     int64   `json:"seq"`
	Price   float64 `json:"price"`
}

// serveChannel serves one connection; returning closes it without a close frame.
func serveChannel(c *websocket.Conn, channel string, cfg serverConfig) {
	// The subscription must come first.
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var req subscribeRequest
	if err := c.ReadJSON(&req); err != nil {
		return
	}
	if req.Op != "subscribe" || req.Channel != channel {
		_ = c.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(websocket.ClosePolicyViolation, "subscribe to "+channel+" first"),
			time.Now().Add(time.Second))
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	if err := c.WriteJSON(map[string]string{"type": "subscribed", "channel": channel}); err != nil {
		return
	}

	// Keep reading: gorilla answers pings and close frames only while someone
	// reads. The reader ends when the client goes away or closes.
	gone, release := wstest.ReadInBackground(c)
	defer release()

	var drop <-chan time.Time
	if channel == "flaky" {
		t := time.NewTimer(cfg.dropEvery)
		defer t.Stop()
		drop = t.C
	}
	tk := time.NewTicker(time.Second / time.Duration(cfg.rate))
	defer tk.Stop()
	price := 100.0
	for seq := int64(1); ; seq++ {
		select {
		case <-gone:
			return
		case <-drop:
			return // abrupt: the client sees an unexpected EOF
		case <-tk.C:
		}
		price = math.Round((price+rand.NormFloat64()*0.05)*100) / 100
		msg, _ := json.Marshal(tick{Type: "tick", Channel: channel, Seq: seq, Price: price})
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if err := c.WriteMessage(websocket.TextMessage, msg); err != nil {
			return
		}
	}
}

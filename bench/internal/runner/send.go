package runner

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/bench/internal/sysstat"
)

// SendConfig is one send run: one feed to an echo server, sending Size-byte
// messages in a loop for Window (after Warmup), counting the echoes.
type SendConfig struct {
	Mode   string
	URL    string // server base URL
	Size   int
	Warmup time.Duration
	Window time.Duration
	// MaxSends bounds the loop besides the window (0: 100 million).
	MaxSends int64
	// MaxInFlight bounds the messages sent but not yet echoed (0: 1024), so
	// that socket buffers filling up do not pass for send throughput: the
	// rate measured is that of the whole round trip.
	MaxInFlight int
}

// SendResult is the measurement of one send run.
type SendResult struct {
	Mode          string
	Size          int
	Sent, Echoed  int64 // in the window
	Seconds       float64
	SendsPerSec   float64
	EchoesPerSec  float64
	CPUPerMillion float64 // CPU seconds per million sends (echo reading included)
	AllocsPerSend float64
	Lost          int64 // sent but not echoed 2 s after the loop ended
}

// sender is one feed that can send and counts echoes.
type sender struct {
	send   func(ctx context.Context, b []byte) error
	echoes atomic.Int64
	close  func()
	// inflight, if set, holds a token per message sent and not yet echoed.
	inflight chan struct{}
}

func (s *sender) echoed() {
	s.echoes.Add(1)
	if s.inflight != nil {
		select {
		case <-s.inflight:
		default:
		}
	}
}

func newSender(ctx context.Context, mode, url string, maxInFlight int) (*sender, error) {
	s := &sender{}
	if maxInFlight > 0 {
		s.inflight = make(chan struct{}, maxInFlight)
	}
	switch mode {
	case ModeWspool:
		c, err := wspool.NewClient(url, func(context.Context, wspool.Message) error {
			s.echoed()
			return nil
		}, wspool.WithName("sender"))
		if err != nil {
			return nil, err
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = c.Run(rctx) }()
		s.close = func() { c.Close(); cancel(); <-done }
		deadline := time.Now().Add(10 * time.Second)
		for c.State() != wspool.StateConnected {
			if time.Now().After(deadline) {
				s.close()
				return nil, fmt.Errorf("runner: sender not connected: %w", errTimeout)
			}
			if err := sleep(ctx, time.Millisecond); err != nil {
				s.close()
				return nil, err
			}
		}
		s.send = func(ctx context.Context, b []byte) error { return c.Send(ctx, wspool.TextMessage, b) }
	case ModeRaw:
		conns, err := dialRaw(ctx, websocket.DefaultDialer, url, 1, 1, nil)
		if err != nil {
			return nil, err
		}
		c := conns[0]
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					return
				}
				s.echoed()
			}
		})
		s.close = func() { c.Close(); wg.Wait() }
		s.send = func(_ context.Context, b []byte) error { return c.WriteMessage(websocket.TextMessage, b) }
	default:
		return nil, fmt.Errorf("runner: unknown mode %q", mode)
	}
	return s, nil
}

// RunSend measures Send throughput on one feed against an echo server.
func RunSend(ctx context.Context, cfg SendConfig) (SendResult, error) {
	res := SendResult{Mode: cfg.Mode, Size: cfg.Size}
	if cfg.MaxSends <= 0 {
		cfg.MaxSends = 100_000_000
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 1024
	}
	s, err := newSender(ctx, cfg.Mode, WithQuery(cfg.URL, "mode", "echo"), cfg.MaxInFlight)
	if err != nil {
		return res, err
	}
	defer s.close()
	payload := make([]byte, cfg.Size)
	for i := range payload {
		payload[i] = 'a' + byte(i%26)
	}
	loop := func(d time.Duration, limit int64) (int64, error) {
		end := time.Now().Add(d)
		var n int64
		for n < limit {
			if n&63 == 0 && !time.Now().Before(end) {
				break
			}
			select {
			case s.inflight <- struct{}{}:
			case <-ctx.Done():
				return n, ctx.Err()
			}
			if err := s.send(ctx, payload); err != nil {
				return n, err
			}
			n++
		}
		return n, nil
	}
	warm, err := loop(cfg.Warmup, cfg.MaxSends)
	if err != nil {
		return res, err
	}
	e0 := s.echoes.Load()
	s0 := sysstat.Take()
	n, err := loop(cfg.Window, cfg.MaxSends)
	if err != nil {
		return res, err
	}
	e1 := s.echoes.Load()
	s1 := sysstat.Take()
	d := s1.Sub(s0)
	res.Sent, res.Echoed, res.Seconds = n, e1-e0, d.Wall.Seconds()
	if n == 0 || res.Seconds <= 0 {
		return res, fmt.Errorf("runner: nothing sent")
	}
	res.SendsPerSec = float64(n) / res.Seconds
	res.EchoesPerSec = float64(res.Echoed) / res.Seconds
	res.CPUPerMillion = d.CPU.Seconds() / float64(n) * 1e6
	res.AllocsPerSend = float64(d.Mallocs) / float64(n)
	total := warm + n
	deadline := time.Now().Add(2 * time.Second)
	for s.echoes.Load() < total && time.Now().Before(deadline) {
		if err := sleep(ctx, time.Millisecond); err != nil {
			return res, err
		}
	}
	res.Lost = total - s.echoes.Load()
	return res, nil
}

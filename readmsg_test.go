package wspool_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wspool/wspool"
	"github.com/wspool/wspool/internal/rawws"
)

// payload returns n bytes that differ from message to message.
func payload(i, n int) []byte {
	b := make([]byte, n)
	for j := range b {
		b[j] = byte(i*31 + j*7 + j>>9)
	}
	return b
}

// TestMessageSizes sends messages of sizes around every buffer boundary
// (the first read buffer, doubling steps, the largest kept buffer, the
// shared big buffers, the read limit exactly), each as one frame and again
// in uneven fragments with a ping between them, then one message a byte
// over the read limit. Every message must arrive whole and in order, and
// the last must close the connection with 1009 and ErrReadLimit.
func TestMessageSizes(t *testing.T) {
	const limit = 4 << 20
	sizes := []int{0, 1, 64, 511, 512, 513, 1023, 1024, 1025, 100_000, 256<<10 - 1, 256 << 10, 256<<10 + 1,
		64, 512 << 10, 1<<20 + 7, 300_000, 2 << 20, 3<<20 + 1, limit, 64, 700_000}
	var want [][]byte
	var stream []byte
	for i, n := range sizes {
		p := payload(i, n)
		want = append(want, p)
		stream = rawws.Binary(p).Append(stream)
	}
	for i, n := range sizes { // again, fragmented
		p := payload(len(sizes)+i, n)
		want = append(want, p)
		cut1, cut2 := n/3, n/3+n/5+1
		if cut2 > n {
			cut1, cut2 = 0, n
		}
		stream = rawws.Frame{Opcode: rawws.OpBinary, Payload: p[:cut1]}.Append(stream)
		stream = rawws.Ping([]byte("x")).Append(stream)
		stream = rawws.Frame{Opcode: rawws.OpContinuation, Payload: p[cut1:cut2]}.Append(stream)
		stream = rawws.Frame{Opcode: rawws.OpContinuation, Fin: true, Payload: p[cut2:]}.Append(stream)
	}
	// One byte over the limit: the header alone must end the connection.
	over := []byte{0x82, 127}
	over = binary.BigEndian.AppendUint64(over, limit+1)
	stream = append(stream, over...)

	var conns atomic.Int64
	codes := make(chan int, 1)
	srv := newRawServer(t, func(ctx context.Context, c *rawws.Conn) {
		if _, err := c.Handshake(); err != nil || conns.Add(1) > 1 {
			return
		}
		if _, err := c.Write(stream); err != nil {
			return
		}
		for { // the client's pongs, then its close frame
			f, err := rawws.ReadFrame(c.R, 1024)
			if err != nil {
				return
			}
			if f.Opcode == rawws.OpClose && len(f.Payload) >= 2 {
				codes <- int(binary.BigEndian.Uint16(f.Payload))
				return
			}
		}
	})
	got := make(chan error, len(want))
	var n atomic.Int64
	h := func(_ context.Context, m wspool.Message) error {
		i := int(n.Add(1) - 1)
		switch {
		case i >= len(want):
			got <- fmt.Errorf("message %d: more messages than sent", i)
		case !bytes.Equal(m.Data, want[i]):
			got <- fmt.Errorf("message %d: got %d bytes, want %d (or different bytes)", i, len(m.Data), len(want[i]))
		default:
			got <- nil
		}
		return nil
	}
	ev := newEvents()
	c, err := wspool.NewClient(srv.URL("/"), h, hostileOptions(ev, wspool.WithReadLimit(limit))...)
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	for range want {
		if err := recv(t, got, 10*time.Second, "a message"); err != nil {
			t.Fatal(err)
		}
	}
	if code := recv(t, codes, 5*time.Second, "close code"); code != websocket.CloseMessageTooBig {
		t.Fatalf("client closed with %d, want 1009", code)
	}
	ev.waitCount(t, wspool.StateBackingOff, 1, 5*time.Second)
	if cause, _, _ := ev.firstCause(wspool.StateBackingOff); !errors.Is(cause, websocket.ErrReadLimit) {
		t.Fatalf("cause %v, want ErrReadLimit", cause)
	}
	if s := c.Stats(); s.MessagesIn != int64(len(want)) {
		t.Fatalf("MessagesIn %d, want %d", s.MessagesIn, len(want))
	}
}

package socket

import (
	"bytes"
	"io"
	"net"
	"testing"
	"unsafe"
)

// TestConnSize keeps every connection's socket wrapper, which idle feeds
// hold too, within the 128-byte size class on 64-bit platforms (it was 152
// bytes, the 160-byte class, while a raw read's results had fields of their
// own).
func TestConnSize(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("64-bit platforms only")
	}
	if n := unsafe.Sizeof(Conn{}); n > 128 {
		t.Fatalf("Conn is %d bytes, want at most 128", n)
	}
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestPooledReadsHoldABufferOnlyWithUnreadBytes: a pooled connection reads
// through a borrowed buffer, counts every byte, and holds the buffer only
// while bytes are unread; Fill keeps the unread bytes in order when it must
// move them to make room.
func TestPooledReadsHoldABufferOnlyWithUnreadBytes(t *testing.T) {
	if !PooledReadsSupported {
		t.Skip("no pooled reads on this platform")
	}
	nc, peer := tcpPair(t)
	c := New(nc, true)
	c.Handshook()
	if !c.Pooled() {
		t.Fatal("not pooled")
	}
	f := c.Frames()
	data := make([]byte, 3*pooledReadSize)
	for i := range data {
		data[i] = byte(i * 7)
	}
	go func() { _, _ = peer.Write(data) }()
	var got []byte
	for len(got) < len(data) {
		// Ask for more than is buffered near the buffer's end, so that
		// Fill must move the unread bytes to the front.
		want := min(1000, len(data)-len(got))
		if err := f.Fill(want); err != nil {
			t.Fatal(err)
		}
		b := f.Buffered()
		got = append(got, b[:want]...)
		f.Consume(want)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("bytes out of order")
	}
	if c.HoldsBuffer() {
		t.Fatal("holds a buffer with nothing unread")
	}
	if c.BytesIn() != int64(len(data)) {
		t.Fatalf("BytesIn %d, want %d", c.BytesIn(), len(data))
	}
	if c.ReadAt().IsZero() {
		t.Fatal("ReadAt not set")
	}
	peer.Close()
	if err := f.Fill(1); err != io.EOF {
		t.Fatalf("after the peer closed: %v, want io.EOF", err)
	}
}

package wspool

import "github.com/wspool/wspool/internal/inqueue"

// OverflowPolicy says what a feed's inbound queue does when it is full.
type OverflowPolicy int

const (
	// Block stops the feed's reader until the handler makes room: nothing is
	// lost, and TCP flow control pushes back on the server. Time the reader
	// spends blocked is never blamed on the peer by the liveness checks.
	Block OverflowPolicy = iota
	// DropOldest discards the oldest queued message to make room.
	DropOldest
	// DropNewest discards the arriving message.
	DropNewest
)

// String returns "block", "drop-oldest" or "drop-newest".
func (p OverflowPolicy) String() string {
	switch p {
	case Block:
		return "block"
	case DropOldest:
		return "drop-oldest"
	case DropNewest:
		return "drop-newest"
	}
	return "OverflowPolicy(?)"
}

// Queue configures a bounded queue between a feed's reader and its handler,
// which lets the reader keep reading (and answering pings) while the handler
// works through a burst.
type Queue struct {
	// Messages is the most messages queued at once. Required (> 0).
	Messages int
	// Bytes is the most payload bytes queued at once; 0 means Messages ×
	// 64 KiB. A single message larger than Bytes is still accepted when the
	// queue is empty, so the bound is Bytes plus one message (itself bounded by
	// the read limit). Beyond the queue, a feed holds the message its handler
	// is working on and the reader's buffer: under Block the reader waits for
	// room holding only its buffer, and copies the message into the queue once
	// it fits.
	Bytes int
	// Policy applies when either bound is reached. Default Block.
	Policy OverflowPolicy
	// DrainBeforeReconnect makes the feed wait, after a connection ends, until
	// the handler has finished every queued message before it dials again. By
	// default the queue survives reconnects: the next dial, request func and
	// OnConnect may run while messages of the old connection are still being
	// handled, so a resume cursor computed by the handler can lag behind what
	// was received. Set it when OnConnect or the request func resumes from
	// state the handler keeps.
	DrainBeforeReconnect bool
}

// inQueue is the feed's queue (internal/inqueue) of Messages.
type inQueue = inqueue.Queue[Message]

func newInQueue(q Queue) *inQueue {
	cfg := inqueue.Config{Messages: q.Messages, Bytes: q.Bytes}
	switch q.Policy {
	case Block:
		cfg.Policy = inqueue.Block
	case DropOldest:
		cfg.Policy = inqueue.DropOldest
	case DropNewest:
		cfg.Policy = inqueue.DropNewest
	}
	return inqueue.New(cfg, func(m *Message) *[]byte { return &m.Data })
}

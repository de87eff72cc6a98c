package wspool

import "time"

// TimingKind says what a Timing measured.
type TimingKind uint8

// The timings a feed reports (WithTimings).
const (
	// TimingHandshake: one successful dial, from its start to the 101
	// (TCP, proxy, TLS and upgrade; admission and dial-slot waits excluded).
	TimingHandshake TimingKind = iota + 1
	// TimingOnConnect: one successful OnConnect run.
	TimingOnConnect
	// TimingFirstMessage: from a connection reaching the connected state to
	// its first data message.
	TimingFirstMessage
	// TimingHandler: one handler call.
	TimingHandler
	// TimingQueueWait: a message's wait between being read
	// (Message.Received) and its handler call starting; with WithQueue, the
	// queue's wait.
	TimingQueueWait
)

// String returns the kind's name in snake case (handshake, on_connect,
// first_message, handler, queue_wait), ready to use as a metric label.
func (k TimingKind) String() string {
	switch k {
	case TimingHandshake:
		return "handshake"
	case TimingOnConnect:
		return "on_connect"
	case TimingFirstMessage:
		return "first_message"
	case TimingHandler:
		return "handler"
	case TimingQueueWait:
		return "queue_wait"
	}
	return "unknown"
}

// Timing is one measured duration of a feed.
type Timing struct {
	Feed string
	Kind TimingKind
	D    time.Duration
}

// timing reports one timing if WithTimings is set.
func (c *Client) timing(kind TimingKind, d time.Duration) {
	if c.cfg.timings == nil {
		return
	}
	defer c.recoverCallback("timings func")
	c.cfg.timings(Timing{Feed: c.name, Kind: kind, D: d})
}

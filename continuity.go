package wspool

import (
	"errors"
	"runtime/debug"
	"sync"
)

// Sequence configures sequence-aware delivery (WithSequence).
type Sequence struct {
	// Extract returns a message's stream key (one feed may carry several
	// streams, each numbered on its own), its sequence number, and ok; a
	// message without a number (ok false) is delivered as it is. It runs on
	// the feed's reader for every data message, so it must be quick; the key
	// may be "" for a feed with one stream. Required.
	Extract func(Message) (key string, seq uint64, ok bool)
	// OnGap, if set, is called (on the reader, before the message after the
	// gap is delivered) when a number skips past the last one delivered for
	// its key. Returning nil accepts the gap: the message is delivered and
	// the stream goes on from it. Returning an error wrapping ErrReconnect
	// asks for a resync: the message is not delivered, the stream stays at
	// Gap.Last, and the connection the gap was seen on is closed (delivering
	// no more data) and redialled, so that a request func resuming from
	// Client.LastSequence fills the gap. Any other error is reported and the
	// gap accepted.
	OnGap func(Gap) error
	// MaxKeys bounds the keys remembered; default 4096. Past it, an
	// arbitrary remembered key is forgotten: its next message is delivered
	// as the first of its stream (neither duplicate nor gap).
	MaxKeys int
}

// Gap describes numbers missing from a stream: Last was delivered, Next
// arrived, and Last+1 .. Next-1 did not.
type Gap struct {
	Feed   string
	Key    string
	Last   uint64
	Next   uint64
	ConnID uint64 // the connection Next arrived on
}

// Missing returns how many numbers the gap skipped.
func (g Gap) Missing() uint64 { return g.Next - g.Last - 1 }

// WithSequence makes the feed sequence-aware: per stream key it remembers the
// last number delivered, drops messages numbered at or below it (duplicates
// from a resume that replays, a rotation's overlap or a standby connection:
// the first copy wins) and reports gaps (OnGap, Stats.Gaps). The state lives
// as long as the feed, across reconnects, rotations and standby connections.
// With WithStandby it is what merges the connections into one stream.
func WithSequence(s Sequence) Option {
	return func(c *config) {
		if s.Extract == nil {
			c.errorf("sequence needs an Extract func")
			return
		}
		if s.MaxKeys < 0 {
			c.errorf("sequence MaxKeys must not be negative, got %d", s.MaxKeys)
			return
		}
		if s.MaxKeys == 0 {
			s.MaxKeys = 4096
		}
		c.sequence = &s
	}
}

// seqState is a feed's per-key last delivered number.
type seqState struct {
	mu   sync.Mutex
	last map[string]uint64
}

// seqVerdict is what the sequence check decided for one message.
type seqVerdict uint8

const (
	seqDeliver   seqVerdict = iota
	seqDuplicate            // dropped: at or below the last number delivered
	seqResync               // dropped: past a gap whose resync was asked for
)

// checkSequence applies the sequence option to a data message read on conn.
// On a gap it runs OnGap first: if that asks for a resync, the message is
// not delivered and the stream's state stays at the last number before the
// gap, so that the replay of the resumed connection fills it; conn is closed
// and every later data message it delivers is dropped.
func (c *Client) checkSequence(conn *Conn, msg Message) seqVerdict {
	if conn.resyncing.Load() {
		return seqResync
	}
	key, seq, ok := c.extractSeq(msg)
	if !ok {
		return seqDeliver
	}
	s := &c.seq
	s.mu.Lock()
	last, seen := s.last[key]
	s.mu.Unlock()
	if seen && seq <= last {
		return seqDuplicate
	}
	if seen && seq > last+1 {
		if c.reportGap(conn, Gap{Feed: c.name, Key: key, Last: last, Next: seq, ConnID: msg.ConnID}) {
			return seqResync
		}
	}
	s.mu.Lock()
	if _, known := s.last[key]; !known && len(s.last) >= c.cfg.sequence.MaxKeys {
		for k := range s.last {
			delete(s.last, k)
			break
		}
	}
	if s.last == nil {
		s.last = make(map[string]uint64)
	}
	s.last[key] = seq
	s.mu.Unlock()
	return seqDeliver
}

// LastSequence returns the last sequence number delivered for key
// (WithSequence), and false if none was: what a request func resumes from.
func (c *Client) LastSequence(key string) (uint64, bool) {
	c.seq.mu.Lock()
	defer c.seq.mu.Unlock()
	n, ok := c.seq.last[key]
	return n, ok
}

// extractSeq runs Sequence.Extract; a panic is reported and the message
// treated as unnumbered.
func (c *Client) extractSeq(msg Message) (key string, seq uint64, ok bool) {
	defer c.recoverCallback("Sequence.Extract")
	return c.cfg.sequence.Extract(msg)
}

// reportGap counts a gap and runs OnGap; conn is where it was seen. It
// reports whether OnGap asked for a resync (conn is then being closed).
func (c *Client) reportGap(conn *Conn, g Gap) (resync bool) {
	c.stats.gaps.Add(1)
	c.stats.gapMsgs.Add(int64(g.Missing()))
	c.log.Warn("sequence gap", "key", g.Key, "last", g.Last, "next", g.Next)
	f := c.cfg.sequence.OnGap
	if f == nil {
		return false
	}
	err := c.callOnGap(f, g)
	switch {
	case err == nil:
		return false
	case isReconnect(err):
		conn.resyncing.Store(true)
		conn.requestEnd(err)
		return true
	default:
		c.reportHandlerError(&HandlerError{Feed: c.name, Callback: "Sequence.OnGap", Err: err})
		return false
	}
}

func (c *Client) callOnGap(f func(Gap) error, g Gap) (err error) {
	defer func() {
		if r := recover(); r != nil {
			c.reportPanic("Sequence.OnGap", r)
			err = nil
		}
	}()
	return f(g)
}

// ServerPing configures answers to an upstream's data-level pings
// (WithServerPing), such as {"ping":123} to be answered {"pong":123}.
type ServerPing struct {
	// Reply recognises a ping and returns the reply to write, and ok; for
	// any other message it returns ok false. It runs on the reader for every
	// data message. Required.
	Reply func(ping Message) (typ MessageType, reply []byte, ok bool)
	// Deliver passes pings on to the handler too (after the reply is
	// written); by default they are kept from it.
	Deliver bool
}

// WithServerPing answers an upstream's data-level pings on the feed's reader,
// before the queue and the handler: with WithQueue a ping is answered at once
// even while the handler is busy with a backlog (without a queue the reader
// waits for the handler, as for every message). The reply is written on the
// connection the ping came on, ahead of nothing it must follow (it does not
// wait behind buffered sends). Pings count as proof of life like any inbound
// frame, are counted in Stats.ServerPings, and do not hold off the stale-data
// watchdog.
func WithServerPing(p ServerPing) Option {
	return func(c *config) {
		if p.Reply == nil {
			c.errorf("server ping needs a Reply func")
			return
		}
		c.serverPing = &p
	}
}

// answerPing answers msg if it is a server ping; it reports whether it was
// one.
func (c *Client) answerPing(conn *Conn, msg Message) bool {
	typ, reply, ok := c.pingReply(msg)
	if !ok {
		return false
	}
	c.stats.serverPings.Add(1)
	if err := checkType(typ); err != nil {
		c.reportHandlerError(&HandlerError{Feed: c.name, Callback: "ServerPing.Reply", Err: err})
		return true
	}
	if err := conn.write(nil, typ, reply); err != nil && err != errNotSent {
		c.log.Warn("server ping reply failed", "err", err)
	}
	return true
}

func (c *Client) pingReply(msg Message) (typ MessageType, reply []byte, ok bool) {
	defer c.recoverCallback("ServerPing.Reply")
	return c.cfg.serverPing.Reply(msg)
}

func isReconnect(err error) bool { return err != nil && errors.Is(err, ErrReconnect) }

// reportPanic reports a recovered panic of callback name.
func (c *Client) reportPanic(name string, r any) {
	c.reportHandlerError(&HandlerError{Feed: c.name, Callback: name, Panic: r, Stack: debug.Stack()})
}

package wspool

import (
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
)

// Sequence configures sequence-aware delivery (WithSequence): how the
// upstream numbers its messages, and what to do when the numbers say that
// something is missing or that the upstream started numbering again.
//
// A message's place in its stream is read either by Extract (one number per
// message) or by Position (any Shape, an epoch, and a decoded value handed on
// to the handler); exactly one of the two is set.
type Sequence struct {
	// Extract returns a message's stream key (one feed may carry several
	// streams, each numbered on its own), its sequence number, and ok; a
	// message without a number (ok false) is delivered as it is. It runs on
	// the feed's reader for every data message, so it must be quick; the key
	// may be "" for a feed with one stream. It is the SingleNumber shape
	// without epochs: Extract is Position returning Position{Key: key, Last: seq}.
	Extract func(Message) (key string, seq uint64, ok bool)
	// Position returns a message's place in its stream, in the Shape below,
	// and ok; a message without one (ok false) is delivered as it is. It
	// runs on the reader like Extract. What it decoded to find the numbers
	// can be handed on in Position.Decoded: the handler gets it in
	// Message.Decoded (Decoded and JSON use it instead of decoding again).
	Position func(Message) (Position, bool)
	// Shape says how Position's numbers are read (SingleNumber, the
	// default, NumberRange or LinkedIDs). With Extract it must be
	// SingleNumber.
	Shape SequenceShape
	// OnGap, if set, is called (on the reader, before the message that
	// revealed it is delivered) for every Gap: numbers skipped, a broken
	// link, or a restart of the upstream's numbering (Gap.Kind). Returning
	// nil accepts it: the message is delivered and the stream goes on from
	// it (after a restart, from the new epoch). Returning an error wrapping
	// ErrReconnect asks for a resync: the message is not delivered, the
	// connection the gap was seen on is closed (delivering no more data) and
	// redialled; after a skip or a broken link the stream stays at Gap.Last,
	// so that a request func resuming from Client.LastSequence fills the
	// gap; after a restart the key is forgotten (its next message starts
	// it). Any other error is reported and the gap accepted. Without OnGap
	// every gap is accepted; each is counted (Stats.Gaps, Stats.Restarts)
	// and logged.
	OnGap func(Gap) error
	// Restart bounds how far back a copy may be: a message numbered more
	// than Restart below the last one delivered for its key, arriving on
	// another connection than that one, is a restart of the upstream's
	// numbering (GapRestart), not a copy; zero means 1024. On the connection
	// that delivered the last number, any number below it is a restart (an
	// upstream does not go back on one connection; the same number again,
	// as OKX sends when nothing changed, is a duplicate), and so
	// is a Position whose Epoch differs from the last one delivered. An
	// upstream that restarts less than Restart below where it was, on a new
	// connection, is seen as duplicates until it passes the old numbers:
	// give Position an Epoch, or call ResetSequence, where that matters.
	Restart uint64
	// MaxKeys bounds the keys remembered; default 4096. Past it, an
	// arbitrary remembered key is forgotten: its next message is delivered
	// as the first of its stream (neither duplicate nor gap).
	MaxKeys int
}

// SequenceShape says how an upstream numbers its messages.
type SequenceShape uint8

const (
	// SingleNumber: each message has one number, Position.Last; the next
	// one is Last+1. Position.First and Prev are ignored.
	SingleNumber SequenceShape = iota
	// NumberRange: each message covers the numbers First..Last (Binance's
	// diff depth U..u); the next message's First must be Last+1. A message
	// that overlaps the last one delivered (First <= last < Last) is
	// delivered; one wholly at or below it is a duplicate.
	NumberRange
	// LinkedIDs: each message has an id, Position.Last, and names the id of
	// the message before it, Position.Prev (Binance futures' pu, OKX's
	// prevSeqId). Ids increase but need not be consecutive; a message whose
	// Prev is not the last id delivered is a gap (GapBrokenLink), one whose
	// id is at or below it a duplicate.
	LinkedIDs
)

// String returns the shape's name.
func (s SequenceShape) String() string {
	switch s {
	case SingleNumber:
		return "single number"
	case NumberRange:
		return "number range"
	case LinkedIDs:
		return "linked ids"
	}
	return fmt.Sprintf("SequenceShape(%d)", int(s))
}

// Position is a message's place in its stream, as Sequence.Position reads it.
type Position struct {
	// Key names the stream (one feed may carry several); "" for one.
	Key string
	// Last is the message's number (SingleNumber), the last number of its
	// range (NumberRange) or its id (LinkedIDs).
	Last uint64
	// First is the first number of the message's range (NumberRange); a
	// First above Last is read as Last.
	First uint64
	// Prev is the id of the message before this one (LinkedIDs).
	Prev uint64
	// Epoch names the upstream's numbering, for an upstream that says when
	// it starts again (a session id, a restart counter): a change is a
	// restart. Leave it 0 if the upstream does not say.
	Epoch uint64
	// Decoded is handed to the handler in Message.Decoded, so that what
	// Position decoded is not decoded again.
	Decoded any
}

// GapKind says what a Gap is.
type GapKind uint8

const (
	// GapSkip: numbers were skipped; Last was delivered, Next arrived, and
	// Last+1 .. Next-1 did not (with NumberRange, Next is the arriving
	// message's First).
	GapSkip GapKind = iota
	// GapBrokenLink (LinkedIDs): the arriving message, id Next, names Prev
	// as the one before it, but the last id delivered is Last. How many
	// messages are missing is unknown.
	GapBrokenLink
	// GapRestart: the upstream started numbering again: the arriving
	// message's number Next went back more than Sequence.Restart below Last,
	// or its Epoch differs from the last one delivered (PrevEpoch).
	GapRestart
)

// String returns the kind's name.
func (k GapKind) String() string {
	switch k {
	case GapSkip:
		return "skip"
	case GapBrokenLink:
		return "broken link"
	case GapRestart:
		return "restart"
	}
	return fmt.Sprintf("GapKind(%d)", int(k))
}

// Gap describes a break in a stream's numbers; Kind says which.
type Gap struct {
	Feed string
	Key  string
	Kind GapKind
	// Last is the number (or id) delivered last; Next the arriving one's.
	Last, Next uint64
	// Prev is the arriving message's Prev (LinkedIDs).
	Prev uint64
	// Epoch is the arriving message's epoch, PrevEpoch the last delivered one's.
	Epoch, PrevEpoch uint64
	ConnID           uint64 // the connection the message arrived on
	// Message is the message that revealed the gap (its Decoded set). Its
	// Data is valid only until OnGap returns: keep a Clone.
	Message Message
}

// Missing returns how many numbers a GapSkip skipped; 0 for the other kinds,
// where the count is unknown.
func (g Gap) Missing() uint64 {
	if g.Kind != GapSkip || g.Next <= g.Last {
		return 0
	}
	return g.Next - g.Last - 1
}

// seqState is a feed's per-key position: the last number delivered and its
// epoch.
type seqState struct {
	mu       sync.Mutex
	last     map[string]seqMark
	restarts int64 // under mu
}

type seqMark struct{ last, epoch, conn uint64 } // conn: the connection that delivered last

// seqVerdict is what the sequence check decided for one message.
type seqVerdict uint8

const (
	seqDeliver   seqVerdict = iota
	seqDuplicate            // dropped: at or below the last number delivered
	seqResync               // dropped: past a gap whose resync was asked for
)

// checkSequence applies the sequence option to a data message read on conn,
// and hands what Position decoded on in msg.Decoded. On a gap it runs OnGap
// first: if that asks for a resync, the message is not delivered and the
// stream's state stays at the last number before the gap (a restart forgets
// the key), so that the replay of the resumed connection fills it; conn is
// closed and every later data message it delivers is dropped.
func (c *Client) checkSequence(conn *Conn, msg *Message) seqVerdict {
	if conn.resyncing.Load() {
		return seqResync
	}
	p, ok := c.position(*msg)
	if !ok {
		return seqDeliver
	}
	msg.Decoded = p.Decoded
	sq := c.cfg.sequence
	s := &c.seq
	s.mu.Lock()
	m, seen := s.last[p.Key]
	s.mu.Unlock()
	if seen {
		g, dup := sq.judge(m, p, msg.ConnID)
		if dup {
			return seqDuplicate
		}
		if g != nil {
			g.Feed, g.Key, g.ConnID, g.Message = c.name, p.Key, msg.ConnID, *msg
			if c.reportGap(conn, g) {
				if g.Kind == GapRestart {
					c.ResetSequence(p.Key)
				}
				return seqResync
			}
		}
	}
	s.mu.Lock()
	if _, known := s.last[p.Key]; !known && len(s.last) >= sq.MaxKeys {
		for k := range s.last {
			delete(s.last, k)
			break
		}
	}
	if s.last == nil {
		s.last = make(map[string]seqMark)
	}
	s.last[p.Key] = seqMark{last: p.Last, epoch: p.Epoch, conn: msg.ConnID}
	s.mu.Unlock()
	return seqDeliver
}

// judge compares the position p of a message read on connection conn with
// the key's mark m: a duplicate, a gap (or restart) to report, or neither.
func (sq *Sequence) judge(m seqMark, p Position, conn uint64) (g *Gap, dup bool) {
	if p.Epoch != m.epoch {
		return &Gap{Kind: GapRestart, Last: m.last, Next: p.Last, Epoch: p.Epoch, PrevEpoch: m.epoch}, false
	}
	if p.Last <= m.last {
		if conn == m.conn && p.Last < m.last || m.last-p.Last > sq.Restart {
			return &Gap{Kind: GapRestart, Last: m.last, Next: p.Last, Epoch: p.Epoch, PrevEpoch: m.epoch}, false
		}
		return nil, true
	}
	switch sq.Shape {
	case NumberRange:
		if first := min(p.First, p.Last); first > m.last+1 {
			return &Gap{Kind: GapSkip, Last: m.last, Next: first, Epoch: p.Epoch, PrevEpoch: m.epoch}, false
		}
	case LinkedIDs:
		if p.Prev != m.last {
			return &Gap{Kind: GapBrokenLink, Last: m.last, Next: p.Last, Prev: p.Prev, Epoch: p.Epoch, PrevEpoch: m.epoch}, false
		}
	default:
		if p.Last > m.last+1 {
			return &Gap{Kind: GapSkip, Last: m.last, Next: p.Last, Epoch: p.Epoch, PrevEpoch: m.epoch}, false
		}
	}
	return nil, false
}

// LastSequence returns the last sequence number delivered for key
// (WithSequence; with NumberRange the last number of the last range, with
// LinkedIDs the last id), and false if none was: what a request func
// resumes from.
func (c *Client) LastSequence(key string) (uint64, bool) {
	c.seq.mu.Lock()
	defer c.seq.mu.Unlock()
	m, ok := c.seq.last[key]
	return m.last, ok
}

// ResetSequence forgets key's position (WithSequence): its next message is
// delivered as the first of its stream, neither duplicate nor gap. It is for
// the user who knows the upstream starts numbering again (after its own
// snapshot request, say) before a message shows it.
func (c *Client) ResetSequence(key string) {
	c.seq.mu.Lock()
	delete(c.seq.last, key)
	c.seq.mu.Unlock()
}

// position reads msg's place in its stream; a panic is reported and the
// message treated as unnumbered.
func (c *Client) position(msg Message) (p Position, ok bool) {
	sq := c.cfg.sequence
	if sq.Extract != nil {
		defer c.recoverCallback("Sequence.Extract")
		p.Key, p.Last, ok = sq.Extract(msg)
		return p, ok
	}
	defer c.recoverCallback("Sequence.Position")
	return sq.Position(msg)
}

// reportGap counts a gap and runs OnGap; conn is where it was seen. It
// reports whether OnGap asked for a resync (conn is then being closed).
func (c *Client) reportGap(conn *Conn, g *Gap) (resync bool) {
	if g.Kind == GapRestart {
		c.seq.mu.Lock()
		c.seq.restarts++
		c.seq.mu.Unlock()
		c.log.Warn("sequence restart", "key", g.Key, "last", g.Last, "next", g.Next, "epoch", g.Epoch, "prev_epoch", g.PrevEpoch)
	} else {
		c.stats.gaps.Add(1)
		c.stats.gapMsgs.Add(int64(g.Missing()))
		c.log.Warn("sequence gap", "kind", g.Kind.String(), "key", g.Key, "last", g.Last, "next", g.Next)
	}
	f := c.cfg.sequence.OnGap
	if f == nil {
		return false
	}
	err := c.callOnGap(f, *g)
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

// sequenceRestarts returns how many restarts were seen.
func (c *Client) sequenceRestarts() int64 {
	c.seq.mu.Lock()
	defer c.seq.mu.Unlock()
	return c.seq.restarts
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

// answerPing answers msg if it is a server ping; it reports whether it was
// one.
func (c *Client) answerPing(conn *Conn, msg Message) bool {
	typ, reply, ok := c.pingReply(msg)
	if !ok {
		return false
	}
	c.stats.serverPings.Add(1)
	if conn.lane == nil {
		c.stats.primaryPings.Add(1) // the primary's data count leaves them out
	}
	if err := checkType(typ); err != nil {
		c.reportHandlerError(&HandlerError{Feed: c.name, Callback: "ServerPing.Reply", Err: err})
		return true
	}
	if err := conn.writeReply(typ, reply); err != nil && err != errNotSent {
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

package wspool

import "time"

// Stats is a snapshot of one feed. Taking it costs a few atomic loads and one
// short lock, so polling every feed of a large pool every second is cheap.
type Stats struct {
	Name  string
	State State
	// Connects counts connections that completed the handshake and OnConnect;
	// Disconnects counts those that ended. Attempts counts dial attempts.
	Connects, Disconnects, Attempts int64
	// LastError is the most recent failure (connection, attempt or handler),
	// and LastErrorAt when it happened; nil if none.
	LastError   error
	LastErrorAt time.Time
	// Messages and bytes read from the socket (heartbeat replies, messages
	// read by OnConnect and messages drained during shutdown included) and
	// written to it.
	MessagesIn, BytesIn, MessagesOut, BytesOut int64
	// Delivered counts handler calls that completed (with or without error);
	// HeartbeatReplies counts inbound messages recognised by Heartbeat.IsReply.
	Delivered, HeartbeatReplies int64
	// HandlerErrors counts handler errors and panics.
	HandlerErrors int64
	// EventsDropped counts OnStateChange and OnError calls dropped because
	// those callbacks fell more than 1,024 events behind (they run on a
	// dispatcher goroutine of the feed; see WithOnStateChange).
	EventsDropped int64
	// DiscardedAtConnect counts messages a connection read while its
	// OnConnect ran (see WithOnConnect) and never delivered because that
	// attempt then failed, or a rotation's replacement was not kept: they
	// are counted in MessagesIn, and reported here.
	DiscardedAtConnect int64
	// Inbound queue (WithQueue): messages dropped by the overflow policy or
	// discarded at shutdown, current depth and its high-water mark.
	Dropped                    int64
	QueueDepth, QueueHighWater int
	// SendBuffered is the number of messages waiting for a connection
	// (WithSendBuffer); SendFailed counts every Send and SendAsync reported
	// failed, whatever the reason.
	SendBuffered int
	SendFailed   int64
	// Rotations counts make-before-break replacements (WithMaxConnectionAge,
	// Rotate); Duplicates the messages dropped as duplicates (by
	// WithDuplicateFilter after a rotation, and by WithSequence).
	Rotations, Duplicates int64
	// Gaps counts sequence gaps seen (WithSequence) and GapMessages the
	// numbers they skipped; ServerPings the upstream pings answered
	// (WithServerPing).
	Gaps, GapMessages, ServerPings int64
	// Restarts counts restarts of an upstream's numbering (WithSequence:
	// GapRestart), which Gaps does not count.
	Restarts int64
	// RTT is the latest ping round-trip time, SmoothedRTT an exponentially
	// weighted average (weight 1/8); zero until the first pong.
	RTT, SmoothedRTT time.Duration
	// ConnectedSince is when the current connection was established; zero
	// while not connected.
	ConnectedSince time.Time
	// With WithStandby: Won counts the data messages the primary connection
	// delivered first, and Standby describes each standby connection (the
	// message and connection counters above are the primary's).
	Won     int64
	Standby []StandbyStats
	// AdmissionWaits counts dials that had to wait for admission or a
	// handshake slot (WithAdmission, WithMaxConcurrentDials), AdmissionWaited
	// their total wait; AdmissionWaiting is true while a dial waits.
	AdmissionWaits   int64
	AdmissionWaited  time.Duration
	AdmissionWaiting bool
}

// Stats returns a snapshot of the feed's counters and state.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	s := Stats{
		Name:           c.name,
		State:          c.state,
		LastError:      c.lastErr,
		LastErrorAt:    c.lastErrAt,
		ConnectedSince: c.connectedSince(),
		SendBuffered:   len(c.sendQ),
	}
	var lanes []*lane
	if c.sb != nil {
		lanes = c.sb.lanes
	}
	c.mu.Unlock()
	st := &c.stats
	s.Connects = st.connects.Load()
	s.Disconnects = st.disconnects.Load()
	s.Attempts = st.attempts.Load()
	s.MessagesIn = st.msgsIn.Load()
	s.BytesIn = st.bytesIn.Load()
	s.MessagesOut = st.msgsOut.Load()
	s.BytesOut = st.bytesOut.Load()
	s.HandlerErrors = st.handlerErrs.Load()
	s.EventsDropped = st.eventsDropped.Load()
	s.Delivered = st.delivered.Load()
	s.HeartbeatReplies = st.replies.Load()
	s.RTT = time.Duration(st.rtt.Load())
	s.SmoothedRTT = time.Duration(st.srtt.Load())
	s.SendFailed = st.sendFailed.Load()
	s.Rotations = st.rotations.Load()
	s.Duplicates = st.duplicates.Load()
	s.Gaps = st.gaps.Load()
	s.GapMessages = st.gapMsgs.Load()
	s.Restarts = c.sequenceRestarts()
	s.ServerPings = st.serverPings.Load()
	s.Won = st.won.Load()
	s.Standby = standbyStats(lanes)
	s.AdmissionWaits = c.admit.waits.Load()
	s.AdmissionWaited = time.Duration(c.admit.waited.Load())
	s.AdmissionWaiting = c.admit.waiting.Load()
	s.DiscardedAtConnect = st.heldDropped.Load()
	if q := c.inq; q != nil {
		s.Dropped = q.Dropped()
		s.QueueDepth = q.Depth()
		s.QueueHighWater = q.HighWater()
	}
	return s
}

// PoolStats is a snapshot of a pool: per-feed Stats and totals.
type PoolStats struct {
	// Feeds holds one snapshot per feed, sorted by name.
	Feeds []Stats
	// Feed counts by state.
	Total, Connected, Connecting, BackingOff, Closed int
	// Sums over the feeds.
	Connects, Disconnects, Attempts            int64
	MessagesIn, BytesIn, MessagesOut, BytesOut int64
	HandlerErrors, Dropped, SendFailed         int64
	// AdmissionWaiting counts feeds whose dial waits for admission or a
	// handshake slot now.
	AdmissionWaiting int
}

func (ps *PoolStats) add(s Stats) {
	ps.Feeds = append(ps.Feeds, s)
	ps.addCounts(&s)
}

// addTotals counts c without a full snapshot (no allocation).
func (ps *PoolStats) addTotals(c *Client) {
	c.mu.Lock()
	state := c.state
	c.mu.Unlock()
	st := &c.stats
	s := Stats{
		State: state, Connects: st.connects.Load(), Disconnects: st.disconnects.Load(), Attempts: st.attempts.Load(),
		MessagesIn: st.msgsIn.Load(), BytesIn: st.bytesIn.Load(), MessagesOut: st.msgsOut.Load(), BytesOut: st.bytesOut.Load(),
		HandlerErrors: st.handlerErrs.Load(), SendFailed: st.sendFailed.Load(),
	}
	if q := c.inq; q != nil {
		s.Dropped = q.Dropped()
	}
	ps.addCounts(&s)
}

func (ps *PoolStats) addCounts(s *Stats) {
	ps.Total++
	switch s.State {
	case StateConnected:
		ps.Connected++
	case StateConnecting:
		ps.Connecting++
	case StateBackingOff:
		ps.BackingOff++
	case StateClosed:
		ps.Closed++
	}
	ps.Connects += s.Connects
	ps.Disconnects += s.Disconnects
	ps.Attempts += s.Attempts
	ps.MessagesIn += s.MessagesIn
	ps.BytesIn += s.BytesIn
	ps.MessagesOut += s.MessagesOut
	ps.BytesOut += s.BytesOut
	ps.HandlerErrors += s.HandlerErrors
	ps.Dropped += s.Dropped
	ps.SendFailed += s.SendFailed
	if s.AdmissionWaiting {
		ps.AdmissionWaiting++
	}
}

// connectedSince is when the current connection reached the connected state;
// c.mu must be held.
func (c *Client) connectedSince() time.Time {
	if c.conn == nil {
		return time.Time{}
	}
	return c.conn.start
}

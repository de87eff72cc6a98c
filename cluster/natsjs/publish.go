package natsjs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wspool/wspool"
)

// Headers set on every published message besides Nats-Msg-Id.
const (
	HeaderSeq    = "Wspool-Seq"    // the upstream sequence number, if Config.Seq found one
	HeaderMember = "Wspool-Member" // the member that published it
	HeaderLease  = "Wspool-Lease"  // the revision of the lease it held (the fencing token)
)

// feedRun publishes one feed's messages while its member holds the shard.
type feedRun struct {
	m       *Member
	sr      *shardRun
	f       Feed
	subj    string
	refused atomic.Bool // the stream refused a publish: someone else appends

	mu         sync.Mutex // the request func and the handler of one feed never overlap, but are on different goroutines
	last       uint64     // highest upstream seq stored downstream, as far as we know
	lastStream uint64     // stream sequence of the feed's last stored message
	known      bool       // lastStream was read from the stream

	// The message published, reused (under mu) for every publish of the
	// feed: nats.Conn copies it into its buffer before RequestMsg returns.
	// hdr's values are one-element slices of hv, so setting hv[i] sets a
	// header without allocating.
	msg nats.Msg
	hv  [numHeaders]string
}

// The headers of a published message, as indexes into feedRun.hv.
const (
	hMsgID = iota
	hSeq
	hMember
	hLease
	hExpect
	numHeaders
)

var headerNames = [numHeaders]string{
	hMsgID: jetstream.MsgIDHeader, hSeq: HeaderSeq, hMember: HeaderMember, hLease: HeaderLease,
	hExpect: jetstream.ExpectedLastSubjSeqHeader,
}

// message returns the feed's message to publish: the data with its headers
// (Wspool-Seq only with a sequence number; the expected last subject
// sequence once it is known, with one slot or with a sequence number).
func (fr *feedRun) message(data []byte, id, seq string, hasSeq bool) *nats.Msg {
	nm := &fr.msg
	if nm.Header == nil {
		nm.Subject = fr.subj
		nm.Header = make(nats.Header, numHeaders)
		fr.hv[hMember] = fr.m.cfg.Member
	}
	fr.hv[hMsgID] = id
	fr.hv[hLease] = strconv.FormatUint(fr.sr.rev.Load(), 10)
	set := func(i int, on bool) {
		if on {
			nm.Header[headerNames[i]] = fr.hv[i : i+1 : i+1]
		} else {
			delete(nm.Header, headerNames[i])
		}
	}
	set(hMsgID, true)
	set(hMember, true)
	set(hLease, true)
	fr.hv[hSeq] = seq
	set(hSeq, hasSeq)
	expect := fr.known && (fr.m.cfg.Slots == 1 || hasSeq)
	if expect {
		fr.hv[hExpect] = strconv.FormatUint(fr.lastStream, 10)
	}
	set(hExpect, expect)
	nm.Data = data
	return nm
}

// pubAck is what a publish learns from JetStream's acknowledgement.
type pubAck struct {
	seq uint64 // stream sequence of the stored message
	dup bool   // it had been stored before (same Nats-Msg-Id)
}

// publish sends one message to the stream and waits for its
// acknowledgement, at most publishTimeout. It is jetstream's PublishMsg
// without a context per message and without decoding every acknowledgement
// by reflection (a publish per message per slot is most of a member's CPU).
// No responders (the stream has no leader at the moment) is an error like
// the others: the caller retries with the same message id.
func (m *Member) publish(nm *nats.Msg) (pubAck, error) {
	resp, err := m.nc.RequestMsg(nm, m.publishTimeout())
	if err != nil {
		return pubAck{}, err
	}
	return parseAck(resp.Data)
}

// parseAck reads a publish acknowledgement. The server writes a successful
// one from a template, {"stream":"<name>",["domain":"<d>",]"seq":<n>} with
// ,"duplicate": true before the brace for a copy; that form is read
// directly, anything else (an error, another server's formatting) is
// decoded as JSON.
func parseAck(b []byte) (pubAck, error) {
	if a, ok := quickAck(b); ok {
		return a, nil
	}
	var r struct {
		Error     *jetstream.APIError `json:"error"`
		Stream    string              `json:"stream"`
		Seq       uint64              `json:"seq"`
		Duplicate bool                `json:"duplicate"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return pubAck{}, jetstream.ErrInvalidJSAck
	}
	if r.Error != nil {
		return pubAck{}, fmt.Errorf("natsjs: publish: %w", r.Error)
	}
	if r.Stream == "" {
		return pubAck{}, jetstream.ErrInvalidJSAck
	}
	return pubAck{seq: r.Seq, dup: r.Duplicate}, nil
}

// quickAck reads the server's success template; ok is false for anything
// else.
func quickAck(b []byte) (a pubAck, ok bool) {
	const prefix, seqKey = `{"stream":"`, `,"seq":`
	if !bytes.HasPrefix(b, []byte(prefix)) || len(b) == len(prefix) || b[len(prefix)] == '"' ||
		bytes.Contains(b, []byte(`"error"`)) {
		return a, false // not the template, no stream name, or an error
	}
	i := bytes.LastIndex(b, []byte(seqKey))
	if i < len(prefix)+1 {
		return a, false
	}
	rest := b[i+len(seqKey):]
	n := 0
	for n < len(rest) && n < 20 && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	if n == 0 {
		return a, false
	}
	seq, err := strconv.ParseUint(string(rest[:n]), 10, 64)
	if err != nil || seq == 0 {
		return a, false
	}
	switch string(rest[n:]) {
	case "}":
		return pubAck{seq: seq}, true
	case `,"duplicate": true}`, `,"duplicate":true}`:
		return pubAck{seq: seq, dup: true}, true
	}
	return a, false
}

func newFeedRun(m *Member, sr *shardRun, f Feed) *feedRun {
	return &feedRun{m: m, sr: sr, f: f, subj: m.Subject(f.Name)}
}

var errFenced = errors.New("natsjs: lease not proven")

// request runs before every dial: it reads the feed's last stored message
// and hands its sequence to Config.Resume.
func (fr *feedRun) request(ctx context.Context, u *url.URL, h http.Header) error {
	m := fr.m
	if !fr.sr.proven(m.mono()) {
		return errFenced
	}
	msg, err := m.stream.GetLastMsgForSubject(ctx, fr.subj)
	fr.mu.Lock()
	switch {
	case err == nil:
		fr.lastStream = msg.Sequence
		if s, perr := strconv.ParseUint(msg.Header.Get(HeaderSeq), 10, 64); perr == nil && s > fr.last {
			fr.last = s
		}
	case errors.Is(err, jetstream.ErrMsgNotFound):
		fr.lastStream = 0
	default:
		fr.mu.Unlock()
		return err
	}
	fr.known = true
	last := fr.last
	fr.mu.Unlock()
	if m.cfg.Resume != nil {
		return m.cfg.Resume(fr.f, u, h, last)
	}
	return nil
}

func wrongLastSeq(err error) bool {
	var ae *jetstream.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			ae.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return false
}

// handle publishes one message, retrying with the same message id until it
// is stored, the lease can no longer be proven, or the feed stops.
func (fr *feedRun) handle(ctx context.Context, msg wspool.Message) error {
	m := fr.m
	st := &m.stats
	fr.mu.Lock()
	defer fr.mu.Unlock()
	var seq uint64
	hasSeq := false
	if m.cfg.Seq != nil {
		seq, hasSeq = m.cfg.Seq(msg)
	}
	if hasSeq && seq <= fr.last {
		st.skipped.Add(1)
		return nil
	}
	var id, seqStr string
	if hasSeq {
		seqStr = strconv.FormatUint(seq, 10)
		id = fr.f.Name + ":" + seqStr
	} else {
		sum := sha256.Sum256(msg.Data)
		id = fr.f.Name + ":#" + hex.EncodeToString(sum[:16])
	}
	wait := 20 * time.Millisecond
	for {
		if fr.sr.handing.Load() {
			return nil // handed over: the next owner resumes from the stream
		}
		if fr.refused.Load() || !fr.sr.proven(m.mono()) {
			// Once a message is dropped, none after it may be published
			// (that would leave a gap): the feed waits to be restarted.
			st.fencedDrops.Add(1)
			if fr.refused.CompareAndSwap(false, true) {
				m.kick()
			}
			return nil
		}
		nm := fr.message(msg.Data, id, seqStr, hasSeq)
		// The publish is not cut short when the feed stops: a hand-over
		// waits for it, so the next owner reads it as the last message.
		ack, err := m.publish(nm)
		if err == nil {
			if ack.dup {
				st.duplicates.Add(1)
			} else {
				st.published.Add(1)
			}
			fr.stored(ack.seq, seq, hasSeq)
			return nil
		}
		if wrongLastSeq(err) {
			// Either our own earlier attempt was stored and its ack lost,
			// or another member appended: the last message tells which.
			// (JetStream checks the expected sequence before the message
			// id, so a copy within the duplicate window is refused too.)
			gctx, gcancel := context.WithTimeout(context.Background(), m.publishTimeout())
			lm, gerr := m.stream.GetLastMsgForSubject(gctx, fr.subj)
			gcancel()
			if gerr == nil && lm.Header.Get(jetstream.MsgIDHeader) == id {
				st.duplicates.Add(1)
				fr.stored(lm.Sequence, seq, hasSeq)
				return nil
			}
			if gerr == nil && m.cfg.Slots > 1 && hasSeq {
				// Another slot's holder is ahead: the feed's numbers are
				// stored in order without gaps (every append names its
				// predecessor), so a last number at or above ours means
				// ours is stored. Later numbers up to it are skipped, and
				// the next publish names that last message.
				if ls, perr := strconv.ParseUint(lm.Header.Get(HeaderSeq), 10, 64); perr == nil && ls >= seq {
					st.duplicates.Add(1)
					fr.lastStream = lm.Sequence
					fr.last = ls
					return nil
				}
			}
			if gerr == nil {
				m.log.Debug("natsjs: publish refused: the feed's last message is not ours", "feed", fr.f.Name, "id", id,
					"expected", fr.lastStream, "last", lm.Sequence, "last_id", lm.Header.Get(jetstream.MsgIDHeader), "err", err)
				st.fencedDrops.Add(1)
				if fr.refused.CompareAndSwap(false, true) {
					m.kick()
				}
				return nil
			}
			err = gerr
		}
		st.publishRetries.Add(1)
		if ctx.Err() != nil {
			return nil // stopping; the next owner resumes from the stream
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-fr.sr.quit: // the next attempt would not be made
			t.Stop()
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
}

// publishTimeout bounds one publish attempt: TTL/4 between 500 ms and 1 s.
// A publish sent to a server that died unanswered is retried (with the same
// id) after it, so it bounds the pause a lost NATS leader adds.
func (m *Member) publishTimeout() time.Duration {
	return min(max(m.cfg.TTL/4, 500*time.Millisecond), time.Second)
}

func (fr *feedRun) stored(streamSeq, seq uint64, hasSeq bool) {
	if streamSeq > fr.lastStream {
		fr.lastStream = streamSeq
	}
	if hasSeq && seq > fr.last {
		fr.last = seq
	}
}

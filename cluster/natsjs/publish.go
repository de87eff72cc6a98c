package natsjs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
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
	var id string
	if hasSeq {
		id = fr.f.Name + ":" + strconv.FormatUint(seq, 10)
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
		nm := &nats.Msg{Subject: fr.subj, Data: msg.Data, Header: nats.Header{}}
		if hasSeq {
			nm.Header.Set(HeaderSeq, strconv.FormatUint(seq, 10))
		}
		nm.Header.Set(HeaderMember, m.cfg.Member)
		nm.Header.Set(HeaderLease, strconv.FormatUint(fr.sr.rev.Load(), 10))
		opts := []jetstream.PublishOpt{jetstream.WithMsgID(id)}
		if m.cfg.Slots == 1 && fr.known {
			opts = append(opts, jetstream.WithExpectLastSequencePerSubject(fr.lastStream))
		}
		// The publish is not cut short when the feed stops: a hand-over
		// waits for it, so the next owner reads it as the last message.
		pctx, cancel := context.WithTimeout(context.Background(), m.publishTimeout())
		ack, err := m.js.PublishMsg(pctx, nm, opts...)
		cancel()
		if err == nil {
			if ack.Duplicate {
				st.duplicates.Add(1)
			} else {
				st.published.Add(1)
			}
			fr.stored(ack.Sequence, seq, hasSeq)
			return nil
		}
		if wrongLastSeq(err) {
			// Either our own earlier attempt was stored and its ack lost,
			// or another member appended: the last message tells which.
			gctx, gcancel := context.WithTimeout(context.Background(), m.publishTimeout())
			lm, gerr := m.stream.GetLastMsgForSubject(gctx, fr.subj)
			gcancel()
			if gerr == nil && lm.Header.Get(jetstream.MsgIDHeader) == id {
				st.duplicates.Add(1)
				fr.stored(lm.Sequence, seq, hasSeq)
				return nil
			}
			if gerr == nil {
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

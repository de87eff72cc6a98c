package natsjs

import "sync/atomic"

// Stats is a snapshot of a member's counters since New.
type Stats struct {
	// LeasesHeld is the number of slot leases held now; Feeds the number
	// of feeds running for them.
	LeasesHeld, Feeds int
	// Acquired counts leases claimed; of those, Takeovers were taken from a
	// member that stopped renewing (expired), and Handovers were released
	// by their holder (graceful shutdown or rebalancing).
	Acquired, Takeovers, Handovers int64
	// Released counts leases this member handed over; Lost those another
	// member took or the server refused to renew; Fenced those given up
	// because no renewal succeeded within TTL-Margin.
	Released, Lost, Fenced int64
	// Published counts messages stored downstream; Duplicates publishes
	// JetStream recognised as already stored (a standby's copies, retries);
	// Skipped messages whose sequence was not above the last one stored
	// (not published at all); FencedDrops messages not published because
	// the lease could not be proven or the stream refused the append;
	// PublishRetries failed attempts that were retried.
	Published, Duplicates, Skipped, FencedDrops, PublishRetries int64
}

type counters struct {
	held, feeds                                                 int64Counter
	acquired, takeovers, handovers, released, lost, fenced      int64Counter
	published, duplicates, skipped, fencedDrops, publishRetries int64Counter
}

type int64Counter = atomic.Int64

// Stats returns the member's counters.
func (m *Member) Stats() Stats {
	c := &m.stats
	return Stats{
		LeasesHeld: int(c.held.Load()), Feeds: int(c.feeds.Load()),
		Acquired: c.acquired.Load(), Takeovers: c.takeovers.Load(), Handovers: c.handovers.Load(),
		Released: c.released.Load(), Lost: c.lost.Load(), Fenced: c.fenced.Load(),
		Published: c.published.Load(), Duplicates: c.duplicates.Load(), Skipped: c.skipped.Load(),
		FencedDrops: c.fencedDrops.Load(), PublishRetries: c.publishRetries.Load(),
	}
}

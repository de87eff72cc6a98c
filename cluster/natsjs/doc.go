// Package natsjs spreads wspool feeds over several processes ("members") with
// NATS JetStream: ownership by leases in a key-value bucket, and downstream
// publishing to a stream that drops duplicates by message id.
//
// # Ownership
//
// Every member registers itself in the leases bucket under m.<member> and
// renews that key every TTL/4. A feed belongs to one of Config.Shards shards
// (a hash of its name); each shard has Config.Slots slots. A member claims a
// free slot of a shard only if it ranks among the shard's top Slots live
// members by rendezvous hashing, so every member computes the same owners
// from the same membership and a member joining or leaving moves only its
// share of the shards. A slot's lease is the key s.<shard>.<slot>, written
// with Create (or, for an expired lease, Update with the revision last seen)
// and renewed with Update(revision): the revision is the fencing token, and
// a write with a stale revision is refused by JetStream. While a member holds
// a slot it runs every registered feed of that shard in its wspool.Pool.
//
// A lease is proven for TTL-Margin from the moment its last successful renewal
// was sent. A member that cannot prove a lease within that time stops the
// shard's feeds and drops their messages (it fences itself), whether the
// cause is a NATS partition or the process having been paused. Another member
// takes a lease over only after it saw the key unchanged for a whole TTL, by
// its own monotonic clock, so a holder always stops Margin before anyone else
// starts (clock offsets between machines play no part; only the rates of the
// clocks must agree to within Margin/TTL). A member that shuts down (its Run
// context ends, e.g. on SIGTERM) stops its feeds and deletes its leases at
// once, and the next member in rank claims them without waiting for the TTL.
//
// # Downstream
//
// Each message is published to the subject <Name>.feed.<feed> of the stream
// <Name> with the Nats-Msg-Id "<feed>:<seq>", where seq comes from
// Config.Seq (the upstream's own sequence number), or "<feed>:#<hash>" from the
// content where the upstream has none. JetStream drops a message whose id it
// has stored within the stream's duplicate window, so the same message
// published twice (by a standby, by a new owner that resumed a little early,
// by a retry whose acknowledgement was lost) is stored once.
//
// A publish also carries the stream sequence of the feed's previous message
// (Nats-Expected-Last-Subject-Sequence), with one slot per shard, and with
// any number when Config.Seq gives sequence numbers: JetStream stores it only
// while that message is still the feed's last, so a member that lost its
// lease without noticing cannot append behind its successor, whatever its
// clock says, and a copy that arrives late (after a partition, a pause, or
// the duplicate window) is refused. Before every dial the owner reads the last stored
// message of the feed and hands its sequence to Config.Resume, which puts the
// resume point into the URL or headers, so a new owner continues where the
// old one stopped.
//
// With two (or more) slots every slot holder runs the feed and publishes;
// JetStream keeps the first copy of each message. A member that dies costs
// nothing but the standby's lag.
//
// # The NATS connection
//
// A member's connection must not buffer while it reconnects
// (nats.ReconnectBufSize(-1); New refuses it otherwise), so that no renewal
// or publish is sent after its lease ended; and it should notice a frozen
// server within TTL-Margin (nats.PingInterval, nats.MaxPingsOutstanding).
// When the connection comes back (NATS restarted, or a partition healed)
// Run watches the buckets again at once and counts the outage as nobody's
// silence: a member that died meanwhile is taken over a TTL after NATS is
// back, and the others keep their leases.
//
// # Feeds
//
// The desired feeds live in the feeds bucket (Member.Register,
// Member.Unregister), so every member sees the same set; a change starts or
// stops the feed on its current owner.
package natsjs

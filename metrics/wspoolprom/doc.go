// Package wspoolprom exports the statistics and timings of a wspool.Pool as
// Prometheus metrics (github.com/prometheus/client_golang). It is a module
// of its own, so the library's go.mod does not pull in client_golang.
//
//	timings := wspoolprom.NewTimings("ingest", wspoolprom.TimingOpts{})
//	pool, err := wspool.NewPool(wspool.WithTimings(timings.Observe))
//	...
//	reg.MustRegister(wspoolprom.NewCollector(pool, "ingest"), timings)
//
// # Metrics
//
// Every metric has the label pool (the name given to NewCollector,
// NewTotalsCollector and NewTimings), so several pools can share one
// registry. Counters end in _total, durations are in seconds and sizes in
// bytes. Counters restart at zero when a feed is removed and added again,
// which rate() handles as a counter reset.
//
// Pool-wide (NewCollector and NewTotalsCollector), from wspool.PoolStats:
//
//	wspool_feeds{state}                          gauge    feeds in each state (Total, Connected, Connecting, BackingOff, Closed; idle is the rest)
//	wspool_pool_connects_total                   counter  Connects
//	wspool_pool_disconnects_total                counter  Disconnects
//	wspool_pool_connect_attempts_total           counter  Attempts
//	wspool_pool_messages_received_total          counter  MessagesIn
//	wspool_pool_received_bytes_total             counter  BytesIn
//	wspool_pool_messages_sent_total              counter  MessagesOut
//	wspool_pool_sent_bytes_total                 counter  BytesOut
//	wspool_pool_handler_errors_total             counter  HandlerErrors
//	wspool_pool_dropped_messages_total           counter  Dropped
//	wspool_pool_send_failures_total              counter  SendFailed
//	wspool_pool_admission_waiting                gauge    AdmissionWaiting
//
// Per feed (NewCollector only; label feed, the feed's name), from
// wspool.Stats:
//
//	wspool_feed_state{state}                     gauge    State: 1 for the current state, 0 for the others
//	wspool_feed_connected                        gauge    State: 1 while connected
//	wspool_feed_connected_since_seconds          gauge    ConnectedSince as Unix time; absent while not connected
//	wspool_feed_connects_total                   counter  Connects
//	wspool_feed_disconnects_total                counter  Disconnects
//	wspool_feed_connect_attempts_total           counter  Attempts
//	wspool_feed_last_error_timestamp_seconds     gauge    LastErrorAt as Unix time; absent if none (LastError's text is logged, not exported)
//	wspool_feed_messages_received_total          counter  MessagesIn
//	wspool_feed_received_bytes_total             counter  BytesIn
//	wspool_feed_messages_sent_total              counter  MessagesOut
//	wspool_feed_sent_bytes_total                 counter  BytesOut
//	wspool_feed_messages_delivered_total         counter  Delivered
//	wspool_feed_heartbeat_replies_total          counter  HeartbeatReplies
//	wspool_feed_handler_errors_total             counter  HandlerErrors
//	wspool_feed_callback_events_dropped_total    counter  EventsDropped
//	wspool_feed_connect_discarded_messages_total counter  DiscardedAtConnect
//	wspool_feed_dropped_messages_total           counter  Dropped
//	wspool_feed_queue_depth                      gauge    QueueDepth
//	wspool_feed_queue_high_water                 gauge    QueueHighWater
//	wspool_feed_send_buffered                    gauge    SendBuffered
//	wspool_feed_send_failures_total              counter  SendFailed
//	wspool_feed_rotations_total                  counter  Rotations
//	wspool_feed_duplicates_dropped_total         counter  Duplicates
//	wspool_feed_sequence_gaps_total              counter  Gaps
//	wspool_feed_sequence_gap_messages_total      counter  GapMessages
//	wspool_feed_sequence_restarts_total          counter  Restarts
//	wspool_feed_server_pings_total               counter  ServerPings
//	wspool_feed_rtt_seconds                      gauge    RTT; absent until the first pong
//	wspool_feed_smoothed_rtt_seconds             gauge    SmoothedRTT; absent until the first pong
//	wspool_feed_won_messages_total               counter  Won
//	wspool_feed_admission_waits_total            counter  AdmissionWaits
//	wspool_feed_admission_wait_seconds_total     counter  AdmissionWaited
//	wspool_feed_admission_waiting                gauge    AdmissionWaiting: 1 while a dial waits
//
// Per standby connection (NewCollector, feeds with wspool.WithStandby;
// labels feed and standby, the connection's Index), from wspool.StandbyStats:
//
//	wspool_feed_standby_connected                gauge    Connected
//	wspool_feed_standby_connects_total           counter  Connects
//	wspool_feed_standby_disconnects_total        counter  Disconnects
//	wspool_feed_standby_messages_received_total  counter  MessagesIn
//	wspool_feed_standby_won_messages_total       counter  Won
//
// Timings (Timings, fed by wspool.WithTimings), histograms named after the
// wspool.TimingKind (TimingMetricName), label pool and, with
// TimingOpts.PerFeed, feed:
//
//	wspool_handshake_duration_seconds            TimingHandshake
//	wspool_on_connect_duration_seconds           TimingOnConnect
//	wspool_first_message_duration_seconds        TimingFirstMessage
//	wspool_handler_duration_seconds              TimingHandler
//	wspool_queue_wait_duration_seconds           TimingQueueWait
//
// State label values are idle, connecting, connected, backing_off and
// closed (StateLabel). Every state is always exported, 0 or 1 per feed, so
// that wspool_feed_state{state="connected"} == 0 finds the feeds that are
// down. A gauge that has no meaningful value yet (RTT before the first pong,
// connected_since while disconnected) is left out rather than exported as 0.
//
// # Cardinality
//
// NewCollector exports 33 series per feed that is not connected (5 states,
// 28 other metrics) and up to 37 per connected feed (RTT, smoothed RTT,
// connected-since, last error), plus 5 per standby connection: 330,000 to
// 370,000 series for 10,000 feeds. Measured with 10,000 idle feeds
// (TestScrape10000Feeds, without -race, as ci.sh runs it;
// BenchmarkCollect10000Feeds): on a quiet 2-core machine 330,016 series,
// 22.2 MB of exposition text, one scrape (gather and text encoding) 1.34 s of
// CPU (957 ms wall, best of 3), about 260 MB allocated per scrape (garbage
// once the scrape is written; nothing is kept between scrapes); at load
// average 10 to 30 with 32 series per feed it was 1.1 to 1.6 s of CPU.
// NewTotalsCollector on the same pool: 16 series, 2 ms, under 1 MB.
//
// That is a lot for one Prometheus target. For pools of thousands of feeds,
// register NewTotalsCollector instead (16 series whatever the feed count,
// from Pool.Totals, which allocates nothing per feed), and keep per-feed
// detail for the few feeds you watch, e.g. with a second pool of those
// feeds under NewCollector, or by reading Client.Stats on demand. Timings
// are pool-wide by default for the same reason: with TimingOpts.PerFeed,
// each feed adds 5 histograms of len(Buckets)+2 series.
package wspoolprom

package natsjs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wspool/wspool"
)

// Feed is one desired upstream feed. Name identifies it across the cluster
// (it picks the shard, the subject and the message ids); URL is dialled by
// whichever member owns it.
type Feed struct {
	Name string `json:"name"`
	URL  string `json:"url"`
}

// Config configures a Member. The zero value of every field but Member
// (required for Run) has a usable default. Name, Shards, Slots and TTL must
// be the same on every member of a cluster.
type Config struct {
	// Name names the cluster: the KV buckets <Name>_leases and <Name>_feeds,
	// the stream <Name> and its subjects <Name>.feed.<feed>. Letters, digits,
	// '-' and '_'; default "wspool".
	Name string
	// Member identifies this member; letters, digits, '-' and '_'. A member
	// restarted under the same id (a StatefulSet pod) takes its own keys back.
	Member string
	// Shards is the number of shards feeds hash to (default 256). More
	// shards spread feeds more evenly (each member's share varies like a
	// binomial over Shards) at the cost of one lease renewal per shard and
	// slot every TTL/4.
	Shards int
	// Slots is the number of members that run each shard's feeds at once: 1
	// (default) for one owner, 2 for a hot standby publishing the same
	// messages (JetStream drops the copies).
	Slots int
	// TTL is the lease time to live (default 5s): a dead member's shards are
	// taken over between TTL and TTL plus one check interval (TTL/10) after
	// its last renewal. It must be well above the worst pause of a NATS
	// request, such as a JetStream leader election.
	TTL time.Duration
	// Margin is how long before the TTL a member stops publishing when it
	// cannot prove its lease (default TTL/4).
	Margin time.Duration
	// Replicas is the replica count of the buckets and the stream when Run
	// creates them (default 1; 3 in production). Existing ones are used as
	// they are.
	Replicas int
	// Storage of the buckets and the stream when Run creates them (default
	// file storage).
	Storage jetstream.StorageType
	// DuplicateWindow is the stream's de-duplication window when Run creates
	// it (default 2 minutes): copies of a message published within it are
	// dropped.
	DuplicateWindow time.Duration
	// MaxAge of the stream when Run creates it (default 0: kept until other
	// limits apply). Must be at least DuplicateWindow if set.
	MaxAge time.Duration

	// Seq extracts the upstream's sequence number from a message (ok false:
	// none). With Seq the message id is "<feed>:<seq>" and a message whose
	// seq is not above the last one published is skipped; without it the
	// id is a hash of the content.
	Seq func(msg wspool.Message) (seq uint64, ok bool)
	// Resume is called before every dial of a feed with a copy of its URL and
	// headers and the highest seq of the feed stored downstream (0 if none):
	// it puts the resume point into the request (e.g. ?from=last+1).
	Resume func(f Feed, u *url.URL, h http.Header, last uint64) error
	// FeedOptions returns extra wspool options for a feed (pings, queue,
	// heartbeats), after the pool's defaults. The member names every feed
	// (Feed.Name) and sets its request func (for Resume) itself: WithName or
	// WithRequestFunc among them is an error, which Register returns for
	// the feeds it registers and which keeps a feed from starting on a
	// member (logged at Error level). Register also checks the options
	// and the URL as wspool.NewClient does. FeedOptions is called by
	// Register and each time a feed starts on this member.
	FeedOptions func(f Feed) []wspool.Option
	// PoolOptions are passed to wspool.NewPool; New fails for options it
	// refuses, and for WithName or WithRequestFunc among them (the member
	// sets both on every feed: use Config.Resume).
	PoolOptions []wspool.PoolOption
	// Logger receives the member's events and New's warnings (default:
	// slog.Default(); slog.New(slog.DiscardHandler) silences them).
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.Name == "" {
		c.Name = "wspool"
	}
	if !validToken(c.Name) {
		return fmt.Errorf("natsjs: invalid Name %q (letters, digits, '-', '_')", c.Name)
	}
	if c.Member != "" && !validToken(c.Member) {
		return fmt.Errorf("natsjs: invalid Member %q (letters, digits, '-', '_')", c.Member)
	}
	if c.Shards == 0 {
		c.Shards = 256
	}
	if c.Slots == 0 {
		c.Slots = 1
	}
	if c.TTL == 0 {
		c.TTL = 5 * time.Second
	}
	if c.Margin == 0 {
		c.Margin = c.TTL / 4
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = 2 * time.Minute
	}
	switch {
	case c.Shards < 1 || c.Shards > 1<<16:
		return fmt.Errorf("natsjs: Shards %d out of range 1..65536", c.Shards)
	case c.Slots < 1 || c.Slots > 8:
		return fmt.Errorf("natsjs: Slots %d out of range 1..8", c.Slots)
	case c.TTL < 500*time.Millisecond:
		return fmt.Errorf("natsjs: TTL %v below 500ms", c.TTL)
	case c.Margin <= 0 || c.Margin >= c.TTL/2:
		return fmt.Errorf("natsjs: Margin %v must be above 0 and below TTL/2", c.Margin)
	case c.MaxAge != 0 && c.MaxAge < c.DuplicateWindow:
		return fmt.Errorf("natsjs: MaxAge %v below DuplicateWindow %v", c.MaxAge, c.DuplicateWindow)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Member is one process of a cluster: it registers desired feeds, and its Run
// takes part in ownership and runs the feeds of the shards it holds. Its
// methods are safe for concurrent use.
type Member struct {
	cfg    Config
	holder string // the value of the leases it holds: "<Member>@<random>", one per Member value
	nc     *nats.Conn
	js     jetstream.JetStream
	log    *slog.Logger
	base   time.Time // monotonic reference for deadlines
	stats  counters
	kickCh chan struct{} // a publisher saw itself fenced by the stream

	setupMu   sync.Mutex
	setupDone bool
	leases    jetstream.KeyValue
	feedsKV   jetstream.KeyValue
	stream    jetstream.Stream

	running atomic.Bool
}

// New returns a Member using the NATS connection nc (which the caller owns
// and closes after Run returns). It fails for an invalid Config, and for a
// member that can Run (Config.Member set) whose connection buffers
// publishes while it reconnects: connect with nats.ReconnectBufSize(-1).
// Buffered lease renewals and publishes would be sent when the connection
// comes back, however long after their lease ended.
func New(nc *nats.Conn, cfg Config) (*Member, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	var defaults []wspool.Option
	for _, o := range cfg.PoolOptions {
		if fo, ok := o.(wspool.Option); ok {
			defaults = append(defaults, fo)
		}
	}
	if err := checkOwnOptions("PoolOptions", defaults); err != nil {
		return nil, err
	}
	if _, err := wspool.NewPool(cfg.PoolOptions...); err != nil {
		return nil, fmt.Errorf("natsjs: PoolOptions: %w", err)
	}
	if cfg.Member != "" && nc.Opts.ReconnectBufSize >= 0 {
		return nil, fmt.Errorf("natsjs: the NATS connection buffers publishes while reconnecting (ReconnectBufSize %d): lease renewals and publishes could be sent after their lease ended; connect with nats.ReconnectBufSize(-1)", nc.Opts.ReconnectBufSize)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("natsjs: %w", err)
	}
	// A connection to a frozen server (no FIN, no RST) is only left after
	// MaxPingsOut unanswered pings; until then no renewal gets through.
	if d := nc.Opts.PingInterval * time.Duration(nc.Opts.MaxPingsOut+1); d >= cfg.TTL-cfg.Margin {
		cfg.Logger.Warn("natsjs: the NATS connection notices a frozen server only after its pings time out, later than a lease can go unrenewed; use nats.PingInterval and nats.MaxPingsOutstanding to bring it below TTL-Margin",
			"ping_detection", d, "ttl_minus_margin", cfg.TTL-cfg.Margin)
	}
	var inc [6]byte
	_, _ = rand.Read(inc[:])
	return &Member{
		cfg:    cfg,
		holder: cfg.Member + "@" + hex.EncodeToString(inc[:]),
		nc:     nc,
		js:     js,
		log:    cfg.Logger.With("member", cfg.Member),
		base:   time.Now(),
		kickCh: make(chan struct{}, 1),
	}, nil
}

// ownOptions are the options a member sets on every feed itself: the same
// in PoolOptions or FeedOptions could not apply.
var ownOptions = []struct {
	name, instead string
	o             wspool.Option
}{
	{"WithName", "a feed's name is its Feed.Name", wspool.WithName("x")},
	{"WithRequestFunc", "use Config.Resume", wspool.WithRequestFunc(func(context.Context, *url.URL, http.Header) error { return nil })},
}

// checkOwnOptions fails if opts (from where) set what the member sets on
// every feed.
func checkOwnOptions(where string, opts []wspool.Option) error {
	for _, own := range ownOptions {
		if wspool.OptionsOverlap(own.o, opts...) {
			return fmt.Errorf("natsjs: %w: %s in %s cannot apply: the member sets it on every feed (%s)", wspool.ErrInvalidOption, own.name, where, own.instead)
		}
	}
	return nil
}

// feedOptions returns Config.FeedOptions(f), checked.
func (m *Member) feedOptions(f Feed) ([]wspool.Option, error) {
	if m.cfg.FeedOptions == nil {
		return nil, nil
	}
	opts := m.cfg.FeedOptions(f)
	if err := checkOwnOptions("FeedOptions("+f.Name+")", opts); err != nil {
		return nil, err
	}
	return opts, nil
}

// Subject returns the subject a feed's messages are published to.
func (m *Member) Subject(feed string) string {
	return m.cfg.Name + ".feed." + escapeToken(feed)
}

// StreamName returns the name of the downstream stream.
func (m *Member) StreamName() string { return m.cfg.Name }

// setup creates (or finds) the buckets and the stream; after a failure the
// next call tries again.
func (m *Member) setup(ctx context.Context) error {
	m.setupMu.Lock()
	defer m.setupMu.Unlock()
	if m.setupDone {
		return nil
	}
	if err := m.doSetup(ctx); err != nil {
		return err
	}
	m.setupDone = true
	return nil
}

func (m *Member) doSetup(ctx context.Context) error {
	kv := func(name string, maxAge time.Duration) (jetstream.KeyValue, error) {
		b, err := m.js.KeyValue(ctx, name)
		if err == nil {
			return b, nil
		}
		if !errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, err
		}
		b, err = m.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: name, History: 1, TTL: maxAge,
			Replicas: m.cfg.Replicas, Storage: m.cfg.Storage,
		})
		if errors.Is(err, jetstream.ErrBucketExists) { // created meanwhile
			return m.js.KeyValue(ctx, name)
		}
		return b, err
	}
	var err error
	// Leases and member keys expire on the server a few TTLs after their
	// last write: the takeover logic does not depend on it (it goes by what
	// each member observed), it only keeps dead keys from piling up.
	if m.leases, err = kv(m.cfg.Name+"_leases", 3*m.cfg.TTL); err != nil {
		return fmt.Errorf("natsjs: leases bucket: %w", err)
	}
	if m.feedsKV, err = kv(m.cfg.Name+"_feeds", 0); err != nil {
		return fmt.Errorf("natsjs: feeds bucket: %w", err)
	}
	m.stream, err = m.js.Stream(ctx, m.cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		m.stream, err = m.js.CreateStream(ctx, jetstream.StreamConfig{
			Name:       m.cfg.Name,
			Subjects:   []string{m.cfg.Name + ".feed.>"},
			Storage:    m.cfg.Storage,
			Replicas:   m.cfg.Replicas,
			Duplicates: m.cfg.DuplicateWindow,
			MaxAge:     m.cfg.MaxAge,
			// A feed's last message is read with a direct get: a
			// publisher that lost a race to the feed's other slot reads
			// it for every message, more than JetStream's API queue
			// takes under load.
			AllowDirect: true,
		})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			m.stream, err = m.js.Stream(ctx, m.cfg.Name)
		}
	}
	if err != nil {
		return fmt.Errorf("natsjs: stream: %w", err)
	}
	return nil
}

// Register adds or replaces desired feeds in the feeds bucket; the members
// that own their shards start them. It creates the buckets and the stream if
// they do not exist. It first checks every feed, with this member's
// FeedOptions, as wspool.NewClient would (a ws:// or wss:// URL, valid
// options, neither WithName nor WithRequestFunc among them), and registers
// none if one fails.
func (m *Member) Register(ctx context.Context, feeds ...Feed) error {
	for _, f := range feeds {
		if f.Name == "" {
			return errors.New("natsjs: feed without a name")
		}
		opts, err := m.feedOptions(f)
		if err == nil {
			_, err = wspool.NewClient(f.URL, nil, opts...)
		}
		if err != nil {
			return fmt.Errorf("natsjs: feed %s: %w", f.Name, err)
		}
	}
	if err := m.setup(ctx); err != nil {
		return err
	}
	for _, f := range feeds {
		b, _ := json.Marshal(f)
		if _, err := m.feedsKV.Put(ctx, "f."+escapeToken(f.Name), b); err != nil {
			return fmt.Errorf("natsjs: register %s: %w", f.Name, err)
		}
	}
	return nil
}

// Unregister removes desired feeds by name; their owners stop them.
func (m *Member) Unregister(ctx context.Context, names ...string) error {
	if err := m.setup(ctx); err != nil {
		return err
	}
	for _, n := range names {
		if err := m.feedsKV.Delete(ctx, "f."+escapeToken(n)); err != nil {
			return fmt.Errorf("natsjs: unregister %s: %w", n, err)
		}
	}
	return nil
}

// Feeds lists the desired feeds.
func (m *Member) Feeds(ctx context.Context) ([]Feed, error) {
	if err := m.setup(ctx); err != nil {
		return nil, err
	}
	lister, err := m.feedsKV.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var out []Feed
	for k := range lister.Keys() {
		e, err := m.feedsKV.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var f Feed
		if json.Unmarshal(e.Value(), &f) == nil {
			out = append(out, f)
		}
	}
	return out, nil
}

// holderName returns the member named by a lease value ("<member>@<id>").
func holderName(v string) string {
	name, _, _ := strings.Cut(v, "@")
	return name
}

// mono is the member's monotonic clock.
func (m *Member) mono() time.Duration { return time.Since(m.base) }

func (m *Member) kick() {
	select {
	case m.kickCh <- struct{}{}:
	default:
	}
}

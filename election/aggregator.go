// Package election runs keeper's aggregator: one keeper, elected through
// etcd, emits the fleet-wide gauges, and every keeper publishes a compact
// summary of the shards it owns so that the leader never has to read Redis.
//
// The keys are shard.Keys: election/ (the candidates), summaries/ (one per
// keeper, bound to its publisher's lease) and stats/rebalances (the fleet's
// rebalance count), and, read only, members/ and owners/ as package shard
// writes them.
//
// The Aggregator campaigns and, while it leads (leadership.go), keeps a view
// of the fleet from watches (fleet.go): it counts rebalances (rebalances.go)
// and sums the summaries into per-queue totals (totals.go). The Publisher
// (publisher.go) writes this keeper's summary.
//
// Write rates: a Publisher writes its key once when it starts (or its lease
// is renewed by a new session) and then at most once per Interval, only when
// the summary changed, whatever the number of shards. The leader writes
// stats/rebalances once per member-set change it counts. Each keeper renews
// one lease for its candidacy and one for its summary (lease renewals do not
// go through raft); the leader renews its candidacy lease a second way, with
// shard.Lease, to know when it must stop claiming leadership.
package election

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keeperhq/keeper/internal/memberid"
	"github.com/keeperhq/keeper/internal/service"
	"github.com/keeperhq/keeper/otel"
	"github.com/keeperhq/keeper/queue"
	"github.com/keeperhq/keeper/shard"
)

// CatalogIntervalDefault is Config.CatalogInterval's default.
const CatalogIntervalDefault = 10 * time.Second

const minBackoff = 100 * time.Millisecond

// ErrNoLeader is returned by Leader when no keeper is campaigning.
var ErrNoLeader = errors.New("no aggregator leader")

// Config configures an Aggregator. Zero values take the defaults noted.
type Config struct {
	// Prefix is the etcd key prefix shared with package shard; default
	// shard.PrefixDefault. A missing trailing '/' is added.
	Prefix string
	// MemberID names this keeper in the election (the value of its
	// candidate key, what Leader returns); default a random 16-hex-digit id.
	// Use the shard member id so that `keeper status` names a real member.
	MemberID string
	// SessionTTL is the candidacy lease TTL, rounded up to whole seconds, at
	// least 2s (etcd's minimum); default shard.SessionTTLDefault. A crashed
	// leader is replaced within about this long.
	SessionTTL time.Duration
	// Units is the number of ownership units, needed to map shards to units
	// with shard.UnitOf. The ring configuration the coordinators record at
	// <prefix>ring takes precedence (a mismatch is logged), so this only
	// matters before any coordinator ran; default shard.UnitsDefault.
	Units int
	// CatalogInterval is how often the leader calls the catalog again to
	// learn about new or removed shards; default CatalogIntervalDefault.
	// Ownership and summaries are followed by watches and need no polling.
	CatalogInterval time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	c.Prefix = shard.NewKeys(c.Prefix).Prefix()
	if c.MemberID == "" {
		c.MemberID = memberid.New()
	}
	if c.SessionTTL <= 0 {
		c.SessionTTL = shard.SessionTTLDefault
	}
	c.SessionTTL = shard.LeaseTTL(c.SessionTTL)
	if c.Units <= 0 {
		c.Units = shard.UnitsDefault
	}
	if c.CatalogInterval <= 0 {
		c.CatalogInterval = CatalogIntervalDefault
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Aggregator campaigns for the aggregator role and, while it holds it, keeps
// the global gauges up to date from etcd watches. It implements
// otel.GlobalSource, and IsLeader serves otel.SelfSource.
type Aggregator struct {
	base    service.Base
	cli     *clientv3.Client
	cfg     Config
	keys    shard.Keys
	catalog func() []queue.Shard
	log     *slog.Logger

	// term is the current leadership, nil when not leader. It is cleared
	// before anything else when leadership ends, so Global and IsLeader
	// stop claiming it at once.
	term atomic.Pointer[term]

	// stopping is closed by Stop: a leader resigns, a candidate gives up.
	stopping chan struct{}
	// done is closed when the campaign loop returned.
	done chan struct{}
}

var _ otel.GlobalSource = (*Aggregator)(nil)

// NewAggregator returns an aggregator; Start makes it campaign. catalog
// returns every shard of every queue; it is called from the leader's
// goroutine, at the start of each leadership and every CatalogInterval, and
// must be safe for that.
func NewAggregator(cli *clientv3.Client, cfg Config, catalog func() []queue.Shard) *Aggregator {
	cfg = cfg.withDefaults()
	if catalog == nil {
		catalog = func() []queue.Shard { return nil }
	}
	return &Aggregator{
		cli:      cli,
		cfg:      cfg,
		keys:     shard.NewKeys(cfg.Prefix),
		catalog:  catalog,
		log:      cfg.Logger.With("component", "election", "member", cfg.MemberID),
		stopping: make(chan struct{}),
		done:     make(chan struct{}),
	}
}

func (a *Aggregator) timeout() time.Duration { return shard.RequestTimeout(a.cfg.SessionTTL) }

// MemberID is the id this aggregator campaigns with.
func (a *Aggregator) MemberID() string { return a.cfg.MemberID }

// Start makes the aggregator campaign until Stop. It returns at once.
func (a *Aggregator) Start(ctx context.Context) error {
	if _, err := a.base.StartInit(ctx); err != nil {
		return fmt.Errorf("aggregator: %w", err)
	}
	a.base.Go(a.run)
	return a.base.StartDone(nil)
}

// Stop ends the candidacy. A leader resigns, so a successor takes over at
// once rather than after the lease TTL. If ctx ends first the lease is
// abandoned and expires on its own.
func (a *Aggregator) Stop(ctx context.Context) error {
	return a.base.Halt(ctx, func(ctx context.Context) error {
		close(a.stopping)
		select {
		case <-a.done:
			return nil
		case <-ctx.Done():
			a.term.Store(nil)
			return fmt.Errorf("resign: %w", ctx.Err())
		}
	})
}

func (a *Aggregator) isStopping() bool {
	select {
	case <-a.stopping:
		return true
	default:
		return false
	}
}

// IsLeader reports whether this keeper is the confirmed aggregator leader
// right now.
func (a *Aggregator) IsLeader() bool {
	t := a.term.Load()
	return t != nil && t.lease.Alive()
}

// Global implements otel.GlobalSource: the last snapshot, kept current by
// watches, while this keeper is the confirmed leader. The snapshot's Queues
// slice is shared and must not be modified.
func (a *Aggregator) Global() (otel.GlobalSnapshot, bool) {
	t := a.term.Load()
	if t == nil || !t.lease.Alive() {
		return otel.GlobalSnapshot{}, false
	}
	s := t.snap.Load()
	if s == nil {
		return otel.GlobalSnapshot{}, false
	}
	return *s, true
}

// Leader returns the member id of the current leader, as etcd has it now. It
// works on an aggregator that was never started.
func (a *Aggregator) Leader(ctx context.Context) (string, error) {
	return Leader(ctx, a.cli, a.keys)
}

// Leader returns the member id of the current aggregator leader of the
// deployment under keys, or ErrNoLeader.
func Leader(ctx context.Context, cli *clientv3.Client, keys shard.Keys) (string, error) {
	resp, err := cli.Get(ctx, keys.Election()+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", fmt.Errorf("read election leader: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return "", ErrNoLeader
	}
	return string(resp.Kvs[0].Value), nil
}

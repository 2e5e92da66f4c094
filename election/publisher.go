package election

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/keeperhq/keeper/internal/service"
	"github.com/keeperhq/keeper/otel"
	"github.com/keeperhq/keeper/shard"
)

// Summary is what one keeper publishes about the shards it owns. The JSON
// field names are one letter and zero counts are left out, so a keeper with
// hundreds of queues still writes a small value (etcd refuses requests over
// 1.5 MiB by default, which bounds a keeper to roughly 20k distinct queues).
type Summary struct {
	Member      string                  `json:"m"`
	OwnedShards int                     `json:"o,omitempty"`
	Queues      map[string]QueueSummary `json:"q,omitempty"`
}

// QueueSummary is one queue over the shards of it that one keeper owns.
type QueueSummary struct {
	Shards   int   `json:"s,omitempty"`
	Ready    int64 `json:"r,omitempty"`
	Inflight int64 `json:"i,omitempty"`
	Locked   int64 `json:"l,omitempty"`
	Dead     int64 `json:"d,omitempty"`
	// Cover is the sum of the shards' fingerprints (shardFingerprint): the
	// aggregator tells from it which shards the summaries count, without
	// their names, and leaves out a total that counts a shard twice or not
	// at all (one in transit between owners). 0 in summaries of keepers
	// from before it existed.
	Cover uint64 `json:"c,omitempty"`
}

// shardFingerprint is a 64-bit hash of a shard's name (FNV-1a, then
// splitmix64's finalizer to spread it). The sum of the fingerprints of a
// set of shards identifies the set: another set with the same count and
// sum is a 2^-64 accident.
func shardFingerprint(name string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(name); i++ {
		h ^= uint64(name[i])
		h *= 1099511628211
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	return h ^ h>>31
}

// Summarize builds a Summary from the shard snapshots a keeper already keeps
// for its per-shard metrics. OwnedShards counts the shards src lists; a
// caller that knows of owned shards not measured yet can overwrite it.
func Summarize(member string, src otel.ShardSource) Summary {
	s := Summary{Member: member, Queues: map[string]QueueSummary{}}
	if src == nil {
		return s
	}
	src.EachShard(func(sh otel.ShardSnapshot) {
		q := s.Queues[sh.Queue]
		q.Shards++
		q.Ready += sh.Ready
		q.Inflight += sh.Inflight
		q.Locked += sh.Locked
		q.Dead += sh.Dead
		q.Cover += shardFingerprint(sh.Shard)
		s.Queues[sh.Queue] = q
		s.OwnedShards++
	})
	return s
}

// IntervalDefault is PublisherConfig.Interval's default.
const IntervalDefault = 10 * time.Second

// PublisherConfig configures a Publisher. Zero values take the defaults
// noted.
type PublisherConfig struct {
	// Prefix is the etcd key prefix; default shard.PrefixDefault. A missing
	// trailing '/' is added.
	Prefix string
	// MemberID is this keeper's shard member id; required, because the
	// leader only counts summaries of live members.
	MemberID string
	// Interval is how often the source is read; default IntervalDefault.
	// The summary is written only when it changed since the last write, so
	// at most once per Interval; only a summary lost with its lease, or a
	// failed write, is written again sooner (with backoff).
	Interval time.Duration
	// SessionTTL is the TTL of the lease the summary is bound to, rounded up
	// to whole seconds, at least 2s; default shard.SessionTTLDefault. A
	// crashed keeper's summary goes away within about this long.
	SessionTTL time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Publisher writes this keeper's Summary to <prefix>summaries/<member>,
// bound to its own lease, so the aggregator leader can sum the fleet without
// reading Redis.
type Publisher struct {
	base   service.Base
	cli    *clientv3.Client
	cfg    PublisherConfig
	source func() Summary
	log    *slog.Logger
	key    string

	endLoop context.CancelFunc
	done    chan struct{}
	// sess is the loop's session when it returned, for Stop to revoke.
	sess *concurrency.Session
}

// NewPublisher returns a publisher of source's summaries; Start runs it.
// source is called once per Interval from the publisher's goroutine and
// should be cheap (e.g. Summarize over the last shard snapshots).
func NewPublisher(cli *clientv3.Client, cfg PublisherConfig, source func() Summary) *Publisher {
	keys := shard.NewKeys(cfg.Prefix)
	cfg.Prefix = keys.Prefix()
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = shard.SessionTTLDefault
	}
	cfg.SessionTTL = shard.LeaseTTL(cfg.SessionTTL)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Interval <= 0 {
		cfg.Interval = IntervalDefault
	}
	return &Publisher{
		cli:    cli,
		cfg:    cfg,
		source: source,
		log:    cfg.Logger.With("component", "summary", "member", cfg.MemberID),
		key:    keys.Summary(cfg.MemberID),
	}
}

// Key is the etcd key the summary is written to.
func (p *Publisher) Key() string { return p.key }

func (p *Publisher) timeout() time.Duration { return shard.RequestTimeout(p.cfg.SessionTTL) }

// Start publishes the first summary as soon as a lease is granted and keeps
// publishing until Stop. It returns at once.
func (p *Publisher) Start(ctx context.Context) error {
	if _, err := p.base.StartInit(ctx); err != nil {
		return fmt.Errorf("summary publisher: %w", err)
	}
	if p.cfg.MemberID == "" || strings.Contains(p.cfg.MemberID, "/") {
		return p.base.StartDone(fmt.Errorf("summary publisher: invalid member id %q", p.cfg.MemberID))
	}
	if p.source == nil {
		return p.base.StartDone(errors.New("summary publisher: no source"))
	}
	loopCtx, endLoop := context.WithCancel(p.base.Life())
	p.endLoop, p.done = endLoop, make(chan struct{})
	p.base.Go(func(sessCtx context.Context) { p.run(sessCtx, loopCtx) })
	return p.base.StartDone(nil)
}

// Stop ends publishing and deletes the summary by revoking its lease, so the
// leader stops counting it at once.
func (p *Publisher) Stop(ctx context.Context) error {
	return p.base.Halt(ctx, func(ctx context.Context) error {
		p.endLoop()
		select {
		case <-p.done:
		case <-ctx.Done():
			return fmt.Errorf("stop summary publisher: %w", ctx.Err())
		}
		if p.sess == nil {
			return nil
		}
		p.sess.Orphan()
		// Bounded like every other etcd call here: with etcd unreachable the
		// lease cannot be revoked, and the summary expires with it anyway.
		rctx, cancel := context.WithTimeout(ctx, p.timeout())
		defer cancel()
		if _, err := p.cli.Revoke(rctx, p.sess.Lease()); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return fmt.Errorf("stop summary publisher: revoke lease: %w", err)
		}
		return nil
	})
}

func (p *Publisher) run(sessCtx, ctx context.Context) {
	defer close(p.done)
	var sess *concurrency.Session
	// last is what is stored under sess's lease; nil when nothing is.
	var last []byte
	tick := time.NewTicker(p.cfg.Interval)
	defer tick.Stop()
	retry := time.NewTimer(0)
	defer retry.Stop()
	backoff := minBackoff
	fail := func(msg string, err error) {
		p.log.Warn(msg, "retry_in", backoff, "err", err)
		retry.Reset(backoff)
		backoff = min(backoff*2, p.cfg.Interval)
	}
	for {
		var sessDone <-chan struct{}
		if sess != nil {
			sessDone = sess.Done()
		}
		select {
		case <-ctx.Done():
			p.sess = sess
			return
		case <-tick.C:
		case <-retry.C:
		case <-sessDone:
			// The key went with the lease: write it again now rather
			// than at the next tick.
			p.log.Info("summary lease ended; publishing under a new one", "lease", fmt.Sprintf("%x", int64(sess.Lease())))
			sess, last = nil, nil
		}
		if sess == nil {
			s, err := concurrency.NewSession(p.cli, concurrency.WithTTL(int(p.cfg.SessionTTL/time.Second)),
				concurrency.WithContext(sessCtx))
			if err != nil {
				fail("cannot open summary session", err)
				continue
			}
			sess = s
		}
		s := p.source()
		s.Member = p.cfg.MemberID
		b, err := json.Marshal(s)
		if err != nil {
			p.log.Error("cannot encode summary", "err", err)
			continue
		}
		if bytes.Equal(b, last) {
			continue
		}
		octx, cancel := context.WithTimeout(ctx, p.timeout())
		_, err = p.cli.Put(octx, p.key, string(b), clientv3.WithLease(sess.Lease()))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				continue
			}
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				sess.Orphan()
				sess = nil
			}
			last = nil
			fail("cannot publish summary", err)
			continue
		}
		last = b
		backoff = minBackoff
	}
}

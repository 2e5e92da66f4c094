// Package election runs keeper's aggregator: one keeper, elected through
// etcd, emits the fleet-wide gauges, and every keeper publishes a compact
// summary of the shards it owns so that the leader never has to read Redis.
//
// Keys, all under the configured prefix (default "/keeper/"):
//
//	election/<lease hex>  concurrency.Election candidates; the oldest is the
//	                      leader, its value is the leader's member id
//	summaries/<member>    one Summary per keeper (Publisher), bound to the
//	                      publisher's lease
//	stats/rebalances      the fleet's cumulative rebalance count (statsValue)
//
// and, read only, members/<id> and owners/<unit> as written by package shard.
//
// Write rates: a Publisher writes its key once when it starts (or its lease is
// renewed by a new session) and then at most once per Interval, only when the
// summary changed, whatever the number of shards. The leader writes
// stats/rebalances once per member-set change it counts. Each keeper renews
// one lease for its candidacy and one for its summary (lease renewals do not
// go through raft); the leader renews its candidacy lease a second way (see
// guard).
package election

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/keeperhq/keeper/otel"
	"github.com/keeperhq/keeper/shard"
)

const (
	defaultPrefix          = "/keeper/"
	defaultSessionTTL      = 3 * time.Second
	defaultCatalogInterval = 10 * time.Second
	minBackoff             = 100 * time.Millisecond
)

// ErrNoLeader is returned by Leader when no keeper is campaigning.
var ErrNoLeader = errors.New("no aggregator leader")

// errNotLeader ends a candidacy whose Campaign returned without the
// candidate actually holding the oldest election key.
var errNotLeader = errors.New("campaign returned but this candidate is not the leader")

// Config configures an Aggregator. Zero values take the defaults noted.
type Config struct {
	// Prefix is the etcd key prefix shared with package shard; default
	// "/keeper/". A missing trailing '/' is added.
	Prefix string
	// MemberID names this keeper in the election (the value of its
	// candidate key, what Leader returns); default a random 16-hex-digit id.
	// Use the shard member id so that `keeper status` names a real member.
	MemberID string
	// SessionTTL is the candidacy lease TTL, rounded up to whole seconds, at
	// least 2s (etcd's minimum); default 3s. A crashed leader is replaced
	// within about this long.
	SessionTTL time.Duration
	// Partitions is the number of ownership units, needed to map shards to
	// units with shard.UnitOf. The ring configuration the coordinators
	// record at <prefix>ring takes precedence (a mismatch is logged), so
	// this only matters before any coordinator ran; default
	// shard.DefaultPartitions.
	Partitions int
	// CatalogInterval is how often the leader calls the catalog again to
	// learn about new or removed shards; default 10s. Ownership and
	// summaries are followed by watches and need no polling.
	CatalogInterval time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	c.Prefix = normPrefix(c.Prefix)
	if c.MemberID == "" {
		c.MemberID = randomID()
	}
	if c.SessionTTL <= 0 {
		c.SessionTTL = defaultSessionTTL
	}
	c.SessionTTL = time.Duration(ttlSeconds(c.SessionTTL)) * time.Second
	if c.Partitions <= 0 {
		c.Partitions = shard.DefaultPartitions
	}
	if c.CatalogInterval <= 0 {
		c.CatalogInterval = defaultCatalogInterval
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// normPrefix applies the default prefix and the trailing '/' that package
// shard adds too, so both name the same keys.
func normPrefix(p string) string {
	if p == "" {
		return defaultPrefix
	}
	if !strings.HasSuffix(p, "/") {
		p += "/"
	}
	return p
}

// ttlSeconds is the lease TTL etcd is asked for: whole seconds, at least 2
// (etcd refuses shorter leases, roughly 1.5 × its election timeout).
func ttlSeconds(d time.Duration) int64 {
	return max(int64((d+time.Second-1)/time.Second), 2)
}

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Aggregator campaigns for the aggregator role and, while it holds it, keeps
// the global gauges up to date from etcd watches. It implements
// otel.GlobalSource, and IsLeader serves otel.SelfSource.
type Aggregator struct {
	cli     *clientv3.Client
	cfg     Config
	catalog func() []string
	log     *slog.Logger
	// base anchors lease deadlines on the monotonic clock.
	base time.Time

	// term is the current leadership, nil when not leader. It is cleared
	// before anything else when leadership ends, so Global and IsLeader
	// stop claiming it at once.
	term atomic.Pointer[term]

	mu       sync.Mutex
	started  bool
	stopped  bool
	cancel   context.CancelFunc
	stopping chan struct{}
	done     chan struct{}
}

// term is one confirmed leadership.
type term struct {
	lease clientv3.LeaseID
	key   string // our election key
	rev   int64  // its CreateRevision
	// from is the revision after the one leadership was confirmed at.
	from int64
	// deadline (nanoseconds since Aggregator.base) is when our lease may
	// have expired in etcd: TTL after the send time of the last renewal
	// etcd acknowledged, less a margin. Past it a successor may already be
	// leader, so we claim nothing even if no one told us yet.
	deadline atomic.Int64
	snap     atomic.Pointer[otel.GlobalSnapshot]
}

var _ otel.GlobalSource = (*Aggregator)(nil)

// NewAggregator returns an aggregator; Start makes it campaign. catalog
// returns every shard name of every queue; it is called from the leader's
// goroutine, at the start of each leadership and every CatalogInterval, and
// must be safe for that.
func NewAggregator(cli *clientv3.Client, cfg Config, catalog func() []string) *Aggregator {
	cfg = cfg.withDefaults()
	if catalog == nil {
		catalog = func() []string { return nil }
	}
	return &Aggregator{
		cli:     cli,
		cfg:     cfg,
		catalog: catalog,
		log:     cfg.Logger.With("component", "election", "member", cfg.MemberID),
		base:    time.Now(),
	}
}

func (a *Aggregator) electionPrefix() string  { return a.cfg.Prefix + "election" }
func (a *Aggregator) membersPrefix() string   { return a.cfg.Prefix + "members/" }
func (a *Aggregator) ownersPrefix() string    { return a.cfg.Prefix + "owners/" }
func (a *Aggregator) statsKey() string        { return a.cfg.Prefix + "stats/rebalances" }
func (a *Aggregator) summariesPrefix() string { return summariesPrefix(a.cfg.Prefix) }
func (a *Aggregator) ringKey() string         { return a.cfg.Prefix + "ring" }
func (a *Aggregator) opTimeout() time.Duration {
	return max(2*time.Second, a.cfg.SessionTTL)
}

// margin is taken off every lease deadline for the difference between our
// clock's rate and etcd's.
func (a *Aggregator) margin() time.Duration { return a.cfg.SessionTTL / 10 }

func (a *Aggregator) now() int64 { return int64(time.Since(a.base)) }

// MemberID is the id this aggregator campaigns with.
func (a *Aggregator) MemberID() string { return a.cfg.MemberID }

// Start makes the aggregator campaign until Stop or until ctx is done. It
// returns at once.
func (a *Aggregator) Start(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.started {
		return errors.New("aggregator already started")
	}
	a.started = true
	runCtx, cancel := context.WithCancel(ctx)
	a.cancel = cancel
	a.stopping = make(chan struct{})
	a.done = make(chan struct{})
	go a.run(runCtx)
	return nil
}

// Stop ends the candidacy. A leader resigns, so a successor takes over at
// once rather than after the lease TTL. If ctx ends first the lease is
// abandoned and expires on its own.
func (a *Aggregator) Stop(ctx context.Context) error {
	a.mu.Lock()
	if !a.started || a.stopped {
		a.mu.Unlock()
		return nil
	}
	a.stopped = true
	close(a.stopping)
	a.mu.Unlock()
	select {
	case <-a.done:
		a.cancel()
		return nil
	case <-ctx.Done():
		a.term.Store(nil)
		a.cancel()
		return fmt.Errorf("stop aggregator: %w", ctx.Err())
	}
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
	return t != nil && a.now() < t.deadline.Load()
}

// Global implements otel.GlobalSource: the last snapshot, kept current by
// watches, while this keeper is the confirmed leader. The snapshot's Queues
// slice is shared and must not be modified.
func (a *Aggregator) Global() (otel.GlobalSnapshot, bool) {
	t := a.term.Load()
	if t == nil || a.now() >= t.deadline.Load() {
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
	return Leader(ctx, a.cli, a.cfg.Prefix)
}

// Leader returns the member id of the current aggregator leader under prefix
// (default "/keeper/"), or ErrNoLeader.
func Leader(ctx context.Context, cli *clientv3.Client, prefix string) (string, error) {
	p := normPrefix(prefix) + "election/"
	resp, err := cli.Get(ctx, p, clientv3.WithFirstCreate()...)
	if err != nil {
		return "", fmt.Errorf("read election leader: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return "", ErrNoLeader
	}
	return string(resp.Kvs[0].Value), nil
}

func (a *Aggregator) run(ctx context.Context) {
	defer close(a.done)
	backoff := minBackoff
	for !a.isStopping() && ctx.Err() == nil {
		if a.cli.Ctx().Err() != nil {
			a.log.Error("etcd client closed; aggregator no longer campaigns")
			return
		}
		err := a.candidacy(ctx)
		if err == nil || a.isStopping() || ctx.Err() != nil {
			backoff = minBackoff
			continue
		}
		a.log.Warn("aggregator candidacy failed, retrying", "in", backoff, "err", err)
		select {
		case <-ctx.Done():
		case <-a.stopping:
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, a.cfg.SessionTTL)
	}
}

// candidacy runs one session: campaign, confirm, lead until leadership is
// lost, then give the lease back. A new session is needed after any loss,
// because our old key, if it still exists, no longer proves anything.
func (a *Aggregator) candidacy(ctx context.Context) error {
	ttl := ttlSeconds(a.cfg.SessionTTL)
	octx, cancel := context.WithTimeout(ctx, a.opTimeout())
	g, err := a.cli.Grant(octx, ttl)
	cancel()
	if err != nil {
		return fmt.Errorf("grant election lease: %w", err)
	}
	sess, err := concurrency.NewSession(a.cli, concurrency.WithLease(g.ID), concurrency.WithTTL(int(ttl)),
		concurrency.WithContext(ctx))
	if err != nil {
		a.revoke(ctx, g.ID)
		return fmt.Errorf("election session: %w", err)
	}
	defer func() {
		sess.Orphan()
		a.revoke(ctx, g.ID)
	}()
	el := concurrency.NewElection(sess, a.electionPrefix())

	// Campaign keeps waiting after the session is gone, and on Stop it must
	// give up; so it runs under a context that ends with either.
	cctx, ccancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-sess.Done():
		case <-a.stopping:
		case <-cctx.Done():
		}
		ccancel()
	}()
	err = el.Campaign(cctx, a.cfg.MemberID)
	ccancel()
	if err != nil {
		select {
		case <-sess.Done():
			a.log.Info("election session ended while campaigning", "lease", leaseHex(g.ID))
			return nil
		default:
		}
		if a.isStopping() || ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("campaign: %w", err)
	}
	t, err := a.confirm(ctx, sess, el)
	if err != nil {
		return err
	}
	a.lead(ctx, sess, el, t)
	return nil
}

// confirm checks that Campaign's return means leadership: our lease is alive
// (renewed now, which also starts the local deadline) and our key is the
// oldest candidate, at its own create revision.
func (a *Aggregator) confirm(ctx context.Context, sess *concurrency.Session, el *concurrency.Election) (*term, error) {
	octx, cancel := context.WithTimeout(ctx, a.opTimeout())
	defer cancel()
	sent := a.now()
	ka, err := a.cli.KeepAliveOnce(octx, sess.Lease())
	if err != nil {
		return nil, fmt.Errorf("confirm leadership: renew lease %s: %w", leaseHex(sess.Lease()), err)
	}
	resp, err := a.cli.Get(octx, a.electionPrefix()+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return nil, fmt.Errorf("confirm leadership: read leader key: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("%w: no candidate key at revision %d", errNotLeader, resp.Header.Revision)
	}
	kv := resp.Kvs[0]
	if string(kv.Key) != el.Key() || kv.CreateRevision != el.Rev() || kv.Lease != int64(sess.Lease()) {
		return nil, fmt.Errorf("%w: leader key %s created at %d, ours %s at %d", errNotLeader,
			kv.Key, kv.CreateRevision, el.Key(), el.Rev())
	}
	select {
	case <-sess.Done():
		return nil, fmt.Errorf("%w: session ended", errNotLeader)
	default:
	}
	t := &term{lease: sess.Lease(), key: el.Key(), rev: el.Rev(), from: resp.Header.Revision + 1}
	t.deadline.Store(sent + int64(time.Duration(ka.TTL)*time.Second-a.margin()))
	return t, nil
}

// lead holds leadership until the session ends, our key goes, the lease
// cannot be shown alive, or Stop; then it clears the term first of all.
func (a *Aggregator) lead(ctx context.Context, sess *concurrency.Session, el *concurrency.Election, t *term) {
	lctx, cancel := context.WithCancel(ctx)
	lost := make(chan string, 2)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		if r := a.guard(lctx, t); r != "" {
			lost <- r
		}
	}()
	go func() {
		defer wg.Done()
		if r := a.watchKey(lctx, t); r != "" {
			lost <- r
		}
	}()
	go func() {
		defer wg.Done()
		a.follow(lctx, t)
	}()
	a.term.Store(t)
	a.log.Info("aggregator leader", "lease", leaseHex(t.lease), "rev", t.rev)

	var reason string
	resign := false
	select {
	case <-sess.Done():
		reason = "session ended"
	case reason = <-lost:
	case <-a.stopping:
		reason, resign = "stopping", true
	case <-ctx.Done():
		reason = "context done"
	}
	a.term.CompareAndSwap(t, nil)
	cancel()
	wg.Wait()
	if resign {
		rctx, rcancel := context.WithTimeout(ctx, a.opTimeout())
		if err := el.Resign(rctx); err != nil {
			a.log.Warn("resign failed; the lease revoke that follows ends the term", "err", err)
		}
		rcancel()
	}
	a.log.Info("aggregator leadership ended", "reason", reason, "lease", leaseHex(t.lease))
}

// guard renews the lease with KeepAliveOnce so that we know when each
// acknowledged renewal was sent, which the session's keepalive stream does
// not tell: etcd expires the lease TTL after it processed the last renewal,
// so TTL after our send time a successor may already lead. It returns why
// leadership is lost, or "" when ctx ends.
func (a *Aggregator) guard(ctx context.Context, t *term) string {
	interval := a.cfg.SessionTTL / 3
	failing := false
	for {
		left := time.Duration(t.deadline.Load() - a.now())
		if left <= 0 {
			return "no lease renewal acknowledged within the session TTL"
		}
		timer := time.NewTimer(min(interval, left))
		select {
		case <-ctx.Done():
			timer.Stop()
			return ""
		case <-timer.C:
		}
		sent := a.now()
		rctx, cancel := context.WithTimeout(ctx, interval)
		resp, err := a.cli.KeepAliveOnce(rctx, t.lease)
		cancel()
		switch {
		case err == nil:
			d := sent + int64(time.Duration(resp.TTL)*time.Second-a.margin())
			if d > t.deadline.Load() {
				t.deadline.Store(d)
			}
			if failing {
				a.log.Info("leader lease renewals acknowledged again")
				failing = false
			}
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			return "etcd no longer knows the lease"
		case ctx.Err() != nil:
			return ""
		case !failing:
			failing = true
			a.log.Warn("leader lease renewal failed; leadership ends at the lease deadline unless one succeeds",
				"left", time.Duration(t.deadline.Load()-a.now()).Round(time.Millisecond), "err", err)
		}
	}
}

// watchKey returns once our election key is deleted (lease revoked or
// expired, or removed by hand), or "" when ctx ends. A watch that ends
// otherwise (etcd lost its leader, a restart) is replaced after checking the
// key directly.
func (a *Aggregator) watchKey(ctx context.Context, t *term) string {
	from := t.from
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range a.cli.Watch(wctx, t.key, clientv3.WithRev(from)) {
			if wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					cancel()
					return "election key deleted"
				}
				from = ev.Kv.ModRevision + 1
			}
		}
		cancel()
		for ctx.Err() == nil {
			gctx, gcancel := context.WithTimeout(ctx, a.opTimeout())
			resp, err := a.cli.Get(gctx, t.key)
			gcancel()
			if err == nil {
				if len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != t.rev {
					return "election key gone"
				}
				from = resp.Header.Revision + 1
				break
			}
			// Meanwhile the guard's deadline bounds how long we still
			// claim leadership.
			select {
			case <-ctx.Done():
			case <-time.After(minBackoff):
			}
		}
	}
	return ""
}

func (a *Aggregator) revoke(ctx context.Context, id clientv3.LeaseID) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.opTimeout())
	defer cancel()
	if _, err := a.cli.Revoke(rctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		a.log.Debug("revoke election lease", "lease", leaseHex(id), "err", err)
	}
}

func leaseHex(id clientv3.LeaseID) string { return fmt.Sprintf("%x", int64(id)) }

// follow keeps t's snapshot current for as long as ctx lasts, listing again
// after any watch failure.
func (a *Aggregator) follow(ctx context.Context, t *term) {
	backoff := minBackoff
	for ctx.Err() == nil {
		err := a.followOnce(ctx, t)
		if ctx.Err() != nil {
			return
		}
		a.log.Warn("global view lost its watches; listing again", "in", backoff, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, a.cfg.SessionTTL)
	}
}

// statsValue is stored at stats/rebalances.
//
// Rebalances counts the etcd revisions at which the member set (the keys
// under members/) changed: a join, a leave, or several of them in one
// transaction count once. Rev is the revision of the last change counted and
// Members the hash of the member set at Rev. A new leader lists members/ at
// Rev and replays the watch history from Rev+1, so changes that happened
// while no one led, or that the old leader saw but had not yet written, are
// counted once. Every write is a transaction that requires the writer's
// election key (so a deposed leader cannot write) and the stats key's
// revision as last read (so no change is counted on top of a count that
// already includes it). If etcd compacted the history past Rev, the new
// leader compares the set hash with the stored one and counts one change if
// they differ: the count may then miss changes (e.g. a leave and a rejoin of
// the same id), but never counts one twice. Global reports only counts that
// are stored, so the counter never goes back across a leader change.
type statsValue struct {
	Count   int64  `json:"count"`
	Rev     int64  `json:"rev"`
	Members string `json:"members"`
}

// view is the leader's copy of what it aggregates, owned by followOnce.
type view struct {
	a *Aggregator
	t *term

	members map[string]struct{}
	owners  map[int]struct{}
	// summaries by the member id in their key.
	summaries map[string]Summary

	partitions  int
	catalog     []string
	unitShards  []int // catalog shards per unit
	queueShards map[string]int
	ownedShards int // catalog shards whose unit has an owner key

	st        statsValue
	statsMod  int64 // ModRevision of stats/rebalances, 0 while absent
	persisted int64 // st.Count as last stored

	queues      []otel.QueueTotals
	queuesDirty bool
}

func (a *Aggregator) followOnce(ctx context.Context, t *term) error {
	partitions, err := a.ringPartitions(ctx)
	if err != nil {
		return err
	}
	v := &view{a: a, t: t, partitions: partitions, owners: map[int]struct{}{}, summaries: map[string]Summary{}}
	v.setCatalog(a.catalog())
	membersFrom, err := v.loadMembers(ctx)
	if err != nil {
		return err
	}
	octx, cancel := context.WithTimeout(ctx, a.opTimeout())
	oresp, err := a.cli.Get(octx, a.ownersPrefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	cancel()
	if err != nil {
		return fmt.Errorf("list owners: %w", err)
	}
	v.applyOwners(putEvents(oresp.Kvs))
	octx, cancel = context.WithTimeout(ctx, a.opTimeout())
	sresp, err := a.cli.Get(octx, a.summariesPrefix(), clientv3.WithPrefix())
	cancel()
	if err != nil {
		return fmt.Errorf("list summaries: %w", err)
	}
	v.applySummaries(putEvents(sresp.Kvs))
	v.publish()

	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer wcancel()
	mw := a.cli.Watch(wctx, a.membersPrefix(), clientv3.WithPrefix(), clientv3.WithRev(membersFrom))
	ow := a.cli.Watch(wctx, a.ownersPrefix(), clientv3.WithPrefix(), clientv3.WithRev(oresp.Header.Revision+1))
	sw := a.cli.Watch(wctx, a.summariesPrefix(), clientv3.WithPrefix(), clientv3.WithRev(sresp.Header.Revision+1))
	tick := time.NewTicker(a.cfg.CatalogInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case wr, ok := <-mw:
			if err := watchErr("members", wr, ok); err != nil {
				return err
			}
			if err := v.applyMembers(ctx, wr.Events); err != nil {
				return err
			}
		case wr, ok := <-ow:
			if err := watchErr("owners", wr, ok); err != nil {
				return err
			}
			v.applyOwners(wr.Events)
		case wr, ok := <-sw:
			if err := watchErr("summaries", wr, ok); err != nil {
				return err
			}
			v.applySummaries(wr.Events)
		case <-tick.C:
			v.setCatalog(a.catalog())
		}
		v.publish()
	}
}

// ringPartitions is the unit count the coordinators use, as they recorded it
// at <prefix>ring: with another count every shard would map to another unit
// and the unowned count would be wrong. Config.Partitions serves until a
// coordinator has recorded one.
func (a *Aggregator) ringPartitions(ctx context.Context) (int, error) {
	octx, cancel := context.WithTimeout(ctx, a.opTimeout())
	defer cancel()
	resp, err := a.cli.Get(octx, a.ringKey())
	if err != nil {
		return 0, fmt.Errorf("read ring config: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return a.cfg.Partitions, nil
	}
	var rc shard.RingConfig
	if err := json.Unmarshal(resp.Kvs[0].Value, &rc); err != nil || rc.Partitions <= 0 {
		a.log.Warn("ring config unreadable; using the configured partition count",
			"key", a.ringKey(), "partitions", a.cfg.Partitions, "err", err)
		return a.cfg.Partitions, nil
	}
	if rc.Partitions != a.cfg.Partitions {
		a.log.Warn("configured partition count differs from the deployment's ring; using the ring's",
			"configured", a.cfg.Partitions, "ring", rc.Partitions)
	}
	return rc.Partitions, nil
}

func watchErr(what string, wr clientv3.WatchResponse, ok bool) error {
	if !ok {
		return fmt.Errorf("%s watch closed", what)
	}
	if err := wr.Err(); err != nil {
		return fmt.Errorf("%s watch: %w", what, err)
	}
	return nil
}

// putEvents presents a listing as events, so that listing and watching go
// through one path.
func putEvents(kvs []*mvccpb.KeyValue) []*clientv3.Event {
	evs := make([]*clientv3.Event, len(kvs))
	for i, kv := range kvs {
		evs[i] = &clientv3.Event{Type: mvccpb.PUT, Kv: kv}
	}
	return evs
}

// loadMembers reads the stored rebalance count and the member set it was
// counted against, and returns the revision to watch members/ from.
func (v *view) loadMembers(ctx context.Context) (int64, error) {
	a := v.a
	octx, cancel := context.WithTimeout(ctx, a.opTimeout())
	defer cancel()
	sresp, err := a.cli.Get(octx, a.statsKey())
	if err != nil {
		return 0, fmt.Errorf("read rebalance count: %w", err)
	}
	exists := len(sresp.Kvs) > 0
	if exists {
		kv := sresp.Kvs[0]
		v.statsMod = kv.ModRevision
		if err := json.Unmarshal(kv.Value, &v.st); err != nil {
			// Nothing to continue from: start over rather than stop
			// reporting; the counter resets, which the log explains.
			a.log.Error("rebalance count unreadable; counting again from 0", "key", a.statsKey(), "err", err)
			v.st = statsValue{}
		}
		v.persisted = v.st.Count
	}
	if v.st.Rev > 0 {
		mresp, err := a.cli.Get(octx, a.membersPrefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
			clientv3.WithRev(v.st.Rev))
		if err == nil {
			v.resetMembers(mresp.Kvs)
			if h := v.membersHash(); h != v.st.Members {
				a.log.Warn("stored member-set hash differs from the member set at its revision",
					"rev", v.st.Rev, "stored", v.st.Members, "listed", h)
			}
			return v.st.Rev + 1, nil
		}
		// A future revision means etcd was restored from an older
		// backup: the history is gone just as after a compaction.
		if !errors.Is(err, rpctypes.ErrCompacted) && !errors.Is(err, rpctypes.ErrFutureRev) {
			return 0, fmt.Errorf("list members at revision %d: %w", v.st.Rev, err)
		}
	}
	mresp, err := a.cli.Get(octx, a.membersPrefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return 0, fmt.Errorf("list members: %w", err)
	}
	v.resetMembers(mresp.Kvs)
	h := v.membersHash()
	if exists && v.st.Rev > 0 {
		a.log.Info("membership history since the last counted rebalance is gone (compacted, or etcd restored from a backup); comparing member sets",
			"rev", v.st.Rev, "changed", h != v.st.Members)
		if h != v.st.Members {
			v.st.Count++
		}
	}
	// Store the new baseline, so the next leader replays from here rather
	// than meet the same gap.
	v.st.Rev, v.st.Members = mresp.Header.Revision, h
	if err := v.storeStats(ctx); err != nil {
		return 0, err
	}
	return mresp.Header.Revision + 1, nil
}

func (v *view) resetMembers(kvs []*mvccpb.KeyValue) {
	v.members = make(map[string]struct{}, len(kvs))
	for _, kv := range kvs {
		v.members[strings.TrimPrefix(string(kv.Key), v.a.membersPrefix())] = struct{}{}
	}
	v.queuesDirty = true
}

// membersHash is FNV-1a over the sorted member ids.
func (v *view) membersHash() string {
	ids := make([]string, 0, len(v.members))
	for id := range v.members {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	h := fnv.New64a()
	for _, id := range ids {
		h.Write([]byte(id))
		h.Write([]byte{0})
	}
	return strconv.FormatUint(h.Sum64(), 16)
}

// applyMembers follows the member set and counts and stores its changes.
func (v *view) applyMembers(ctx context.Context, evs []*clientv3.Event) error {
	counted := false
	for _, ev := range evs {
		id := strings.TrimPrefix(string(ev.Kv.Key), v.a.membersPrefix())
		_, had := v.members[id]
		switch {
		case ev.Type == mvccpb.PUT && !had:
			v.members[id] = struct{}{}
		case ev.Type == mvccpb.DELETE && had:
			delete(v.members, id)
		default:
			continue
		}
		v.queuesDirty = true
		// One count per revision: a transaction that changes several
		// members is one rebalance.
		if rev := ev.Kv.ModRevision; rev > v.st.Rev {
			v.st.Count++
			v.st.Rev = rev
			counted = true
		}
	}
	if !counted {
		return nil
	}
	v.st.Members = v.membersHash()
	return v.storeStats(ctx)
}

// storeStats writes v.st, only while we hold our election key and nobody
// wrote the count since we read it.
func (v *view) storeStats(ctx context.Context) error {
	a := v.a
	b, err := json.Marshal(v.st)
	if err != nil {
		return fmt.Errorf("encode rebalance count: %w", err)
	}
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(v.t.key), "=", v.t.rev)}
	if v.statsMod == 0 {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(a.statsKey()), "=", 0))
	} else {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(a.statsKey()), "=", v.statsMod))
	}
	octx, cancel := context.WithTimeout(ctx, a.opTimeout())
	defer cancel()
	resp, err := a.cli.Txn(octx).If(cmps...).Then(clientv3.OpPut(a.statsKey(), string(b))).Commit()
	if err != nil {
		return fmt.Errorf("store rebalance count: %w", err)
	}
	if !resp.Succeeded {
		return errors.New("store rebalance count: not leader any more, or the count changed since it was read")
	}
	v.statsMod = resp.Header.Revision
	v.persisted = v.st.Count
	return nil
}

func (v *view) applyOwners(evs []*clientv3.Event) {
	for _, ev := range evs {
		u, err := strconv.Atoi(strings.TrimPrefix(string(ev.Kv.Key), v.a.ownersPrefix()))
		if err != nil {
			continue
		}
		_, had := v.owners[u]
		switch {
		case ev.Type == mvccpb.PUT && !had:
			v.owners[u] = struct{}{}
			v.ownedShards += v.shardsOf(u)
		case ev.Type == mvccpb.DELETE && had:
			delete(v.owners, u)
			v.ownedShards -= v.shardsOf(u)
		}
	}
}

func (v *view) shardsOf(unit int) int {
	if unit < 0 || unit >= len(v.unitShards) {
		return 0
	}
	return v.unitShards[unit]
}

func (v *view) applySummaries(evs []*clientv3.Event) {
	for _, ev := range evs {
		member := strings.TrimPrefix(string(ev.Kv.Key), v.a.summariesPrefix())
		v.queuesDirty = true
		if ev.Type == mvccpb.DELETE {
			delete(v.summaries, member)
			continue
		}
		var s Summary
		if err := json.Unmarshal(ev.Kv.Value, &s); err != nil {
			v.a.log.Warn("ignoring unreadable summary", "key", string(ev.Kv.Key), "err", err)
			delete(v.summaries, member)
			continue
		}
		v.summaries[member] = s
	}
}

// setCatalog maps the catalog's shards to units and queues; it is skipped
// when the catalog did not change, since it hashes every shard name.
func (v *view) setCatalog(names []string) {
	if v.unitShards != nil && slices.Equal(names, v.catalog) {
		return
	}
	v.catalog = slices.Clone(names)
	v.unitShards = make([]int, v.partitions)
	v.queueShards = map[string]int{}
	for _, sh := range names {
		v.unitShards[shard.UnitOf(sh, v.partitions)]++
		v.queueShards[queueOf(sh)]++
	}
	v.ownedShards = 0
	for u := range v.owners {
		v.ownedShards += v.shardsOf(u)
	}
	v.queuesDirty = true
}

// queueOf is the queue of shard "<queue>#<p>"; queue names cannot contain
// '#'.
func queueOf(sh string) string {
	if i := strings.LastIndexByte(sh, '#'); i >= 0 {
		return sh[:i]
	}
	return sh
}

// publish stores a new snapshot in the term. Per-queue totals are rebuilt
// only when summaries, members or the catalog changed, so ownership churn
// during a rebalance costs a few integer updates per event.
func (v *view) publish() {
	if v.queuesDirty {
		v.queues = v.buildQueues()
		v.queuesDirty = false
	}
	v.t.snap.Store(&otel.GlobalSnapshot{
		Members:       len(v.members),
		Shards:        len(v.catalog),
		UnownedShards: len(v.catalog) - v.ownedShards,
		Rebalances:    v.persisted,
		Queues:        v.queues,
	})
}

// buildQueues sums the summaries of live members only: a keeper whose member
// key is gone owns nothing any more (it stops housekeeping first), and its
// successors' summaries already count those shards.
func (v *view) buildQueues() []otel.QueueTotals {
	totals := make(map[string]*otel.QueueTotals, len(v.queueShards))
	get := func(q string) *otel.QueueTotals {
		qt := totals[q]
		if qt == nil {
			qt = &otel.QueueTotals{Queue: q}
			totals[q] = qt
		}
		return qt
	}
	for q, n := range v.queueShards {
		get(q).Shards = n
	}
	for member, s := range v.summaries {
		if _, live := v.members[member]; !live {
			continue
		}
		for q, qs := range s.Queues {
			qt := get(q)
			qt.Ready += qs.Ready
			qt.Inflight += qs.Inflight
			qt.Locked += qs.Locked
			qt.Dead += qs.Dead
		}
	}
	out := make([]otel.QueueTotals, 0, len(totals))
	for _, qt := range totals {
		out = append(out, *qt)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Queue < out[j].Queue })
	return out
}

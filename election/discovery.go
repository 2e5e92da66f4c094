package election

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keeperhq/keeper/internal/service"
	"github.com/keeperhq/keeper/queue"
	"github.com/keeperhq/keeper/shard"
)

// Discovery gives a layout without a queue registry (Deckard's) its list of
// queues, at the cost of one scan of Redis per interval for the whole fleet
// rather than per keeper: the aggregator leader scans, and publishes the set
// in etcd (shard.Keys.Discovered) when it changed; every keeper watches that
// key and hands the set to its tasks and coordinator.
//
// A queue the scan no longer finds (all its keys gone: Redis deletes an
// empty sorted set) leaves the set only after ForgetAfter, so a queue that
// drains and fills again keeps its owner and the set is not rewritten at
// every scan. A new leader scans at once, then once per Interval.
//
// The set is stored as gzip'd JSON in one key, written in a transaction that
// requires the leader's election key: a leader that lost its term cannot
// overwrite its successor's set. etcd refuses a request over 1.5 MiB by
// default; MaxDiscoveredBytes keeps the key under it (queue names compress
// about tenfold: a few hundred thousand queues).
type Discovery struct {
	base service.Base
	cli  *clientv3.Client
	cfg  DiscoveryConfig
	keys shard.Keys
	log  *slog.Logger

	mu      sync.Mutex
	current []string // the published set, sorted
	rec     DiscoveredSet

	scans atomic.Int64 // scans this keeper started
}

// Discovery defaults.
const (
	DiscoveryIntervalDefault = 5 * time.Second
	// MaxDiscoveredBytes bounds the published set, compressed.
	MaxDiscoveredBytes = 1 << 20
	// leadershipCheck is how often a keeper looks whether it became the
	// leader (an atomic load), so that a new leader scans at once.
	leadershipCheck = 250 * time.Millisecond
)

// DiscoveryConfig configures a Discovery. Zero values take the defaults
// noted.
type DiscoveryConfig struct {
	// Prefix is the etcd key prefix (shard.Keys); default
	// shard.PrefixDefault.
	Prefix string
	// Interval between two scans of the fleet; default
	// DiscoveryIntervalDefault.
	Interval time.Duration
	// ForgetAfter is how long a queue stays in the set after the scans
	// stopped finding it; default 10 Intervals.
	ForgetAfter time.Duration
	// Scan lists the queues in Redis (queue.Deckard.Discover); it runs on
	// the leader only.
	Scan func(context.Context) ([]string, queue.DiscoverStats, error)
	// Leader is the aggregator whose leadership decides who scans.
	Leader *Aggregator
	// OnChange gets every new set (sorted), on Discovery's goroutine; the
	// first call comes during Start when a set is published already.
	OnChange func(queues []string)
	// MemberID is recorded with each set the keeper publishes.
	MemberID string
	Logger   *slog.Logger
}

// DiscoveredSet is the value of shard.Keys.Discovered, gzip'd JSON.
type DiscoveredSet struct {
	// Seq numbers the published sets: each leader continues from the
	// published one's.
	Seq int64 `json:"seq"`
	// AtMs is when that scan started (unix ms, the leader's clock).
	AtMs int64 `json:"at_ms"`
	// By is the member that scanned.
	By     string   `json:"by"`
	Queues []string `json:"queues"`
}

// EncodeDiscovered is the stored form of a set.
func EncodeDiscovered(s DiscoveredSet) ([]byte, error) {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if err := json.NewEncoder(zw).Encode(s); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	if b.Len() > MaxDiscoveredBytes {
		return nil, fmt.Errorf("discovered set of %d queues is %d bytes compressed, over the %d that fit an etcd request",
			len(s.Queues), b.Len(), MaxDiscoveredBytes)
	}
	return b.Bytes(), nil
}

// DecodeDiscovered reads a stored set.
func DecodeDiscovered(v []byte) (DiscoveredSet, error) {
	zr, err := gzip.NewReader(bytes.NewReader(v))
	if err != nil {
		return DiscoveredSet{}, fmt.Errorf("discovered set: %w", err)
	}
	var s DiscoveredSet
	if err := json.NewDecoder(io.LimitReader(zr, 64*MaxDiscoveredBytes)).Decode(&s); err != nil {
		return DiscoveredSet{}, fmt.Errorf("discovered set: %w", err)
	}
	slices.Sort(s.Queues)
	s.Queues = slices.Compact(s.Queues)
	return s, nil
}

// ReadDiscovered reads the published set; ok is false when none is.
func ReadDiscovered(ctx context.Context, cli *clientv3.Client, keys shard.Keys) (DiscoveredSet, bool, error) {
	resp, err := cli.Get(ctx, keys.Discovered())
	if err != nil {
		return DiscoveredSet{}, false, fmt.Errorf("read discovered queues: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return DiscoveredSet{}, false, nil
	}
	s, err := DecodeDiscovered(resp.Kvs[0].Value)
	return s, err == nil, err
}

// NewDiscovery returns a Discovery; Start runs it.
func NewDiscovery(cli *clientv3.Client, cfg DiscoveryConfig) *Discovery {
	if cfg.Interval <= 0 {
		cfg.Interval = DiscoveryIntervalDefault
	}
	if cfg.ForgetAfter <= 0 {
		cfg.ForgetAfter = 10 * cfg.Interval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Discovery{cli: cli, cfg: cfg, keys: shard.NewKeys(cfg.Prefix),
		log: cfg.Logger.With("component", "discovery")}
}

// Start reads the published set (so the keeper starts with it; an etcd
// that cannot be read within ctx is read again later), then follows it and
// scans while this keeper leads, until Stop.
func (d *Discovery) Start(ctx context.Context) error {
	startCtx, err := d.base.StartInit(ctx)
	if err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	rev, err := d.list(startCtx)
	if err != nil {
		d.log.Warn("discovered queues unreadable at start; retrying", "err", err)
	}
	d.base.Go(func(ctx context.Context) { d.follow(ctx, rev) })
	d.base.Go(d.scanLoop)
	return d.base.StartDone(nil)
}

// Stop ends following and scanning, within ctx.
func (d *Discovery) Stop(ctx context.Context) error { return d.base.Halt(ctx, nil) }

// Queues is the current set, sorted.
func (d *Discovery) Queues() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.current)
}

// Shards is every shard of the current set: one per queue.
func (d *Discovery) Shards() []queue.Shard {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]queue.Shard, len(d.current))
	for i, q := range d.current {
		out[i] = queue.Shard{Queue: q}
	}
	return out
}

// Record is the published set as last read.
func (d *Discovery) Record() DiscoveredSet {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.rec
	r.Queues = slices.Clone(r.Queues)
	return r
}

// Scans is how many scans this keeper started.
func (d *Discovery) Scans() int64 { return d.scans.Load() }

// list reads the set and applies it; it returns the revision to watch from.
func (d *Discovery) list(ctx context.Context) (int64, error) {
	resp, err := d.cli.Get(ctx, d.keys.Discovered())
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", d.keys.Discovered(), err)
	}
	if len(resp.Kvs) > 0 {
		d.apply(resp.Kvs[0].Value)
	}
	return resp.Header.Revision + 1, nil
}

// apply takes a stored set: OnChange when its queues differ from the last.
func (d *Discovery) apply(v []byte) {
	s, err := DecodeDiscovered(v)
	if err != nil {
		d.log.Error("discovered queues unreadable; keeping the last set", "err", err)
		return
	}
	d.mu.Lock()
	changed := !slices.Equal(s.Queues, d.current)
	added, removed := diffCount(d.current, s.Queues)
	d.current, d.rec = s.Queues, s
	d.mu.Unlock()
	if !changed {
		return
	}
	d.log.Info("discovered queues", "queues", len(s.Queues), "added", added, "removed", removed, "seq", s.Seq, "by", s.By)
	if d.cfg.OnChange != nil {
		d.cfg.OnChange(slices.Clone(s.Queues))
	}
}

// diffCount counts the names of b not in a, and of a not in b (both sorted).
func diffCount(a, b []string) (added, removed int) {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i] < b[j]):
			removed++
			i++
		case i == len(a) || b[j] < a[i]:
			added++
			j++
		default:
			i++
			j++
		}
	}
	return added, removed
}

// follow watches the set from rev, listing again after any failure.
func (d *Discovery) follow(ctx context.Context, rev int64) {
	backoff := minBackoff
	for ctx.Err() == nil {
		var err error
		if rev == 0 {
			octx, cancel := context.WithTimeout(ctx, shard.RequestTimeout(shard.SessionTTLDefault))
			rev, err = d.list(octx)
			cancel()
		}
		if err == nil {
			err = d.watch(ctx, rev)
		}
		rev = 0
		if ctx.Err() != nil {
			return
		}
		d.log.Warn("discovered queues: watch lost; reading again", "in", backoff, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (d *Discovery) watch(ctx context.Context, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range d.cli.Watch(wctx, d.keys.Discovered(), clientv3.WithRev(rev)) {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch %s: %w", d.keys.Discovered(), err)
		}
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.PUT {
				d.apply(ev.Kv.Value)
			}
		}
	}
	return fmt.Errorf("watch %s closed", d.keys.Discovered())
}

// scanLoop scans while this keeper leads: at once when it becomes the
// leader, then every Interval.
func (d *Discovery) scanLoop(ctx context.Context) {
	tick := time.NewTicker(min(leadershipCheck, d.cfg.Interval))
	defer tick.Stop()
	var (
		leading  bool
		next     time.Time
		lastSeen map[string]time.Time
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Now()
		if d.cfg.Leader == nil || !d.cfg.Leader.IsLeader() {
			leading = false
			continue
		}
		if !leading {
			// A new term: what the previous leader published counts as
			// seen now, so that nothing is forgotten before this leader
			// had ForgetAfter to find it.
			leading, next = true, now
			lastSeen = map[string]time.Time{}
			for _, q := range d.Queues() {
				lastSeen[q] = now
			}
		}
		if now.Before(next) {
			continue
		}
		next = now.Add(d.cfg.Interval)
		if err := d.scanOnce(ctx, now, lastSeen); err != nil && ctx.Err() == nil {
			d.log.Warn("discovery scan failed; next one in an interval", "interval", d.cfg.Interval, "err", err)
		}
	}
}

// scanOnce scans Redis and publishes the set if it changed.
func (d *Discovery) scanOnce(ctx context.Context, start time.Time, lastSeen map[string]time.Time) error {
	d.scans.Add(1)
	found, st, err := d.cfg.Scan(ctx)
	if err != nil {
		return err
	}
	took := time.Since(start)
	if st.RefusedCount > 0 {
		d.log.Warn("deckard queues with names keeper cannot housekeep are left out", "count", st.RefusedCount,
			"examples", st.Refused)
	}
	for _, q := range found {
		lastSeen[q] = start
	}
	next := slices.Clone(found)
	for q, seen := range lastSeen {
		if start.Sub(seen) >= d.cfg.ForgetAfter {
			delete(lastSeen, q)
		} else if !slices.Contains(found, q) {
			next = append(next, q)
		}
	}
	slices.Sort(next)
	d.log.Debug("discovery scan", "queues", len(next), "keys", st.Keys, "calls", st.Calls,
		"took", took.Round(time.Millisecond))
	cur := d.Record()
	if slices.Equal(next, cur.Queues) {
		return nil
	}
	rec := DiscoveredSet{Seq: cur.Seq + 1, AtMs: start.UnixMilli(), By: d.cfg.MemberID, Queues: next}
	v, err := EncodeDiscovered(rec)
	if err != nil {
		return err
	}
	guard, ok := d.cfg.Leader.leading()
	if !ok {
		return nil
	}
	octx, cancel := context.WithTimeout(ctx, shard.RequestTimeout(d.cfg.Leader.cfg.SessionTTL))
	defer cancel()
	resp, err := d.cli.Txn(octx).If(guard).Then(clientv3.OpPut(d.keys.Discovered(), string(v))).Commit()
	if err != nil {
		return fmt.Errorf("publish discovered queues: %w", err)
	}
	if !resp.Succeeded {
		d.log.Info("discovery: leadership ended before the set was published; not written")
	}
	return nil
}

// leading is the etcd comparison that holds while this aggregator's term
// lasts (its election key, at its create revision), and whether it leads.
func (a *Aggregator) leading() (clientv3.Cmp, bool) {
	t := a.term.Load()
	if t == nil || !t.lease.Alive() {
		return clientv3.Cmp{}, false
	}
	return clientv3.Compare(clientv3.CreateRevision(t.key), "=", t.rev), true
}

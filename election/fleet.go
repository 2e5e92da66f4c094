package election

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keeperhq/keeper/otel"
	"github.com/keeperhq/keeper/queue"
	"github.com/keeperhq/keeper/shard"
)

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

// view is the leader's copy of what it aggregates, owned by followOnce.
type view struct {
	a *Aggregator
	t *term

	members map[string]struct{}
	owners  map[int]struct{}
	// summaries by the member id in their key.
	summaries map[string]Summary

	units       int
	catalog     []queue.Shard
	unitShards  []int // catalog shards per unit
	queueShards map[string]int
	queueCover  map[string]uint64 // sum of each queue's shard fingerprints
	ownedShards int               // catalog shards whose unit has an owner key

	st        statsValue
	statsMod  int64 // ModRevision of stats/rebalances, 0 while absent
	persisted int64 // st.Count as last stored

	queues      []otel.QueueTotals
	queuesDirty bool
}

func (a *Aggregator) followOnce(ctx context.Context, t *term) error {
	units, err := a.ringUnits(ctx)
	if err != nil {
		return err
	}
	v := &view{a: a, t: t, units: units, owners: map[int]struct{}{}, summaries: map[string]Summary{}}
	v.setCatalog(a.catalog())
	membersFrom, err := v.loadMembers(ctx)
	if err != nil {
		return err
	}
	octx, cancel := context.WithTimeout(ctx, a.timeout())
	oresp, err := a.cli.Get(octx, a.keys.Owners(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	cancel()
	if err != nil {
		return fmt.Errorf("list owners: %w", err)
	}
	v.applyOwners(putEvents(oresp.Kvs))
	octx, cancel = context.WithTimeout(ctx, a.timeout())
	sresp, err := a.cli.Get(octx, a.keys.Summaries(), clientv3.WithPrefix())
	cancel()
	if err != nil {
		return fmt.Errorf("list summaries: %w", err)
	}
	v.applySummaries(putEvents(sresp.Kvs))
	v.publish()

	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer wcancel()
	mw := a.cli.Watch(wctx, a.keys.Members(), clientv3.WithPrefix(), clientv3.WithRev(membersFrom))
	ow := a.cli.Watch(wctx, a.keys.Owners(), clientv3.WithPrefix(), clientv3.WithRev(oresp.Header.Revision+1))
	sw := a.cli.Watch(wctx, a.keys.Summaries(), clientv3.WithPrefix(), clientv3.WithRev(sresp.Header.Revision+1))
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

// ringUnits is the unit count the coordinators use, as they recorded it at
// <prefix>ring: with another count every shard would map to another unit
// and the unowned count would be wrong. Config.Units serves until a
// coordinator has recorded one.
func (a *Aggregator) ringUnits(ctx context.Context) (int, error) {
	octx, cancel := context.WithTimeout(ctx, a.timeout())
	defer cancel()
	resp, err := a.cli.Get(octx, a.keys.Ring())
	if err != nil {
		return 0, fmt.Errorf("read ring config: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return a.cfg.Units, nil
	}
	var rc shard.RingConfig
	if err := json.Unmarshal(resp.Kvs[0].Value, &rc); err != nil || rc.Units <= 0 {
		a.log.Warn("ring config unreadable; using the configured unit count",
			"key", a.keys.Ring(), "units", a.cfg.Units, "err", err)
		return a.cfg.Units, nil
	}
	if rc.Units != a.cfg.Units {
		a.log.Warn("configured unit count differs from the deployment's ring; using the ring's",
			"configured", a.cfg.Units, "ring", rc.Units)
	}
	return rc.Units, nil
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

func (v *view) applyOwners(evs []*clientv3.Event) {
	for _, ev := range evs {
		u, ok := v.a.keys.OwnerUnit(string(ev.Kv.Key))
		if !ok {
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
		member := v.a.keys.SummaryMember(string(ev.Kv.Key))
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
func (v *view) setCatalog(shards []queue.Shard) {
	if v.unitShards != nil && slices.Equal(shards, v.catalog) {
		return
	}
	v.catalog = slices.Clone(shards)
	v.unitShards = make([]int, v.units)
	v.queueShards = map[string]int{}
	v.queueCover = map[string]uint64{}
	for _, sh := range shards {
		v.unitShards[shard.UnitOf(sh, v.units)]++
		v.queueShards[sh.Queue]++
		v.queueCover[sh.Queue] += shardFingerprint(sh.String())
	}
	v.ownedShards = 0
	for u := range v.owners {
		v.ownedShards += v.shardsOf(u)
	}
	v.queuesDirty = true
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

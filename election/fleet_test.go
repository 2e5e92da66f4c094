package election

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/otel"
	"github.com/keeperhq/keeper/queue"
	"github.com/keeperhq/keeper/shard"
)

// fleet writes member and ownership keys by hand, as package shard would.
type fleet struct {
	t     *testing.T
	cli   *clientv3.Client
	lease clientv3.LeaseID
}

func newFleet(t *testing.T, cli *clientv3.Client) *fleet {
	g, err := cli.Grant(context.Background(), 600)
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	return &fleet{t: t, cli: cli, lease: g.ID}
}

func (f *fleet) join(ids ...string) {
	f.t.Helper()
	for _, id := range ids {
		if _, err := f.cli.Put(context.Background(), "/keeper/members/"+id, id, clientv3.WithLease(f.lease)); err != nil {
			f.t.Fatalf("join %s: %v", id, err)
		}
	}
}

func (f *fleet) leave(id string) {
	f.t.Helper()
	if _, err := f.cli.Delete(context.Background(), "/keeper/members/"+id); err != nil {
		f.t.Fatalf("leave %s: %v", id, err)
	}
}

func (f *fleet) own(unit int, member string) {
	f.t.Helper()
	if _, err := f.cli.Put(context.Background(), "/keeper/owners/"+strconv.Itoa(unit), member, clientv3.WithLease(f.lease)); err != nil {
		f.t.Fatalf("own %d: %v", unit, err)
	}
}

func (f *fleet) disown(unit int) {
	f.t.Helper()
	if _, err := f.cli.Delete(context.Background(), "/keeper/owners/"+strconv.Itoa(unit)); err != nil {
		f.t.Fatalf("disown %d: %v", unit, err)
	}
}

// summaries is what each test keeper's publisher publishes.
type summaries struct {
	mu sync.Mutex
	by map[string]Summary
}

func (s *summaries) set(member string, sum Summary) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.by[member] = sum
}

func (s *summaries) source(member string) func() Summary {
	return func() Summary {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.by[member]
	}
}

func qs(shards int, ready, inflight, locked, dead int64) QueueSummary {
	return QueueSummary{Shards: shards, Ready: ready, Inflight: inflight, Locked: locked, Dead: dead}
}

// waitGlobal waits until some aggregator of as is leader and its snapshot
// satisfies check, and returns the leader.
func waitGlobal(t *testing.T, as []*Aggregator, what string, check func(otel.GlobalSnapshot) string) *Aggregator {
	t.Helper()
	var leader *Aggregator
	poll.For(t, 20*time.Second, what, func() (bool, string) {
		var why []string
		for _, a := range as {
			g, ok := a.Global()
			if !ok {
				continue
			}
			if w := check(g); w != "" {
				why = append(why, fmt.Sprintf("%s: %s (%+v)", a.MemberID(), w, g))
				continue
			}
			leader = a
			return true, ""
		}
		if len(why) == 0 {
			return false, "no leader reports global gauges"
		}
		return false, strings.Join(why, "; ")
	})
	return leader
}

func TestGlobalGauges(t *testing.T) {
	c := newCluster(t)
	const partitions = 8 // ring units
	var catalog []queue.Shard
	for p := 0; p < 4; p++ {
		catalog = append(catalog, queue.Shard{Queue: "alpha", Partition: p})
	}
	for p := 0; p < 3; p++ {
		catalog = append(catalog, queue.Shard{Queue: "beta", Partition: p})
	}
	var catMu sync.Mutex
	catalogFn := func() []queue.Shard {
		catMu.Lock()
		defer catMu.Unlock()
		return slices.Clone(catalog)
	}
	units := map[int][]queue.Shard{}
	for _, sh := range catalog {
		u := shard.UnitOf(sh, partitions)
		units[u] = append(units[u], sh)
	}
	if len(units) < 2 {
		t.Fatalf("test catalog falls into %d unit(s); pick other names", len(units))
	}
	var ownedUnits []int
	for u := range units {
		ownedUnits = append(ownedUnits, u)
	}
	slices.Sort(ownedUnits)
	// Leave the last unit with shards without an owner.
	freeUnit := ownedUnits[len(ownedUnits)-1]
	ownedUnits = ownedUnits[:len(ownedUnits)-1]

	f := newFleet(t, c.admin)
	f.join("m1", "m2", "m3")
	for i, u := range ownedUnits {
		f.own(u, fmt.Sprintf("m%d", i%3+1))
	}

	sums := &summaries{by: map[string]Summary{}}
	sums.set("m1", Summary{OwnedShards: 3, Queues: map[string]QueueSummary{"alpha": qs(2, 10, 1, 2, 0), "beta": qs(1, 5, 0, 0, 1)}})
	sums.set("m2", Summary{OwnedShards: 2, Queues: map[string]QueueSummary{"alpha": qs(2, 7, 3, 0, 4)}})
	sums.set("m3", Summary{OwnedShards: 1, Queues: map[string]QueueSummary{"beta": qs(1, 100, 0, 9, 0)}})
	// A keeper that is not a member (left, or not registered yet) owns
	// nothing; its summary must not count.
	sums.set("ghost", Summary{OwnedShards: 1, Queues: map[string]QueueSummary{"alpha": qs(1, 1000, 0, 0, 0)}})
	for _, m := range []string{"m1", "m2", "m3", "ghost"} {
		p := NewPublisher(c.clientTo(c.srv.Endpoints()), PublisherConfig{MemberID: m, Interval: 50 * time.Millisecond,
			SessionTTL: testTTL, Logger: c.log}, sums.source(m))
		if err := p.Start(context.Background()); err != nil {
			t.Fatalf("start publisher %s: %v", m, err)
		}
		t.Cleanup(func() { _ = p.Stop(context.Background()) })
	}

	cfg := Config{Units: partitions, CatalogInterval: 100 * time.Millisecond}
	as := []*Aggregator{c.aggregator("a1", cfg, catalogFn), c.aggregator("a2", cfg, catalogFn)}

	want := func(members, unowned int, rebalances int64, queues ...otel.QueueTotals) func(otel.GlobalSnapshot) string {
		return func(g otel.GlobalSnapshot) string {
			catMu.Lock()
			shards := len(catalog)
			catMu.Unlock()
			w := otel.GlobalSnapshot{Members: members, Shards: shards, UnownedShards: unowned, Rebalances: rebalances, Queues: queues}
			gj, _ := json.Marshal(g)
			wj, _ := json.Marshal(w)
			if string(gj) != string(wj) {
				return "want " + string(wj)
			}
			return ""
		}
	}
	// alpha's 4 shards are counted by the summaries (2 + 2); beta's 3 are
	// not (1 + 1), nor gamma's, so their totals are not Complete.
	alpha := func(ready, inflight, locked, dead int64) otel.QueueTotals {
		return otel.QueueTotals{Queue: "alpha", Shards: 4, Ready: ready, Inflight: inflight, Locked: locked, Dead: dead, Complete: true}
	}
	beta := func(ready, inflight, locked, dead int64) otel.QueueTotals {
		return otel.QueueTotals{Queue: "beta", Shards: 3, Ready: ready, Inflight: inflight, Locked: locked, Dead: dead}
	}
	// With the ghost a member, its summary counts a fifth alpha shard.
	overcounted := func(q otel.QueueTotals) otel.QueueTotals { q.Complete = false; return q }
	unowned := len(units[freeUnit])

	// The member set the first leader finds is the baseline: 0 rebalances.
	waitGlobal(t, as, "initial totals", want(3, unowned, 0, alpha(17, 4, 2, 4), beta(105, 0, 9, 1)))

	sums.set("m2", Summary{OwnedShards: 2, Queues: map[string]QueueSummary{"alpha": qs(2, 8, 3, 0, 4)}})
	waitGlobal(t, as, "a summary changes", want(3, unowned, 0, alpha(18, 4, 2, 4), beta(105, 0, 9, 1)))

	f.disown(ownedUnits[0])
	unowned += len(units[ownedUnits[0]])
	waitGlobal(t, as, "an owner key goes", want(3, unowned, 0, alpha(18, 4, 2, 4), beta(105, 0, 9, 1)))
	f.own(ownedUnits[0], "m1")
	f.own(freeUnit, "m2")
	unowned = 0
	waitGlobal(t, as, "every unit owned", want(3, 0, 0, alpha(18, 4, 2, 4), beta(105, 0, 9, 1)))

	// A shard of a new queue adds the queue; it is unowned unless its unit
	// happens to be one that has an owner key.
	catMu.Lock()
	catalog = append(catalog, queue.Shard{Queue: "gamma"})
	catMu.Unlock()
	gamma := otel.QueueTotals{Queue: "gamma", Shards: 1}
	gammaUnowned := 0
	if !slices.Contains(append(ownedUnits, freeUnit), shard.UnitOf(queue.Shard{Queue: "gamma"}, partitions)) {
		gammaUnowned = 1
	}
	waitGlobal(t, as, "catalog grows", want(3, gammaUnowned, 0, alpha(18, 4, 2, 4), beta(105, 0, 9, 1), gamma))

	f.join("ghost")
	waitGlobal(t, as, "ghost joins", want(4, gammaUnowned, 1, overcounted(alpha(1018, 4, 2, 4)), beta(105, 0, 9, 1), gamma))
	f.leave("ghost")
	leader := waitGlobal(t, as, "ghost leaves", want(3, gammaUnowned, 2, alpha(18, 4, 2, 4), beta(105, 0, 9, 1), gamma))

	// The successor continues the count, neither from 0 nor counting
	// again what its predecessor counted.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := leader.Stop(ctx); err != nil {
		t.Fatalf("stop leader: %v", err)
	}
	as = without(as, leader)
	waitGlobal(t, as, "after leader change", want(3, gammaUnowned, 2, alpha(18, 4, 2, 4), beta(105, 0, 9, 1), gamma))
	f.join("m4")
	last := waitGlobal(t, as, "m4 joins under the new leader", want(4, gammaUnowned, 3, alpha(18, 4, 2, 4), beta(105, 0, 9, 1), gamma))

	// Changes while nobody leads are counted by the next leader, once each.
	if err := last.Stop(ctx); err != nil {
		t.Fatalf("stop leader: %v", err)
	}
	f.leave("m4")
	f.join("m5")
	f.leave("m5")
	as = []*Aggregator{c.aggregator("a3", cfg, catalogFn)}
	waitGlobal(t, as, "changes while no one led", want(3, gammaUnowned, 6, alpha(18, 4, 2, 4), beta(105, 0, 9, 1), gamma))
	if err := as[0].Stop(ctx); err != nil {
		t.Fatalf("stop leader: %v", err)
	}

	// Once the history since the last counted change is compacted, the next
	// leader can only compare member sets: a changed set counts once.
	f.join("m6")
	f.join("m7")
	resp, err := c.admin.Get(ctx, "/keeper/members/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if _, err := c.admin.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatalf("compact: %v", err)
	}
	// The deployment's ring config, as coordinators record it, overrides a
	// missing or wrong Units.
	if _, err := c.admin.Put(ctx, "/keeper/ring", fmt.Sprintf(`{"partitions":%d}`, partitions)); err != nil {
		t.Fatalf("put ring config: %v", err)
	}
	as = []*Aggregator{c.aggregator("a4", Config{CatalogInterval: cfg.CatalogInterval}, catalogFn)}
	waitGlobal(t, as, "changes behind a compaction", want(5, gammaUnowned, 7, alpha(18, 4, 2, 4), beta(105, 0, 9, 1), gamma))
	var st statsValue
	sresp, err := c.admin.Get(ctx, "/keeper/stats/rebalances")
	if err != nil || len(sresp.Kvs) != 1 || json.Unmarshal(sresp.Kvs[0].Value, &st) != nil || st.Count != 7 {
		t.Fatalf("stored rebalance count: %v %v %+v", err, sresp, st)
	}
}

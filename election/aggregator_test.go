package election

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/keeperhq/keeper/internal/etcdserver"
	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/otel"
	"github.com/keeperhq/keeper/shard"
)

const testTTL = 3 * time.Second

// testLog sends slog output to t.Log until the test ends; goroutines that
// outlive it (a revoke still in flight) must not log into a finished test.
func testLog(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

type cluster struct {
	t     *testing.T
	srv   *etcdserver.Server
	admin *clientv3.Client
	log   *slog.Logger
}

func newCluster(t *testing.T) *cluster {
	c := &cluster{t: t, log: testLog(t)}
	c.srv = etcdserver.StartTB(t)
	c.admin = c.clientTo(c.srv.Endpoints())
	return c
}

func (c *cluster) clientTo(endpoints []string) *clientv3.Client {
	c.t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second,
		DialOptions: shard.DialOptions(), Logger: zap.NewNop()})
	if err != nil {
		c.t.Fatalf("etcd client: %v", err)
	}
	c.t.Cleanup(func() { _ = cli.Close() })
	return cli
}

func (c *cluster) aggregatorOn(cli *clientv3.Client, id string, cfg Config, catalog func() []string) *Aggregator {
	c.t.Helper()
	cfg.MemberID = id
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = testTTL
	}
	cfg.Logger = c.log
	a := NewAggregator(cli, cfg, catalog)
	if err := a.Start(context.Background()); err != nil {
		c.t.Fatalf("start aggregator %s: %v", id, err)
	}
	c.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = a.Stop(ctx)
	})
	return a
}

func (c *cluster) aggregator(id string, cfg Config, catalog func() []string) *Aggregator {
	return c.aggregatorOn(c.clientTo(c.srv.Endpoints()), id, cfg, catalog)
}

func (c *cluster) aggregators(n int, cfg Config) []*Aggregator {
	as := make([]*Aggregator, n)
	for i := range as {
		as[i] = c.aggregator(fmt.Sprintf("k%d", i), cfg, nil)
	}
	return as
}

func leaders(as []*Aggregator) (ids, global []string) {
	for _, a := range as {
		if a.IsLeader() {
			ids = append(ids, a.MemberID())
		}
		if _, ok := a.Global(); ok {
			global = append(global, a.MemberID())
		}
	}
	return ids, global
}

// oneLeader waits until exactly one aggregator is leader and reports the
// global gauges, and returns it.
func oneLeader(t *testing.T, as []*Aggregator, timeout time.Duration) *Aggregator {
	t.Helper()
	var leader *Aggregator
	poll.For(t, timeout, "exactly one leader", func() (bool, string) {
		ids, global := leaders(as)
		if len(ids) != 1 || len(global) != 1 || ids[0] != global[0] {
			return false, fmt.Sprintf("leaders %v, reporting global %v", ids, global)
		}
		for _, a := range as {
			if a.MemberID() == ids[0] {
				leader = a
			}
		}
		return true, ""
	})
	return leader
}

func without(as []*Aggregator, x *Aggregator) []*Aggregator {
	return slices.DeleteFunc(slices.Clone(as), func(a *Aggregator) bool { return a == x })
}

func TestExactlyOneLeader(t *testing.T) {
	c := newCluster(t)
	as := c.aggregators(3, Config{})
	leader := oneLeader(t, as, 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, a := range as {
		id, err := a.Leader(ctx)
		if err != nil || id != leader.MemberID() {
			t.Fatalf("Leader() on %s = %q, %v; want %q", a.MemberID(), id, err, leader.MemberID())
		}
	}
	// Leadership stays put and single while nothing happens: check it over
	// several lease renewals.
	renewalsBy := time.Now().Add(testTTL)
	for time.Now().Before(renewalsBy) {
		if ids, global := leaders(as); len(ids) != 1 || ids[0] != leader.MemberID() || len(global) != 1 {
			t.Fatalf("steady state: leaders %v, reporting global %v; want only %s", ids, global, leader.MemberID())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLeaderWithoutCandidates(t *testing.T) {
	c := newCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if id, err := Leader(ctx, c.admin, ""); err != ErrNoLeader {
		t.Fatalf("Leader with no candidates = %q, %v; want ErrNoLeader", id, err)
	}
	a := NewAggregator(c.admin, Config{}, nil)
	if a.IsLeader() {
		t.Fatalf("an aggregator that was never started is leader")
	}
	if _, ok := a.Global(); ok {
		t.Fatalf("an aggregator that was never started reports global gauges")
	}
}

func TestResignHandsOverAtOnce(t *testing.T) {
	c := newCluster(t)
	as := c.aggregators(3, Config{})
	for round := 0; round < 2; round++ {
		leader := oneLeader(t, as, 20*time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		if err := leader.Stop(ctx); err != nil {
			t.Fatalf("stop leader: %v", err)
		}
		cancel()
		stopped := time.Since(start)
		if leader.IsLeader() {
			t.Fatalf("stopped leader still claims leadership")
		}
		if _, ok := leader.Global(); ok {
			t.Fatalf("stopped leader still reports global gauges")
		}
		as = without(as, leader)
		// A successor after a resign must not wait for the old lease to
		// expire; the deadline is that TTL, the handover takes far less.
		next := oneLeader(t, as, testTTL)
		t.Logf("round %d: resign of %s took %s; %s leader %s after Stop began", round,
			leader.MemberID(), stopped.Round(time.Millisecond), next.MemberID(), time.Since(start).Round(time.Millisecond))
	}
}

// TestPhantomLeaderGuard takes the leader's lease away behind its back in
// three ways and checks that it stops claiming leadership before anyone
// else starts, and that a successor follows within the lease TTL plus a
// second (the polling deadlines are generous; the measured times are logged).
func TestPhantomLeaderGuard(t *testing.T) {
	t.Run("revoke", func(t *testing.T) {
		c := newCluster(t)
		as := c.aggregators(3, Config{})
		leader := oneLeader(t, as, 20*time.Second)
		lease := leader.term.Load().lease
		start := time.Now()
		if _, err := c.admin.Revoke(context.Background(), lease); err != nil {
			t.Fatalf("revoke leader's lease: %v", err)
		}
		dropped := poll.For(t, testTTL, "old leader drops leadership", func() (bool, string) {
			return !leader.IsLeader(), "still leader"
		})
		next := oneLeader(t, without(as, leader), testTTL+time.Second)
		t.Logf("lease revoked: old leader dropped after %s, %s leader after %s", dropped.Round(time.Microsecond),
			next.MemberID(), time.Since(start).Round(time.Millisecond))
		// The old leader campaigns again under a new lease, as a follower.
		poll.For(t, 10*time.Second, "old leader campaigns again", func() (bool, string) {
			resp, err := c.admin.Get(context.Background(), "/keeper/election/", clientv3.WithPrefix())
			if err != nil {
				return false, err.Error()
			}
			return len(resp.Kvs) == 3, fmt.Sprintf("%d candidates", len(resp.Kvs))
		})
		if leader.IsLeader() {
			t.Fatalf("old leader leads again although %s holds the older key", next.MemberID())
		}
	})

	t.Run("client closed", func(t *testing.T) {
		c := newCluster(t)
		as := c.aggregators(3, Config{})
		leader := oneLeader(t, as, 20*time.Second)
		start := time.Now()
		_ = leader.cli.Close()
		dropped := poll.For(t, testTTL, "old leader drops leadership", func() (bool, string) {
			return !leader.IsLeader(), "still leader"
		})
		// The lease was renewed at most TTL/3 before the close, and etcd
		// expires it TTL after; the rest is etcd's expiry check (every
		// 500ms) and the successor's confirmation.
		next := oneLeader(t, without(as, leader), 3*testTTL)
		t.Logf("client closed: old leader dropped after %s, %s leader after %s (TTL %s)", dropped.Round(time.Microsecond),
			next.MemberID(), time.Since(start).Round(time.Millisecond), testTTL)
	})

	t.Run("partition", func(t *testing.T) {
		c := newCluster(t)
		proxy := startProxy(t, c.srv.Endpoints()[0])
		leaderCli := c.clientTo([]string{"http://" + proxy.Listen})
		first := c.aggregatorOn(leaderCli, "k0", Config{}, nil)
		oneLeader(t, []*Aggregator{first}, 20*time.Second)
		as := []*Aggregator{first, c.aggregator("k1", Config{}, nil), c.aggregator("k2", Config{}, nil)}
		oneLeader(t, as, 20*time.Second)
		if !first.IsLeader() {
			t.Fatalf("k0 campaigned first but is not leader")
		}
		// Blackhole both directions: the client sees no error, only
		// silence, so only the local lease deadline can tell it in time.
		start := time.Now()
		for _, dir := range []string{"upstream", "downstream"} {
			body := fmt.Sprintf(`{"name":"blackhole_%s","type":"timeout","stream":%q,"attributes":{"timeout":0}}`, dir, dir)
			if _, err := proxy.Toxics.AddToxicJson(strings.NewReader(body)); err != nil {
				t.Fatalf("add toxic: %v", err)
			}
		}
		var dropped, took time.Duration
		var next string
		poll.For(t, 4*testTTL, "a successor behind the partition", func() (bool, string) {
			oldLeads := first.IsLeader()
			if !oldLeads && dropped == 0 {
				dropped = time.Since(start)
			}
			ids, global := leaders(as[1:])
			if len(ids) == 0 {
				return false, "no successor yet"
			}
			if oldLeads {
				t.Fatalf("two leaders: partitioned k0 still claims leadership while %v leads", ids)
			}
			if len(ids) != 1 || len(global) > 1 {
				t.Fatalf("leaders %v, reporting global %v", ids, global)
			}
			took, next = time.Since(start), ids[0]
			return true, ""
		})
		t.Logf("partitioned: old leader dropped after %s, %s leader after %s (TTL %s)",
			dropped.Round(time.Millisecond), next, took.Round(time.Millisecond), testTTL)
	})
}

func startProxy(t *testing.T, upstream string) *toxiproxy.Proxy {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.New(io.Discard))
	p := toxiproxy.NewProxy(srv, "etcd", "127.0.0.1:0", strings.TrimPrefix(upstream, "http://"))
	if err := p.Start(); err != nil {
		t.Fatalf("start proxy: %v", err)
	}
	t.Cleanup(p.Stop)
	return p
}

func TestEtcdRestart(t *testing.T) {
	c := newCluster(t)
	as := c.aggregators(3, Config{})
	before := oneLeader(t, as, 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	if err := c.srv.Restart(ctx); err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
	restarted := time.Since(start)
	after := oneLeader(t, as, 30*time.Second)
	id, err := after.Leader(ctx)
	if err != nil || id != after.MemberID() {
		t.Fatalf("etcd names leader %q (%v), but %s claims it", id, err, after.MemberID())
	}
	t.Logf("etcd restart: leader %s before, %s after; etcd down and up again in %s, one leader again %s after that",
		before.MemberID(), after.MemberID(), restarted.Round(time.Millisecond), (time.Since(start) - restarted).Round(time.Millisecond))
	for i := 0; i < 50; i++ {
		if ids, global := leaders(as); len(ids) > 1 || len(global) > 1 {
			t.Fatalf("after restart: leaders %v, reporting global %v", ids, global)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

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
	const partitions = 8
	var catalog []string
	for p := 0; p < 4; p++ {
		catalog = append(catalog, fmt.Sprintf("alpha#%d", p))
	}
	for p := 0; p < 3; p++ {
		catalog = append(catalog, fmt.Sprintf("beta#%d", p))
	}
	var catMu sync.Mutex
	catalogFn := func() []string {
		catMu.Lock()
		defer catMu.Unlock()
		return slices.Clone(catalog)
	}
	units := map[int][]string{}
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

	cfg := Config{Partitions: partitions, CatalogInterval: 100 * time.Millisecond}
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
	alpha := func(ready, inflight, locked, dead int64) otel.QueueTotals {
		return otel.QueueTotals{Queue: "alpha", Shards: 4, Ready: ready, Inflight: inflight, Locked: locked, Dead: dead}
	}
	beta := func(ready, inflight, locked, dead int64) otel.QueueTotals {
		return otel.QueueTotals{Queue: "beta", Shards: 3, Ready: ready, Inflight: inflight, Locked: locked, Dead: dead}
	}
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
	catalog = append(catalog, "gamma#0")
	catMu.Unlock()
	gamma := otel.QueueTotals{Queue: "gamma", Shards: 1}
	gammaUnowned := 0
	if !slices.Contains(append(ownedUnits, freeUnit), shard.UnitOf("gamma#0", partitions)) {
		gammaUnowned = 1
	}
	waitGlobal(t, as, "catalog grows", want(3, gammaUnowned, 0, alpha(18, 4, 2, 4), beta(105, 0, 9, 1), gamma))

	f.join("ghost")
	waitGlobal(t, as, "ghost joins", want(4, gammaUnowned, 1, alpha(1018, 4, 2, 4), beta(105, 0, 9, 1), gamma))
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
	// missing or wrong Partitions.
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

// TestGlobalStopsWithLeadership checks that the cached snapshot is never
// served once leadership is gone, even though the cache still holds it.
func TestGlobalStopsWithLeadership(t *testing.T) {
	c := newCluster(t)
	as := c.aggregators(2, Config{})
	leader := oneLeader(t, as, 20*time.Second)
	tm := leader.term.Load()
	if _, ok := leader.Global(); !ok || tm.snap.Load() == nil {
		t.Fatalf("leader serves no snapshot")
	}
	if _, err := c.admin.Revoke(context.Background(), tm.lease); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	poll.For(t, testTTL, "old leader stops serving", func() (bool, string) {
		_, ok := leader.Global()
		return !ok, "still serves"
	})
	if tm.snap.Load() == nil {
		t.Fatalf("test premise: the old term's snapshot should still be cached")
	}
}

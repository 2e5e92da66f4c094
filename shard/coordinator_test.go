package shard

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/etcdserver"
	"github.com/keeperhq/keeper/internal/poll"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// testPartitions keeps the coordinator tests quick under -race; the default
// ring is exercised by ring_test.go and bench.Converge.
const testPartitions = 512

// world records what every listener was told, across keepers, and checks
// the invariants as calls happen: a shard never has two live owners, and a
// unit's tokens never go down.
type world struct {
	t          *testing.T
	partitions int
	mu         sync.Mutex
	owner      map[string]string // shard -> member, live listeners only
	lastToken  map[int]int64
	violations []string
}

func newWorld(t *testing.T) *world {
	return &world{t: t, partitions: testPartitions, owner: map[string]string{}, lastToken: map[int]int64{}}
}

func (w *world) violate(format string, args ...any) {
	w.violations = append(w.violations, fmt.Sprintf(format, args...))
}

func (w *world) check() {
	w.t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.violations) > 0 {
		w.t.Fatalf("invariant violations (%d), first: %s", len(w.violations), strings.Join(w.violations[:min(5, len(w.violations))], "; "))
	}
}

type event struct {
	kind  string // own, disown, disownall
	shard string
	token int64
}

// recorder is a Listener. A dead recorder stands for a crashed process:
// what its coordinator still does no longer counts.
type recorder struct {
	w     *world
	id    string
	dead  atomic.Bool
	mu    sync.Mutex
	owned map[string]int64
	log   []event
}

func (r *recorder) Own(shard string, token int64) {
	r.mu.Lock()
	r.owned[shard] = token
	r.log = append(r.log, event{"own", shard, token})
	r.mu.Unlock()
	if r.dead.Load() {
		return
	}
	w := r.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if o, ok := w.owner[shard]; ok && o != r.id {
		w.violate("%s owns %s while %s does", r.id, shard, o)
	}
	w.owner[shard] = r.id
	u := UnitOf(shard, w.partitions)
	if token < w.lastToken[u] {
		w.violate("unit %d token went down: %d after %d (%s by %s)", u, token, w.lastToken[u], shard, r.id)
	}
	w.lastToken[u] = max(w.lastToken[u], token)
}

func (r *recorder) Disown(shard string) {
	r.mu.Lock()
	delete(r.owned, shard)
	r.log = append(r.log, event{"disown", shard, 0})
	r.mu.Unlock()
	r.release(shard)
}

func (r *recorder) DisownAll() {
	r.mu.Lock()
	shards := make([]string, 0, len(r.owned))
	for sh := range r.owned {
		shards = append(shards, sh)
	}
	clear(r.owned)
	r.log = append(r.log, event{"disownall", "", 0})
	r.mu.Unlock()
	for _, sh := range shards {
		r.release(sh)
	}
}

func (r *recorder) release(shard string) {
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	if r.w.owner[shard] == r.id {
		delete(r.w.owner, shard)
	}
}

// kill makes the recorder stop counting, as if its process died.
func (r *recorder) kill() {
	r.dead.Store(true)
	r.mu.Lock()
	shards := make([]string, 0, len(r.owned))
	for sh := range r.owned {
		shards = append(shards, sh)
	}
	r.mu.Unlock()
	for _, sh := range shards {
		r.release(sh)
	}
}

func (r *recorder) snapshot() (map[string]int64, []event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.owned), slices.Clone(r.log)
}

type keeper struct {
	id  string
	c   *Coordinator
	cli *clientv3.Client
	rec *recorder
}

// logSink sends logs to t.Log until the test ends.
type logSink struct {
	mu     sync.Mutex
	t      *testing.T
	closed bool
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

type harness struct {
	t       *testing.T
	srv     *etcdserver.Server
	w       *world
	log     *slog.Logger
	catalog []string
	cfg     Config
	raw     *clientv3.Client
}

func newHarness(t *testing.T, shards int) *harness {
	return newHarnessOn(t, shards, nil)
}

func newHarnessOn(t *testing.T, shards int, srv *etcdserver.Server) *harness {
	sink := &logSink{t: t}
	t.Cleanup(func() { sink.mu.Lock(); sink.closed = true; sink.mu.Unlock() })
	if srv == nil {
		srv = etcdserver.StartTB(t)
	}
	h := &harness{
		t:   t,
		srv: srv,
		w:   newWorld(t),
		log: slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	for q := 0; len(h.catalog) < shards; q++ {
		for p := 0; p < 4 && len(h.catalog) < shards; p++ {
			h.catalog = append(h.catalog, fmt.Sprintf("queue-%d#%d", q, p))
		}
	}
	h.cfg = Config{Prefix: "/t/", Ring: RingConfig{Partitions: testPartitions}}
	h.raw = h.client()
	return h
}

func (h *harness) client() *clientv3.Client {
	h.t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: h.srv.Endpoints(), DialTimeout: 5 * time.Second,
		DialOptions: DialOptions(), Logger: zap.NewNop()})
	if err != nil {
		h.t.Fatalf("etcd client: %v", err)
	}
	h.t.Cleanup(func() { _ = cli.Close() })
	return cli
}

func (h *harness) start(id string) *keeper {
	h.t.Helper()
	k := &keeper{id: id, cli: h.client(), rec: &recorder{w: h.w, id: id, owned: map[string]int64{}}}
	cfg := h.cfg
	cfg.MemberID = id
	cfg.Logger = h.log
	k.c = NewCoordinator(k.cli, cfg, k.rec)
	k.c.SetShards(h.catalog)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := k.c.Start(ctx); err != nil {
		h.t.Fatalf("start %s: %v", id, err)
	}
	h.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = k.c.Stop(ctx)
	})
	return k
}

// settled: every catalog shard has exactly one owner among live keepers,
// that owner holds the shard's unit in etcd, the unit is where the ring of
// exactly these keepers puts it, and no unit is unowned.
func (h *harness) settled(live []*keeper) func() (bool, string) {
	return func() (bool, string) {
		owners := map[string][]string{}
		for _, k := range live {
			owned, _ := k.rec.snapshot()
			for sh := range owned {
				owners[sh] = append(owners[sh], k.id)
			}
		}
		for _, sh := range h.catalog {
			if n := len(owners[sh]); n != 1 {
				return false, fmt.Sprintf("shard %s has %d owners %v", sh, n, owners[sh])
			}
		}
		if len(owners) != len(h.catalog) {
			return false, fmt.Sprintf("%d shards owned, catalog has %d", len(owners), len(h.catalog))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := live[0].c.Status(ctx)
		if err != nil {
			return false, err.Error()
		}
		var ids []string
		for _, k := range live {
			ids = append(ids, k.id)
		}
		sort.Strings(ids)
		var members []string
		for _, m := range st.Members {
			members = append(members, m.ID)
		}
		if !slices.Equal(members, ids) {
			return false, fmt.Sprintf("etcd members %v, want %v", members, ids)
		}
		if len(st.UnownedUnits) > 0 || st.Misplaced > 0 {
			return false, fmt.Sprintf("%d units unowned, %d misplaced", len(st.UnownedUnits), st.Misplaced)
		}
		for sh, o := range st.ShardOwners {
			if owners[sh][0] != o {
				return false, fmt.Sprintf("shard %s: etcd says %s, listener %s", sh, o, owners[sh][0])
			}
		}
		return true, ""
	}
}

func TestGrowShrink(t *testing.T) {
	h := newHarness(t, 2000)
	var live []*keeper
	live = append(live, h.start("keeper-0"))
	d := poll.For(t, 20*time.Second, "1 member", h.settled(live))
	t.Logf("1 member settled in %s", d)
	h.w.check()

	for i := 1; i < 5; i++ {
		live = append(live, h.start(fmt.Sprintf("keeper-%d", i)))
	}
	d = poll.For(t, 30*time.Second, "5 members", h.settled(live))
	t.Logf("1 -> 5 members settled in %s", d)
	h.w.check()

	for _, k := range live[2:] {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := k.c.Stop(ctx); err != nil {
			t.Fatalf("stop %s: %v", k.id, err)
		}
		cancel()
		if owned := k.c.OwnedShards(); len(owned) != 0 {
			t.Fatalf("%s still reports %d owned shards after Stop", k.id, len(owned))
		}
	}
	live = live[:2]
	d = poll.For(t, 30*time.Second, "2 members", h.settled(live))
	t.Logf("5 -> 2 members settled in %s", d)
	h.w.check()

	// Etcd holds one key per unit that holds shards and one per member
	// (plus the ring config): never more than the partition count.
	resp, err := h.raw.Get(context.Background(), "/t/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(usedUnits(h.catalog, testPartitions) + 2 + 1); resp.Count != want {
		t.Fatalf("%d keys under the prefix, want %d", resp.Count, want)
	}
}

func TestGracefulHandoff(t *testing.T) {
	h := newHarness(t, 2000)
	live := []*keeper{h.start("a"), h.start("b"), h.start("c")}
	poll.For(t, 30*time.Second, "3 members", h.settled(live))
	gone := live[2]
	before, _ := gone.rec.snapshot()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := gone.c.Stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	stopTook := time.Since(start)
	poll.For(t, 20*time.Second, "handoff", h.settled(live[:2]))
	t.Logf("graceful handoff of %d shards: Stop took %s, successors owned everything %s after Stop began",
		len(before), stopTook.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	h.w.check()
}

func TestCrashTakeover(t *testing.T) {
	for _, how := range []string{"close-client", "revoke-lease"} {
		t.Run(how, func(t *testing.T) {
			h := newHarness(t, 2000)
			live := []*keeper{h.start("a"), h.start("b"), h.start("c")}
			poll.For(t, 30*time.Second, "3 members", h.settled(live))
			crashed := live[2]
			owned, _ := crashed.rec.snapshot()
			crashed.rec.kill()
			start := time.Now()
			switch how {
			case "close-client":
				_ = crashed.cli.Close()
			case "revoke-lease":
				crashed.c.lmu.Lock()
				lease := crashed.c.sess.lease
				crashed.c.lmu.Unlock()
				// Stop the crashed keeper from coming back; its process is gone.
				_ = crashed.cli.Close()
				if _, err := h.raw.Revoke(context.Background(), lease); err != nil {
					t.Fatalf("revoke: %v", err)
				}
			}
			poll.For(t, 20*time.Second, "takeover", h.settled(live[:2]))
			d := time.Since(start)
			ttl := h.cfg.SessionTTL
			if ttl == 0 {
				ttl = defaultSessionTTL
			}
			t.Logf("crash (%s) of a keeper with %d shards: taken over in %s (session TTL %s, budget TTL+1s = %s)",
				how, len(owned), d.Round(time.Millisecond), ttl, ttl+time.Second)
			h.w.check()
		})
	}
}

// A keeper whose session ends stops everything (DisownAll) before it
// re-registers and re-acquires, and its new tokens are higher.
func TestSessionLostDisownAllFirst(t *testing.T) {
	h := newHarness(t, 500)
	k := h.start("solo")
	poll.For(t, 20*time.Second, "settled", h.settled([]*keeper{k}))
	owned, _ := k.rec.snapshot()
	var oldMax int64
	for _, tok := range owned {
		oldMax = max(oldMax, tok)
	}
	k.c.lmu.Lock()
	lease := k.c.sess.lease
	k.c.lmu.Unlock()
	if _, err := h.raw.Revoke(context.Background(), lease); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	d := poll.For(t, 20*time.Second, "re-acquired", func() (bool, string) {
		owned, _ := k.rec.snapshot()
		for _, sh := range h.catalog {
			if owned[sh] <= oldMax {
				return false, fmt.Sprintf("%s at token %d", sh, owned[sh])
			}
		}
		return true, ""
	})
	t.Logf("session lost and every shard re-acquired with a higher token in %s", d)
	_, log := k.rec.snapshot()
	disownAll, firstNewOwn := -1, -1
	for i, e := range log {
		if e.kind == "disownall" && disownAll < 0 {
			disownAll = i
		}
		if e.kind == "own" && e.token > oldMax && firstNewOwn < 0 {
			firstNewOwn = i
		}
	}
	if disownAll < 0 || firstNewOwn < disownAll {
		t.Fatalf("DisownAll at event %d, first Own with a new token at %d", disownAll, firstNewOwn)
	}
	h.w.check()
}

// With etcd gone for longer than the TTL, the keeper gives its session up
// by itself (no keepalive acknowledged), then recovers when etcd returns.
func TestEtcdDownLongerThanTTL(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	srv, err := etcdserver.Start(ctx, etcdserver.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var srv2 *etcdserver.Server
	t.Cleanup(func() {
		_ = srv.Stop()
		if srv2 != nil {
			_ = srv2.Stop()
		}
	})
	h := newHarnessOn(t, 500, srv)
	k := h.start("solo")
	poll.For(t, 20*time.Second, "settled", h.settled([]*keeper{k}))
	owned, _ := k.rec.snapshot()
	var oldMax int64
	for _, tok := range owned {
		oldMax = max(oldMax, tok)
	}
	clientPort, peerPort := srv.Ports()
	down := time.Now()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	poll.For(t, 15*time.Second, "DisownAll while etcd is down", func() (bool, string) {
		_, log := k.rec.snapshot()
		return slices.ContainsFunc(log, func(e event) bool { return e.kind == "disownall" }), "no DisownAll"
	})
	t.Logf("etcd down: keeper stopped all housekeeping %s after etcd began to stop (TTL %s)",
		time.Since(down).Round(time.Millisecond), k.c.cfg.SessionTTL)
	srv2, err = etcdserver.Start(ctx, etcdserver.Config{Dir: dir, ClientPort: clientPort, PeerPort: peerPort})
	if err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
	h.srv = srv2
	t.Logf("etcd back after %s", time.Since(down).Round(time.Millisecond))
	poll.For(t, 30*time.Second, "recovered", func() (bool, string) {
		owned, _ := k.rec.snapshot()
		for _, sh := range h.catalog {
			if owned[sh] <= oldMax {
				return false, fmt.Sprintf("%s at token %d", sh, owned[sh])
			}
		}
		return true, ""
	})
	poll.For(t, 20*time.Second, "settled", h.settled([]*keeper{k}))
	h.w.check()
}

// A quick etcd restart (data kept) must not cost the sessions, and the
// deployment stays settled with one owner per shard.
func TestEtcdRestart(t *testing.T) {
	h := newHarness(t, 2000)
	live := []*keeper{h.start("a"), h.start("b"), h.start("c")}
	poll.For(t, 30*time.Second, "3 members", h.settled(live))
	if err := h.srv.Restart(context.Background()); err != nil {
		t.Fatalf("restart: %v", err)
	}
	// A member joining right after the restart exercises watches and
	// acquisitions on the restarted server.
	live = append(live, h.start("d"))
	d := poll.For(t, 30*time.Second, "settled after restart", h.settled(live))
	t.Logf("settled %s after etcd restart and a join", d)
	h.w.check()
}

func usedUnitSet(shards []string) map[int]bool {
	used := map[int]bool{}
	for _, sh := range shards {
		used[UnitOf(sh, testPartitions)] = true
	}
	return used
}

// usedUnits counts the units that hold at least one of shards: the only
// units that are owned, so the only ownership keys in etcd.
func usedUnits(shards []string, partitions int) int {
	used := map[int]bool{}
	for _, sh := range shards {
		used[UnitOf(sh, partitions)] = true
	}
	return len(used)
}

// A catalog change writes to etcd only for units that gain their first
// shard or lose their last one: keys track the shards, never more.
func TestCatalogChangesWriteOnlyChangedUnits(t *testing.T) {
	h := newHarness(t, 200)
	live := []*keeper{h.start("a"), h.start("b")}
	poll.For(t, 20*time.Second, "settled", h.settled(live))
	rev := func() int64 {
		r, err := h.raw.Get(context.Background(), "/t/ring")
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	before := rev()
	old := usedUnitSet(h.catalog)
	h.catalog = append(h.catalog[50:], "new-queue#0", "new-queue#1")
	now := usedUnitSet(h.catalog)
	changed := 0
	for u := range old {
		if !now[u] {
			changed++
		}
	}
	for u := range now {
		if !old[u] {
			changed++
		}
	}
	for _, k := range live {
		k.c.SetShards(h.catalog)
	}
	poll.For(t, 20*time.Second, "catalog applied", h.settled(live))
	poll.For(t, 20*time.Second, "emptied units released", func() (bool, string) {
		r, err := h.raw.Get(context.Background(), "/t/owners/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return false, err.Error()
		}
		return int(r.Count) == len(now), fmt.Sprintf("%d owner keys, %d used units", r.Count, len(now))
	})
	// Each changed unit costs one acquire or one release; batches of
	// them share a revision, so this is an upper bound.
	if after := rev(); after-before > int64(changed) {
		t.Fatalf("catalog change of %d units wrote %d revisions", changed, after-before)
	}
	h.w.check()
}

func TestFenced(t *testing.T) {
	h := newHarness(t, 2000)
	live := []*keeper{h.start("a"), h.start("b")}
	poll.For(t, 30*time.Second, "settled", h.settled(live))
	a := live[0]
	owned, _ := a.rec.snapshot()
	// Pick two shards of A in different units, with unit siblings.
	byUnit := map[int][]string{}
	for sh := range owned {
		u := UnitOf(sh, testPartitions)
		byUnit[u] = append(byUnit[u], sh)
	}
	var units []int
	for u, shs := range byUnit {
		if len(shs) >= 2 {
			units = append(units, u)
		}
	}
	sort.Ints(units)
	if len(units) < 2 {
		t.Fatalf("need two units with several shards, have %v", units)
	}

	// 1. Fence ahead of etcd: the key is still ours. The shard stays
	// dropped, its siblings stay owned.
	u1 := units[0]
	sh1 := byUnit[u1][0]
	tok1 := owned[sh1]
	a.rec.Disown(sh1) // the listener drops it before reporting
	a.c.Fenced(sh1, tok1)
	poll.For(t, 10*time.Second, "fence handled", func() (bool, string) {
		_, ok := a.c.OwnedShards()[sh1]
		return !ok, "still in OwnedShards"
	})
	// Let the coordinator run full rounds in which it could (wrongly)
	// re-own it.
	r0 := a.c.rounds.Load()
	poll.For(t, 10*time.Second, "two more rounds", func() (bool, string) {
		a.c.kick()
		return a.c.rounds.Load() >= r0+2, "no rounds"
	})
	poll.For(t, 10*time.Second, "siblings kept", func() (bool, string) {
		cur, _ := a.rec.snapshot()
		for _, sh := range byUnit[u1][1:] {
			if cur[sh] != tok1 {
				return false, sh + " lost"
			}
		}
		return true, ""
	})
	if _, ok := a.c.OwnedShards()[sh1]; ok {
		t.Fatalf("fenced shard %s re-owned under the same token", sh1)
	}

	// 2. Unit lost: another token took the unit (here an intruder with its
	// own lease). A disowns the whole unit and leaves the key alone.
	u2 := units[1]
	sh2 := byUnit[u2][0]
	tok2 := owned[sh2]
	key := "/t/owners/" + fmt.Sprint(u2)
	g, err := h.raw.Grant(context.Background(), 30)
	if err != nil {
		t.Fatal(err)
	}
	// Overwriting keeps the CreateRevision: only the lease and value say
	// the key is no longer A's.
	if _, err := h.raw.Txn(context.Background()).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", tok2)).
		Then(clientv3.OpPut(key, "intruder", clientv3.WithLease(g.ID))).
		Commit(); err != nil {
		t.Fatal(err)
	}
	a.rec.Disown(sh2)
	a.c.Fenced(sh2, tok2)
	poll.For(t, 10*time.Second, "unit disowned", func() (bool, string) {
		cur, _ := a.rec.snapshot()
		for _, sh := range byUnit[u2] {
			if _, ok := cur[sh]; ok {
				return false, sh + " still owned"
			}
		}
		return true, ""
	})
	r, err := h.raw.Get(context.Background(), key)
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "intruder" {
		t.Fatalf("intruder's key touched: %v %v", r, err)
	}
	// When the intruder goes, the ring's owner takes the unit back with a
	// higher token.
	if _, err := h.raw.Revoke(context.Background(), g.ID); err != nil {
		t.Fatal(err)
	}
	poll.For(t, 20*time.Second, "unit re-acquired", func() (bool, string) {
		for _, k := range live {
			cur, _ := k.rec.snapshot()
			if cur[sh2] > tok2 {
				return true, ""
			}
		}
		return false, "not re-acquired"
	})
	h.w.check()
}

// A shard dropped because its fence is ahead of etcd is claimed again after
// FenceRetry under the same token, and again after each further refusal: a
// fleet whose fences an operator reset resumes by itself.
func TestFenceAheadRetried(t *testing.T) {
	h := newHarness(t, 50)
	h.cfg.FenceRetry = 300 * time.Millisecond
	a := h.start("a")
	poll.For(t, 30*time.Second, "settled", h.settled([]*keeper{a}))
	owned, _ := a.rec.snapshot()
	var sh string
	for s := range owned {
		if sh == "" || s < sh {
			sh = s
		}
	}
	tok := owned[sh]
	for round := 1; round <= 2; round++ {
		a.rec.Disown(sh)
		a.c.Fenced(sh, tok)
		poll.For(t, 10*time.Second, "fenced shard dropped", func() (bool, string) {
			_, ok := a.c.OwnedShards()[sh]
			return !ok, "still owned"
		})
		took := poll.For(t, 10*time.Second, "fenced shard claimed again", func() (bool, string) {
			cur, _ := a.rec.snapshot()
			return cur[sh] == tok, fmt.Sprintf("token %d, want %d", cur[sh], tok)
		})
		t.Logf("round %d: claimed again after %s (FenceRetry %s)", round, took.Round(time.Millisecond), h.cfg.FenceRetry)
	}
	h.w.check()
}

func TestStatusJSON(t *testing.T) {
	h := newHarness(t, 100)
	live := []*keeper{h.start("a"), h.start("b")}
	poll.For(t, 20*time.Second, "settled", h.settled(live))
	// A coordinator that was never started can report status.
	c := NewCoordinator(h.raw, Config{Prefix: "/t", Ring: RingConfig{Partitions: testPartitions}}, &recorder{w: h.w, owned: map[string]int64{}})
	c.SetShards(h.catalog)
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if len(st.Members) != 2 || st.Shards != 100 || len(st.Tokens) != usedUnits(h.catalog, testPartitions) || len(st.UnownedShards) != 0 {
		t.Fatalf("status: %d members, %d shards, %d tokens, %d unowned shards", len(st.Members), st.Shards, len(st.Tokens), len(st.UnownedShards))
	}
	total := 0
	for _, m := range st.Members {
		total += len(m.Shards)
	}
	if total != 100 {
		t.Fatalf("members own %d shards, want 100", total)
	}
}

func TestConfigChecks(t *testing.T) {
	h := newHarness(t, 10)
	h.start("a")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	other := NewCoordinator(h.client(), Config{Prefix: "/t/", MemberID: "b", Ring: RingConfig{Partitions: testPartitions * 2}, Logger: h.log}, &recorder{w: h.w, owned: map[string]int64{}})
	if err := other.Start(ctx); err == nil || !strings.Contains(err.Error(), "ring config") {
		t.Fatalf("start with another ring config: %v", err)
	}
	bad := NewCoordinator(h.client(), Config{Prefix: "/t/", MemberID: "a/b"}, &recorder{w: h.w, owned: map[string]int64{}})
	if err := bad.Start(ctx); err == nil {
		t.Fatalf("start with member id a/b succeeded")
	}
	// A second keeper with the same id waits for the first to go.
	dupCtx, dupCancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer dupCancel()
	dup := NewCoordinator(h.client(), Config{Prefix: "/t/", MemberID: "a", Ring: RingConfig{Partitions: testPartitions}, Logger: h.log}, &recorder{w: h.w, owned: map[string]int64{}})
	if err := dup.Start(dupCtx); err == nil {
		_ = dup.Stop(context.Background())
		t.Fatalf("a duplicate member id registered while the first is alive")
	}
}

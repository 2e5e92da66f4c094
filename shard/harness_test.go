package shard

import (
	"context"
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
	"github.com/keeperhq/keeper/queue"
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
	owner      map[queue.Shard]string // shard -> member, live listeners only
	lastToken  map[int]int64
	violations []string
}

func newWorld(t *testing.T) *world {
	return &world{t: t, partitions: testPartitions, owner: map[queue.Shard]string{}, lastToken: map[int]int64{}}
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
	shard queue.Shard
	token int64
}

// recorder is a Listener. A dead recorder stands for a crashed process:
// what its coordinator still does no longer counts.
type recorder struct {
	w     *world
	id    string
	dead  atomic.Bool
	mu    sync.Mutex
	owned map[queue.Shard]int64
	log   []event
}

func newRecorder(w *world, id string) *recorder {
	return &recorder{w: w, id: id, owned: map[queue.Shard]int64{}}
}

func (r *recorder) Own(shards []queue.Shard, token int64) {
	r.mu.Lock()
	for _, shard := range shards {
		r.owned[shard] = token
		r.log = append(r.log, event{"own", shard, token})
	}
	r.mu.Unlock()
	if r.dead.Load() {
		return
	}
	w := r.w
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, shard := range shards {
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
}

func (r *recorder) Disown(shards []queue.Shard) {
	r.mu.Lock()
	for _, shard := range shards {
		delete(r.owned, shard)
		r.log = append(r.log, event{"disown", shard, 0})
	}
	r.mu.Unlock()
	for _, shard := range shards {
		r.release(shard)
	}
}

func (r *recorder) DisownAll() {
	r.mu.Lock()
	shards := make([]queue.Shard, 0, len(r.owned))
	for sh := range r.owned {
		shards = append(shards, sh)
	}
	clear(r.owned)
	r.log = append(r.log, event{"disownall", queue.Shard{}, 0})
	r.mu.Unlock()
	for _, sh := range shards {
		r.release(sh)
	}
}

func (r *recorder) release(shard queue.Shard) {
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
	shards := make([]queue.Shard, 0, len(r.owned))
	for sh := range r.owned {
		shards = append(shards, sh)
	}
	r.mu.Unlock()
	for _, sh := range shards {
		r.release(sh)
	}
}

func (r *recorder) snapshot() (map[queue.Shard]int64, []event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.owned), slices.Clone(r.log)
}

type keeper struct {
	id       string
	c        *Coordinator
	cli      *clientv3.Client
	rec      *recorder
	refusals *Refusals
}

// lease is the keeper's current session lease.
func (k *keeper) lease() clientv3.LeaseID {
	k.c.lmu.Lock()
	defer k.c.lmu.Unlock()
	return k.c.sess.lease.ID()
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
	catalog []queue.Shard
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
			h.catalog = append(h.catalog, queue.Shard{Queue: fmt.Sprintf("queue-%d", q), Partition: p})
		}
	}
	h.cfg = Config{Prefix: "/t/", Ring: RingConfig{Units: testPartitions}}
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
	k := &keeper{id: id, cli: h.client(), rec: newRecorder(h.w, id), refusals: NewRefusals()}
	cfg := h.cfg
	cfg.MemberID = id
	cfg.Logger = h.log
	cfg.Refusals = k.refusals
	k.c = NewCoordinator(k.cli, cfg, k.rec)
	k.c.TestSignals.Round.Init()
	k.c.TestSignals.QuietTick.Init()
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
		owners := map[queue.Shard][]string{}
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
		for _, sh := range h.catalog {
			if o := st.ShardOwners[sh.String()]; owners[sh][0] != o {
				return false, fmt.Sprintf("shard %s: etcd says %s, listener %s", sh, o, owners[sh][0])
			}
		}
		return true, ""
	}
}

func usedUnitSet(shards []queue.Shard) map[int]bool {
	used := map[int]bool{}
	for _, sh := range shards {
		used[UnitOf(sh, testPartitions)] = true
	}
	return used
}

// usedUnits counts the units that hold at least one of shards: the only
// units that are owned, so the only ownership keys in etcd.
func usedUnits(shards []queue.Shard, partitions int) int {
	used := map[int]bool{}
	for _, sh := range shards {
		used[UnitOf(sh, partitions)] = true
	}
	return len(used)
}

package queue

import (
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"
)

// idMovedBy finds an id whose home differs between the two partition counts.
func idMovedBy(prefix string, from, to int) string {
	for i := 0; ; i++ {
		id := fmt.Sprint(prefix, i)
		if PartitionOf(id, from) != PartitionOf(id, to) {
			return id
		}
	}
}

// An id enqueued before the partitions grew is still a duplicate after,
// wherever its home moved, through two growths; once it is acked, it is
// enqueued at its current home.
func TestEnqueuedBeforeGrowthIsDuplicateAfter(t *testing.T) {
	e := newEnv(t)
	e.create("g", Config{})
	first := map[string]EnqueueResult{}
	for _, id := range ids("m", 200) {
		first[id] = e.enqueue("g", Message{ID: id})
	}
	moved := 0
	for _, grow := range []int{3, 7} {
		if err := e.c.Registry().Update(e.ctx, "g", Config{Partitions: grow}); err != nil {
			t.Fatal(err)
		}
		for id, r := range first {
			got := e.enqueue("g", Message{ID: id})
			if !got.Duplicate || got.Shard != r.Shard || !got.EnqueuedAt.Equal(r.EnqueuedAt) {
				t.Fatalf("after growing to %d, enqueue of %s = %+v; want the duplicate of %+v", grow, id, got, r)
			}
			if PartitionOf(id, grow) != r.Shard.Partition {
				moved++
			}
		}
	}
	if moved < 200 {
		t.Fatalf("only %d of 400 re-enqueues had a new home: the test shows little", moved)
	}
	a := e.wantCounts("g", 200, 0, 0, 0)
	if a.Counters.Deduplicated != 400 {
		t.Fatalf("deduplicated %d, want 400", a.Counters.Deduplicated)
	}
	ds := e.pull("g", 50, time.Minute)
	for _, d := range ds {
		if err := e.c.Ack(e.ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range ds {
		if r := e.enqueue("g", Message{ID: d.ID}); r.Duplicate || r.Shard.Partition != PartitionOf(d.ID, 7) {
			t.Fatalf("re-enqueue of acked %s = %+v; want it added at its home under 7 partitions", d.ID, r)
		}
	}
	e.wantCounts("g", 200, 0, 0, 0)
}

// A client that cached the config before the partitions grew enqueues an
// id that an up-to-date client already added at its new home: the stale
// client is refused by the shard's generation, reloads, and finds the
// duplicate (before, it added the id at its old home: two copies).
func TestStaleClientAfterGrowthFindsTheID(t *testing.T) {
	e := newEnv(t)
	e.create("s", Config{Partitions: 2})
	stale := NewClient(e.rdb, ClientOptions{Prefix: e.prefix, ConfigTTL: time.Hour})
	if _, err := stale.Enqueue(e.ctx, "s", Message{ID: "warm"}); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Registry().Update(e.ctx, "s", Config{Partitions: 8}); err != nil {
		t.Fatal(err)
	}
	x := idMovedBy("x", 2, 8)
	added := e.enqueue("s", Message{ID: x})
	if added.Duplicate || added.Shard.Partition != PartitionOf(x, 8) {
		t.Fatalf("fresh enqueue %+v", added)
	}
	r, err := stale.Enqueue(e.ctx, "s", Message{ID: x})
	if err != nil || !r.Duplicate || r.Shard != added.Shard {
		t.Fatalf("stale client's enqueue of %s = %+v, %v; want the duplicate in %s", x, r, err, added.Shard)
	}
	// Its pulls see the new partitions at once too.
	seen := map[int]bool{}
	for i := 0; i < 8; i++ {
		ds, err := stale.Pull(e.ctx, "s", 1, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			seen[d.Shard.Partition] = true
		}
	}
	if !seen[added.Shard.Partition] {
		t.Fatalf("the stale client's pulls never reached %s: %v", added.Shard, seen)
	}
	e.wantCounts("s", 0, 2, 0, 0)
}

// Producers with configs cached before the growth and producers reading it
// fresh enqueue the same ids concurrently while the partitions grow from 2
// to 8: every id is added exactly once, and no id is in two shards.
func TestGrowthWhileStaleClientsEnqueue(t *testing.T) {
	e := newEnv(t)
	e.create("c", Config{Partitions: 2})
	const n = 300
	all := ids("k", n)
	var clients []*Client
	for i := 0; i < 4; i++ {
		ttl := time.Millisecond
		if i%2 == 0 {
			ttl = time.Hour // cached before the growth, for the whole test
		}
		c := NewClient(e.rdb, ClientOptions{Prefix: e.prefix, ConfigTTL: ttl})
		if _, err := c.Enqueue(e.ctx, "c", Message{ID: fmt.Sprint("warm", i)}); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	var (
		mu    sync.Mutex
		adds  = map[string]int{}
		errs  []error
		wg    sync.WaitGroup
		ready sync.WaitGroup
		grown = make(chan struct{})
	)
	ready.Add(len(clients))
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			order := rand.New(rand.NewSource(int64(i))).Perm(n)
			for j, o := range order {
				if j == n/4 {
					ready.Done()
					if i%2 == 1 {
						<-grown // half the fresh ones go on only after it
					}
				}
				r, err := c.Enqueue(e.ctx, "c", Message{ID: all[o]})
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else if !r.Duplicate {
					adds[all[o]]++
				}
				mu.Unlock()
			}
		}()
	}
	ready.Wait()
	if err := e.c.Registry().Update(e.ctx, "c", Config{Partitions: 8}); err != nil {
		t.Fatal(err)
	}
	close(grown)
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
	for _, id := range all {
		if adds[id] != 1 {
			t.Errorf("%s added %d times", id, adds[id])
		}
	}
	e.wantCounts("c", int64(n+len(clients)), 0, 0, 0)
}

// The audit reports an id stored in two shards, and a shard set to a newer
// config than the published one; the client refuses to write under such a
// shard after about a second of reloads, and `queue update` repairs it.
func TestAuditFindsCrossShardDuplicatesAndUnfinishedUpdates(t *testing.T) {
	e := newEnv(t)
	e.create("a", Config{Partitions: 2})
	r := e.enqueue("a", Message{ID: "twice", Payload: []byte("p")})
	other := e.keys(Shard{"a", 1 - r.Shard.Partition})
	e.rdb.ZAdd(e.ctx, other.Ready, redisZ(1, "twice"))
	e.rdb.HSet(e.ctx, other.Body, "twice", "p")
	e.rdb.HSet(e.ctx, other.Meta, "twice", "1|0")
	a, err := e.c.Audit(e.ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if !hasProblem(a, fmt.Sprintf("twice is in shard %s (ready) and in shard a#%d (ready)", Shard{"a", 0}, 1)) {
		t.Fatalf("cross-shard duplicate not reported: %v", a.Problems)
	}

	// An update that set the shards and never published (it crashed).
	e.create("u", Config{Partitions: 2})
	g, err := e.rdb.Incr(e.ctx, generationKey(e.prefix)).Result()
	if err != nil {
		t.Fatal(err)
	}
	e.rdb.Set(e.ctx, e.keys(Shard{"u", 1}).Gen, g, 0)
	if a, _ := e.c.Audit(e.ctx, "u"); !hasProblem(a, fmt.Sprintf("u#1: set to config generation %d", g)) {
		t.Fatalf("unfinished update not reported: %v", a.Problems)
	}
	onOne := idMovedBy("y", 1, 2) // its home under 2 partitions is 1
	before := e.snapshot()
	start := time.Now()
	if _, err := e.c.Enqueue(e.ctx, "u", Message{ID: onOne}); !errors.Is(err, ErrStaleConfig) || !strings.Contains(err.Error(), "keeper queue update u") {
		t.Fatalf("enqueue under a shard ahead of the config = %v, want ErrStaleConfig", err)
	}
	t.Logf("refused after %s of reloads", time.Since(start).Round(time.Millisecond))
	e.sameAs(before)
	if err := e.c.Registry().Update(e.ctx, "u", Config{Partitions: 2}); err != nil {
		t.Fatal(err)
	}
	if r, err := e.c.Enqueue(e.ctx, "u", Message{ID: onOne}); err != nil || r.Shard.Partition != 1 {
		t.Fatalf("enqueue after the update ran again: %+v, %v", r, err)
	}
	assertConsistent(t, e, "u")

	// A shard ahead of the counter that mints generations (the counter was
	// reset) is repaired by an update as well.
	e.rdb.Set(e.ctx, e.keys(Shard{"u", 0}).Gen, 1_000_000, 0)
	if err := e.c.Registry().Update(e.ctx, "u", Config{Partitions: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Enqueue(e.ctx, "u", Message{ID: "z"}); err != nil {
		t.Fatalf("enqueue after the counter was moved past the shards: %v", err)
	}
	assertConsistent(t, e, "u")
}

func hasProblem(a Audit, want string) bool {
	for _, p := range a.Problems {
		if strings.Contains(p, want) {
			return true
		}
	}
	return false
}

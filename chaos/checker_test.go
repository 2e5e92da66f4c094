package chaos

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/queue"
	"github.com/redis/go-redis/v9"
)

// ranWorkload runs a workload on queue q (partitions) of a fresh
// redis-server until done holds, and stops it.
func ranWorkload(t *testing.T, partitions int, cfg WorkloadConfig, what string, done func(*Workload) bool) (*redis.Client, *Workload) {
	t.Helper()
	ctx := context.Background()
	srv := redisserver.StartTB(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	if err := queue.NewRegistry(rdb, "").Create(ctx, "q", queue.Config{Partitions: partitions}); err != nil {
		t.Fatal(err)
	}
	cfg.Queues = []string{"q"}
	w, err := StartWorkload(ctx, srv.Addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	poll.For(t, 20*time.Second, what, poll.Holds(func() bool { return done(w) }))
	w.Stop()
	return rdb, w
}

// The message checker finds a message that vanished without an ack, one
// acked but still there, and nothing when all is well; a write that got no
// reply, or that Redis acknowledged inside a failover window, may be lost.
func TestCheckMessagesFindsLoss(t *testing.T) {
	ctx := context.Background()
	rdb, w := ranWorkload(t, 2, WorkloadConfig{Rate: 400, Seed: 1, NackFrac: 0.01, AbandonFrac: 0.01},
		"some messages enqueued and acked", func(w *Workload) bool { return w.Enqueued.Load() > 50 && w.Acked.Load() > 20 })
	client := queue.NewClient(rdb, queue.ClientOptions{})
	check := func(failovers []window) MessageReport {
		t.Helper()
		r, err := checkMessages(ctx, client, []string{"q"}, w, failovers)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := check(nil); r.ProblemCnt != 0 {
		t.Fatalf("a clean run has problems: %v", r.Problems)
	}

	// Remove one ready message the way a half-applied script would: from
	// its set only. The consumers may have taken every message the
	// producers wrote, so enqueue one more now that nobody pulls, and
	// record it the way the workload records its own.
	victim := "victim-0"
	enqStart := time.Now().UnixMilli()
	if _, err := client.Enqueue(ctx, "q", queue.Message{ID: victim, Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	w.msgs[victim] = &msgRec{queue: 0, enq: succeeded, enqStart: enqStart, enqAt: time.Now().UnixMilli()}
	w.mu.Unlock()
	w.note(victim, "enqueued by the test")
	v := w.snapshot()
	s := queue.Shard{Queue: "q", Partition: queue.PartitionOf(victim, 2)}
	if n, err := rdb.ZRem(ctx, "keeper:{"+s.String()+"}:ready", victim).Result(); err != nil || n != 1 {
		t.Fatalf("remove the victim from ready: %d, %v", n, err)
	}
	r := check(nil)
	if !strings.Contains(strings.Join(r.Problems, "\n"), "1 messages lost") || !strings.Contains(strings.Join(r.Problems, "\n"), victim) {
		t.Fatalf("the removed %s is not reported lost: %v", victim, r.Problems)
	}
	if !strings.Contains(strings.Join(r.Problems, "\n"), "lost "+victim+" in q") ||
		!strings.Contains(strings.Join(r.Problems, "\n"), "enqueued by the test") {
		t.Fatalf("the lost %s comes without its trail: %v", victim, r.Problems)
	}
	// Inside a failover window its enqueue is uncertain: the id may be lost
	// with the old primary, but the audit still sees its orphaned body.
	rec := v.msgs[victim]
	r = check([]window{{from: rec.enqAt, to: rec.enqAt}})
	if strings.Contains(strings.Join(r.Problems, "\n"), "messages lost") {
		t.Fatalf("an enqueue acknowledged in a failover window is held to account: %v", r.Problems)
	}
	if r.UncertainEnqueues == 0 {
		t.Fatal("no uncertain enqueue counted")
	}
}

// A message whose TTL runs out while the checker audits expires between the
// check's start and its queue's read: that is an expiry, not a loss. (The
// checker once took its "now" before the audit and called such a message
// lost, in CI and in 2 of 3 chaos runs here.)
func TestCheckMessagesExpiryDuringAudit(t *testing.T) {
	ctx := context.Background()
	rdb, w := ranWorkload(t, 1, WorkloadConfig{Rate: 200, Seed: 2},
		"some messages enqueued", func(w *Workload) bool { return w.Enqueued.Load() > 10 })
	client := queue.NewClient(rdb, queue.ClientOptions{})

	const ttl = 500 * time.Millisecond
	victim := "short-lived"
	enqStart := time.Now().UnixMilli()
	if _, err := client.Enqueue(ctx, "q", queue.Message{ID: victim, Payload: []byte("x"), TTL: ttl}); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	w.msgs[victim] = &msgRec{queue: 0, enq: succeeded, enqStart: enqStart, enqAt: time.Now().UnixMilli(), ttl: ttl.Milliseconds()}
	w.mu.Unlock()

	// The TTL ends after the check began and before the queue is read; a
	// pull then drops the message as expired, as a keeper's pass would.
	beforeAudit = func(string) {
		poll.For(t, 10*time.Second, "the TTL passed", poll.Holds(func() bool {
			return time.Now().UnixMilli() > enqStart+ttl.Milliseconds()+5
		}))
		if _, err := client.Pull(ctx, "q", queue.MaxPull, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { beforeAudit = nil })
	r, err := checkMessages(ctx, client, []string{"q"}, w, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing else in q has a TTL: one expiry is the victim's.
	if r.Expired != 1 || r.ProblemCnt != 0 {
		t.Fatalf("expired %d, want the victim; problems %v", r.Expired, r.Problems)
	}
}

// The history replay flags a write accepted under a stale token, an equal
// token accepted from two keeper processes, and a keeper that tries after
// its successor started unless it was frozen.
func TestFenceCheck(t *testing.T) {
	e := func(ms, tok int64, ok bool, owner string) histEntry {
		return histEntry{ms: ms, token: tok, ok: ok, owner: owner, task: "unlock"}
	}
	h := &History{shards: []queue.Shard{{Queue: "q", Partition: 0}}, entries: [][]histEntry{{
		e(1, 10, true, "a/1"), e(2, 10, true, "a/1"),
		e(3, 20, true, "b/1"),  // b takes over
		e(4, 10, false, "a/1"), // a tries late: refused
		e(5, 20, true, "b/1"),
	}}}
	r := h.fenceCheck(nil, nil, time.UnixMilli(0))
	if len(r.Problems) != 0 || len(r.Late) != 1 || r.Accepted != 4 || r.Refused != 1 {
		t.Fatalf("late try: %+v", r)
	}
	if r := h.fenceCheck(map[int64]bool{10: true}, nil, time.UnixMilli(0)); len(r.Late) != 0 {
		t.Fatalf("a frozen keeper's refused try is reported late: %v", r.Late)
	}

	h.entries[0] = append(h.entries[0], e(6, 10, true, "a/1"))
	if r := h.fenceCheck(map[int64]bool{10: true}, nil, time.UnixMilli(0)); len(r.Problems) != 1 || !strings.Contains(r.Problems[0], "after token 20 had written") {
		t.Fatalf("stale write accepted: %v", r.Problems)
	}

	h.entries[0] = []histEntry{e(1, 30, true, "c/1"), e(2, 30, true, "d/1")}
	if r := h.fenceCheck(nil, nil, time.UnixMilli(0)); len(r.Problems) != 1 || !strings.Contains(r.Problems[0], "c/1") {
		t.Fatalf("equal token from two owners: %v", r.Problems)
	}

	h.entries[0] = []histEntry{e(1, 30, true, "c/1"), e(2, 40, false, "d/1")}
	if r := h.fenceCheck(nil, nil, time.UnixMilli(0)); len(r.Problems) != 1 || !strings.Contains(r.Problems[0], "no higher token") {
		t.Fatalf("a refusal with no higher token written: %v", r.Problems)
	}
}

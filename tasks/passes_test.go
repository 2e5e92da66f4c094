package tasks

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/queue"
)

// tripCounter records the passes of each round trip.
type tripCounter struct {
	queue.Layout
	mu    sync.Mutex
	trips [][]queue.PassRequest
}

func (c *tripCounter) Passes(ctx context.Context, reqs []queue.PassRequest) []queue.PassOutcome {
	c.mu.Lock()
	c.trips = append(c.trips, append([]queue.PassRequest(nil), reqs...))
	c.mu.Unlock()
	return c.Layout.Passes(ctx, reqs)
}

// unlockTrips are the round trips that carried unlock passes, and the most
// passes one trip carried.
func (c *tripCounter) unlockTrips() (trips, passes, most int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.trips {
		n := 0
		for _, r := range t {
			if r.Task == Unlock {
				n++
			}
		}
		if n > 0 {
			trips++
			passes += n
		}
		most = max(most, len(t))
	}
	return trips, passes, most
}

// Shards whose locks fall due in the same millisecond are unlocked in a few
// pipelined round trips, not one round trip per shard, and no round trip
// carries more than maxPipeline passes.
func TestPassesDueTogetherShareRoundTrips(t *testing.T) {
	h := newHarness(t, redisserver.Config{}, Config{})
	tc := &tripCounter{Layout: queue.NewNative(h.rdb, "")}
	k := New(tc, Config{})
	if err := k.Start(h.ctx); err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, k)
	const shards = 600
	cfg := queue.Config{Partitions: shards}
	if err := h.client.Registry().Create(h.ctx, "c", cfg); err != nil {
		t.Fatal(err)
	}
	now, err := h.layout.Now(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Due in the same millisecond, late enough for the keeper to have
	// probed every shard first (seeding sends no wake: only probes learn it).
	due := now.Add(3 * time.Second).UnixMilli()
	in := queue.NewInspector(h.rdb, "")
	all := make([]queue.Shard, shards)
	for p := range all {
		all[p] = queue.Shard{Queue: "c", Partition: p}
		if err := in.SeedLocked(h.ctx, all[p], "m", 0, 1, due, 0, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	k.SetConfig("c", cfg.WithDefaults())
	k.Own(all, 1)
	waitFor(t, 60*time.Second, "every lock returned", func() bool { return h.stats("c").Ready == shards })
	trips, passes, most := tc.unlockTrips()
	t.Logf("%d unlock passes in %d round trips; the largest trip carried %d passes", passes, trips, most)
	if most > maxPipeline {
		t.Fatalf("a round trip carried %d passes, more than %d", most, maxPipeline)
	}
	// One per worker, and a few more if a pass came early and ran again:
	// one round trip per pass would be 600.
	if trips > shards/10 {
		t.Fatalf("%d unlock passes went in %d round trips: not coalesced", passes, trips)
	}
}

// passesOn counts the passes sent for shard s.
func (c *tripCounter) passesOn(s queue.Shard) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.trips {
		for _, r := range t {
			if r.Shard == s {
				n++
			}
		}
	}
	return n
}

// lineCounter counts log lines containing a message.
type lineCounter struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineCounter) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.lines = append(l.lines, string(p))
	l.mu.Unlock()
	return len(p), nil
}

func (l *lineCounter) count(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if strings.Contains(line, substr) {
			n++
		}
	}
	return n
}

// A pass that finds its queue deleted (ErrUnknownQueue) is not retried:
// the shard's passes stop at once, with one log line, until the queue is
// created again. It used to be retried with backoff, 50 ms to 5 s, until
// the catalog dropped the queue.
func TestDeletedQueueStopsItsPassesAtOnce(t *testing.T) {
	h := newHarness(t, redisserver.Config{}, Config{})
	tc := &tripCounter{Layout: queue.NewNative(h.rdb, "")}
	logs := &lineCounter{}
	k := New(tc, Config{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err := k.Start(h.ctx); err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, k)
	for _, q := range []string{"gone", "live"} {
		if err := h.client.Registry().Create(h.ctx, q, queue.Config{}); err != nil {
			t.Fatal(err)
		}
		own(k, queue.Shard{Queue: q}, queue.Config{}.WithDefaults(), 1)
	}
	gone := queue.Shard{Queue: "gone"}
	waitFor(t, 10*time.Second, "both shards claimed", func() bool {
		k.mu.Lock()
		defer k.mu.Unlock()
		return k.shards[gone].claimed && k.shards[queue.Shard{Queue: "live"}].claimed
	})
	if err := h.client.Registry().Delete(h.ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	before := tc.passesOn(gone)
	k.mu.Lock()
	k.heap.schedule(k.shards[gone], Unlock, monoNow())
	k.mu.Unlock()
	k.signal(k.kick)
	waitFor(t, 10*time.Second, "the deleted queue's pass refused", func() bool { return tc.passesOn(gone) > before })
	// A witness: a lock of another queue returned 1.5 s later. By then a
	// retry with backoff would have run the deleted shard's pass again at
	// least four times.
	if _, err := h.client.Enqueue(h.ctx, "live", queue.Message{ID: "w", Delay: 1500 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the witness unlocked", func() bool { return h.stats("live").Ready == 1 })
	if n := tc.passesOn(gone) - before; n != 1 {
		t.Fatalf("%d passes on the deleted queue's shard, want 1", n)
	}
	if n := logs.count("queue deleted"); n != 1 {
		t.Fatalf("%d log lines about the deleted queue, want 1:\n%s", n, strings.Join(logs.lines, ""))
	}

	// Created again and written to: the wake makes the keeper probe the
	// shard, find it live, and housekeep it again.
	if err := h.client.Registry().Create(h.ctx, "gone", queue.Config{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.Enqueue(h.ctx, "gone", queue.Message{ID: "x", Delay: 100 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the queue created again is housekept", func() bool { return h.stats("gone").Ready == 1 })
}

package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/queue"
	"github.com/redis/go-redis/v9"
)

// A takeover is timed at the write that raised the last fence above its
// token, as heard: not at a later read, and not counting a shard whose
// fence was never raised.
func TestFenceWatchTimesTheLastWrite(t *testing.T) {
	ctx := context.Background()
	srv := redisserver.StartTB(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	in := queue.NewInspector(rdb, "fw")
	shards := []queue.Shard{{Queue: "a", Partition: 0}, {Queue: "a", Partition: 1}, {Queue: "b", Partition: 0}}
	tokens := map[string]int64{}
	for _, s := range shards {
		tokens[s.String()] = 5
		if err := rdb.Set(ctx, in.FenceKey(s), 5, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	w, err := watchFences(ctx, rdb, in)
	if err != nil {
		t.Fatal(err)
	}
	start := w.start()
	for _, s := range shards[:2] {
		if err := rdb.Set(ctx, in.FenceKey(s), 6, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.waitAbove(ctx, tokens, 1500*time.Millisecond); err == nil || !strings.Contains(err.Error(), "1 shards") {
		t.Fatalf("waitAbove with a fence never raised: %v", err)
	}
	before := time.Now()
	if err := rdb.Set(ctx, in.FenceKey(shards[2]), 7, 0).Err(); err != nil {
		t.Fatal(err)
	}
	last, err := w.waitAbove(ctx, tokens, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	heard, ok := w.first[in.FenceKey(shards[2])]
	w.mu.Unlock()
	// The write came between before and the read that confirmed it; last
	// is when it was heard, or that read when it came first.
	if !ok || last.After(heard) || last.Before(before) {
		t.Fatalf("last write at %s after start; the write to %s was sent at %s and heard at %s (%v)",
			last.Sub(start), shards[2], before.Sub(start), heard.Sub(start), ok)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if v, _ := rdb.ConfigGet(ctx, "notify-keyspace-events").Result(); v["notify-keyspace-events"] != "" {
		t.Fatalf("notify-keyspace-events left at %q", v["notify-keyspace-events"])
	}
}

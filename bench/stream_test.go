package bench

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/queue"
	"github.com/redis/go-redis/v9"
)

// A stream seeded with every unlock time already past (as if seeding had
// taken longer than the whole stream) is rotated ahead of Redis's clock:
// every message is still locked, once, at the time the stream says, none
// before the lead, and the unlock times still follow each other at the rate.
func TestLockStreamRotatesWhatCameDueWhileSeeding(t *testing.T) {
	ctx := context.Background()
	srv := redisserver.StartConfigTB(t, redisserver.Config{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	c := queue.NewClient(rdb, queue.ClientOptions{})
	// One queue per shard: ids repeat across shards, and Inspect looks a
	// message up by queue and id.
	var shards []queue.Shard
	for q := range 3 {
		name := fmt.Sprintf("s%d", q)
		if err := c.Registry().Create(ctx, name, queue.Config{}); err != nil {
			t.Fatal(err)
		}
		shards = append(shards, queue.Shard{Queue: name})
	}
	now, err := redisNow(ctx, rdb)
	if err != nil {
		t.Fatal(err)
	}
	const total, rate = 600, 1000 // a stream of 600 ms
	st, err := newLockStream(ctx, rdb, shards, total, rate, now.Add(-1500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	lead := 2 * time.Second
	first, err := st.rotate(ctx, lead)
	if err != nil {
		t.Fatal(err)
	}
	if first < now.Add(lead).UnixMilli() {
		t.Fatalf("first unlock %d is before the lead from the start of the rotation %d", first, now.Add(lead).UnixMilli())
	}
	var dues []int64
	for p, sh := range shards {
		for j := 0; j < st.per; j++ {
			info, err := c.Inspect(ctx, sh.Queue, fmt.Sprintf("m%d", j))
			if err != nil {
				t.Fatal(err)
			}
			if info.State != queue.StateLocked || int64(info.Score) != st.due(p, j) {
				t.Fatalf("%s m%d: %s at %v, want locked at %d", sh, j, info.State, info.Score, st.due(p, j))
			}
			dues = append(dues, st.due(p, j))
		}
	}
	if len(dues) != total {
		t.Fatalf("%d messages, want %d", len(dues), total)
	}
	slices.Sort(dues)
	for i := 1; i < len(dues); i++ {
		if gap := dues[i] - dues[i-1]; gap > 2 {
			t.Fatalf("unlocks %d and %d are %d ms apart; the stream is one per ms", i-1, i, gap)
		}
	}
	if span := dues[len(dues)-1] - dues[0]; span > 602 {
		t.Fatalf("the stream spans %d ms, want about 600", span)
	}
}

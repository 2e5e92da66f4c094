package queue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Inspector reads and writes a native layout's keys behind the scripts'
// backs: recorded history, fences, bulk seeding, wake channel names. It is
// for tests, benchmarks and the chaos checker; a keeper never uses it.
type Inspector struct {
	rdb    redis.UniversalClient
	prefix string
}

// NewInspector returns an inspector of the native layout under prefix
// (DefaultPrefix when empty).
func NewInspector(rdb redis.UniversalClient, prefix string) *Inspector {
	prefix = cmp.Or(prefix, DefaultPrefix)
	return &Inspector{rdb: rdb, prefix: prefix}
}

// SeedLocked writes count locked messages into s: ids idPrefix+index for
// index in [first, first+count), message i unlocking at firstDueMs + i*step
// (Redis ms). It bypasses the wake channel on purpose: the keeper under
// test must learn of them by probing.
func (in *Inspector) SeedLocked(ctx context.Context, s Shard, idPrefix string, first, count int, firstDueMs int64, step time.Duration, payload []byte) error {
	k := keysFor(in.prefix, s)
	for done := 0; done < count; done += maxSeed {
		c := min(maxSeed, count-done)
		err := seedScript.on(k, idPrefix, first+done, c, firstDueMs, step.Microseconds(), payload).run(ctx, in.rdb).Err()
		if err != nil {
			return fmt.Errorf("seed %s: %w", s, asError(err, s, 0))
		}
	}
	return nil
}

// HistoryEntry is one recorded housekeeping pass.
type HistoryEntry struct {
	ID       string // stream id: Redis ms time and sequence
	Task     string // a Task's name, or "claim"
	Token    int64
	Owner    string // the identity that presented Token (see Native.WithOwner)
	Accepted bool
	Moved    int
}

// History reads a shard's recorded passes, oldest first (see
// Native.WithHistory).
func (in *Inspector) History(ctx context.Context, s Shard) ([]HistoryEntry, error) {
	msgs, err := in.rdb.XRange(ctx, keysFor(in.prefix, s).History, "-", "+").Result()
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", s, err)
	}
	return ParseHistory(msgs), nil
}

// HistoryKey is the stream that s's passes are recorded in (see
// Native.WithHistory), for a checker that follows it while it grows.
func (in *Inspector) HistoryKey(s Shard) string { return keysFor(in.prefix, s).History }

// ParseHistory reads entries of a history stream, as XRANGE returns them.
func ParseHistory(msgs []redis.XMessage) []HistoryEntry {
	out := make([]HistoryEntry, 0, len(msgs))
	for _, m := range msgs {
		e := HistoryEntry{ID: m.ID, Task: fmt.Sprint(m.Values["task"]), Accepted: fmt.Sprint(m.Values["ok"]) == "1"}
		if o, ok := m.Values["owner"].(string); ok {
			e.Owner = o
		}
		e.Token, _ = strconv.ParseInt(fmt.Sprint(m.Values["token"]), 10, 64)
		e.Moved, _ = strconv.Atoi(fmt.Sprint(m.Values["moved"]))
		out = append(out, e)
	}
	return out
}

// FenceKey is the key of s's fence, for a tool that hears of its writes
// (keyspace notifications) instead of reading it again and again.
func (in *Inspector) FenceKey(s Shard) string { return shardFenceKey(in.prefix, s) }

// Fences reads the fence (highest accepted ownership token) of each shard.
func (in *Inspector) Fences(ctx context.Context, shards []Shard) ([]int64, error) {
	out := make([]int64, len(shards))
	err := readPerShard(ctx, in.rdb, shards, "fences",
		func(p redis.Pipeliner, s Shard) *redis.StringCmd { return p.Get(ctx, shardFenceKey(in.prefix, s)) },
		func(i int, c *redis.StringCmd) { out[i], _ = strconv.ParseInt(c.Val(), 10, 64) })
	return out, err
}

// LockedHeads reads each shard's earliest lock (Redis ms; -1 when it holds
// none): how far behind its locks a fleet is.
func (in *Inspector) LockedHeads(ctx context.Context, shards []Shard) ([]int64, error) {
	out := make([]int64, len(shards))
	err := readPerShard(ctx, in.rdb, shards, "locked heads",
		func(p redis.Pipeliner, s Shard) *redis.ZSliceCmd {
			return p.ZRangeWithScores(ctx, keysFor(in.prefix, s).Locked, 0, 0)
		},
		func(i int, c *redis.ZSliceCmd) {
			out[i] = -1
			if z := c.Val(); len(z) > 0 {
				out[i] = int64(z[0].Score)
			}
		})
	return out, err
}

// shardsPerRoundTrip bounds the shards readPerShard reads in one pipeline:
// the reply of one pipeline of 35,000 GETs, read while Redis was busy with
// a takeover, outlasted a client's 3 s read timeout.
const shardsPerRoundTrip = 1000

// roundTripsAtOnce is how many of those pipelines readPerShard has in
// flight. Redis serves its clients in turns of at most 16 KB of requests
// each, so a busy Redis takes a 1,000-GET pipeline in several turns: one at
// a time, reading 35,730 fences during a takeover took 4–7 s, longer than
// the takeover the benchmark timed with them.
const roundTripsAtOnce = 8

// readPerShard sends one command per shard, pipelined, and hands each reply
// to keep with the shard's index (from several goroutines at once: keep
// writes its index only).
func readPerShard[C redis.Cmder](ctx context.Context, rdb redis.UniversalClient, shards []Shard, what string,
	send func(redis.Pipeliner, Shard) C, keep func(int, C)) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, roundTripsAtOnce)
	)
	for lo := 0; lo < len(shards); lo += shardsPerRoundTrip {
		part := shards[lo:min(lo+shardsPerRoundTrip, len(shards))]
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			cmds := make([]C, len(part))
			_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for i, s := range part {
					cmds[i] = send(p, s)
				}
				return nil
			})
			if err != nil && !errors.Is(err, redis.Nil) {
				mu.Lock()
				errs = append(errs, fmt.Errorf("read %s: %w", what, err))
				mu.Unlock()
				return
			}
			for i, c := range cmds {
				keep(lo+i, c)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// WakeChannel is the pub/sub channel of s's deadline hints.
func (in *Inspector) WakeChannel(s Shard) string { return keysFor(in.prefix, s).Wake }

package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/progress"
	"github.com/keeperhq/keeper/queue"
	"github.com/keeperhq/keeper/tasks"
	"github.com/redis/go-redis/v9"
)

// DrainOptions configures the drain scenario. Zero values take defaults.
type DrainOptions struct {
	Redis  string // address; empty starts a private redis-server
	Msgs   int    // expired locks preloaded; default 1,000,000
	Shards int    // default 16
	Batch  int    // per pass; default the keeper's (1000)
	// Workers is the keeper's pass concurrency; default the keeper's.
	Workers int
}

// DrainResult is one line of `keeper bench drain --json`.
type DrainResult struct {
	Scenario       string  `json:"scenario"`
	Msgs           int     `json:"msgs"`
	Shards         int     `json:"shards"`
	KeeperMsgsPerS float64 `json:"keeper_msgs_per_s"`
	RawMsgsPerS    float64 `json:"raw_msgs_per_s"`
	Ratio          float64 `json:"ratio"`
}

// Drain preloads Msgs expired locks over Shards shards twice: once drained
// by the unlock script called back-to-back with no scheduler (raw), once by
// a keeper that owns the shards and learns of them by probing. Both in the
// same run, against the same server.
func Drain(ctx context.Context, o DrainOptions) (DrainResult, error) {
	if o.Msgs <= 0 {
		o.Msgs = 1_000_000
	}
	if o.Shards <= 0 {
		o.Shards = 16
	}
	if o.Batch <= 0 {
		o.Batch = 1000
	}
	rdb, stop, err := redisFor(ctx, o.Redis)
	if err != nil {
		return DrainResult{}, err
	}
	defer stop()
	res := DrainResult{Scenario: "drain", Msgs: o.Msgs, Shards: o.Shards}

	raw, err := drainOnce(ctx, rdb, "bench-drain-raw", o, func(n *queue.Native, shards []queue.Shard) error {
		return rawDrain(ctx, n, shards, o.Batch)
	})
	if err != nil {
		return res, fmt.Errorf("raw drain: %w", err)
	}
	kept, err := drainOnce(ctx, rdb, "bench-drain-keeper", o, func(n *queue.Native, shards []queue.Shard) error {
		return keeperDrain(ctx, n, shards, map[string]queue.Config{shards[0].Queue: queue.Config{Partitions: len(shards)}.WithDefaults()}, o)
	})
	if err != nil {
		return res, fmt.Errorf("keeper drain: %w", err)
	}
	res.RawMsgsPerS = round(float64(o.Msgs)/raw.Seconds(), 0)
	res.KeeperMsgsPerS = round(float64(o.Msgs)/kept.Seconds(), 0)
	res.Ratio = round(res.KeeperMsgsPerS/res.RawMsgsPerS, 3)
	return res, nil
}

// rawDrain runs unlock passes on each shard back-to-back until none moves
// anything.
func rawDrain(ctx context.Context, l queue.Layout, shards []queue.Shard, batch int) error {
	for _, s := range shards {
		progress.From(ctx).Add(1)
		for {
			r := l.Passes(ctx, []queue.PassRequest{{Shard: s, Task: queue.TaskUnlock, Token: 1, Batch: batch}})[0]
			if r.Err != nil {
				return r.Err
			}
			if r.Result.Moved == 0 {
				break
			}
		}
	}
	return nil
}

// keeperDrain has a keeper on l own the shards (of the queues cfgs) and
// waits until none holds a locked message.
func keeperDrain(ctx context.Context, l queue.Layout, shards []queue.Shard, cfgs map[string]queue.Config, o DrainOptions) error {
	k := tasks.New(l, tasks.Config{Batch: o.Batch, Workers: o.Workers})
	if err := k.Start(ctx); err != nil {
		return err
	}
	defer func() { _ = k.Stop(context.WithoutCancel(ctx)) }()
	k.SetConfigs(cfgs)
	k.Own(shards, 1)
	var probeErr error
	_, err := poll.Until(ctx, 5*time.Millisecond, func() (bool, string) {
		left, err := lockedLeft(ctx, l, shards)
		if err != nil {
			probeErr = err // retrying cannot help a refused probe: stop
			return true, ""
		}
		progress.From(ctx).Set(int64(len(shards)) - left)
		return left == 0, fmt.Sprintf("%d shards still hold locked messages", left)
	})
	return errors.Join(err, probeErr)
}

// drainOnce seeds a fresh queue, runs drain and times it.
func drainOnce(ctx context.Context, rdb *redis.Client, name string, o DrainOptions,
	drain func(*queue.Native, []queue.Shard) error) (time.Duration, error) {
	reg := queue.NewRegistry(rdb, "")
	_ = reg.Delete(ctx, name)
	if err := reg.Create(ctx, name, queue.Config{Partitions: o.Shards}); err != nil {
		return 0, err
	}
	defer func() { _ = reg.Delete(ctx, name) }()
	n := queue.NewNative(rdb, "")
	now, err := n.Now(ctx)
	if err != nil {
		return 0, err
	}
	shards := make([]queue.Shard, o.Shards)
	per := o.Msgs / o.Shards
	pr := progress.From(ctx)
	pr.Phase(name+": seeding", int64(o.Msgs), "locks")
	for i := range shards {
		shards[i] = queue.Shard{Queue: name, Partition: i}
		count := per
		if i == 0 {
			count += o.Msgs - per*o.Shards
		}
		// Already due: unlock times one hour in the past.
		if err := queue.NewInspector(rdb, "").SeedLocked(ctx, shards[i], "m", 0, count, now.Add(-time.Hour).UnixMilli(), 0, []byte("x")); err != nil {
			return 0, err
		}
		pr.Add(int64(count))
	}
	pr.Phase(name+": draining", int64(o.Shards), "shards")
	start := time.Now()
	if err := drain(n, shards); err != nil {
		return 0, err
	}
	took := time.Since(start)
	if left, err := lockedLeft(ctx, n, shards); err != nil || left != 0 {
		return 0, fmt.Errorf("%d shards still hold due locks after the drain (%v)", left, err)
	}
	return took, nil
}

// lockedLeft counts the shards that still hold locked messages.
func lockedLeft(ctx context.Context, n queue.Layout, shards []queue.Shard) (int64, error) {
	reqs := make([]queue.ProbeRequest, len(shards))
	for i, s := range shards {
		reqs[i] = queue.ProbeRequest{Shard: s}
	}
	res, err := n.Probe(ctx, reqs)
	if err != nil {
		return 0, err
	}
	var left int64
	for _, r := range res {
		if r.Err != nil {
			return 0, r.Err
		}
		if r.LockedHead >= 0 {
			left++
		}
	}
	return left, nil
}

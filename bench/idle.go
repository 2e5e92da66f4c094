package bench

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/queue"
	"github.com/keeperhq/keeper/tasks"
	"github.com/redis/go-redis/v9"
)

// IdleOptions configures the idle scenario.
type IdleOptions struct {
	Redis  string        // address; empty starts a private redis-server
	Shards int           // default 10,000 (100 queues of 100 partitions)
	Window time.Duration // measuring window after settling; default 30s
	// Keeper is the keeper's config; zero values are the daemon's defaults.
	Keeper tasks.Config
}

// IdleResult is one line of `keeper bench idle --json`.
type IdleResult struct {
	Scenario      string  `json:"scenario"`
	Shards        int     `json:"shards"`
	WindowS       float64 `json:"window_s"`
	RedisCmdsPerS float64 `json:"redis_cmds_per_s"`
	KeeperCPUFrac float64 `json:"keeper_cpu_frac"`
}

// Idle has a keeper own Shards shards that each hold one lock due in an hour
// (nothing due), lets it settle (every shard probed and measured once), then
// measures over Window what it costs Redis (INFO commandstats calls, minus
// the bench's own two INFO calls) and this process (user+system CPU time
// over wall time, as a fraction of one core). The keeper runs in this
// process; metric collection is included as a read of every measurement
// once per measure interval.
func Idle(ctx context.Context, o IdleOptions) (IdleResult, error) {
	if o.Shards <= 0 {
		o.Shards = 10_000
	}
	if o.Window <= 0 {
		o.Window = 30 * time.Second
	}
	rdb, stop, err := redisFor(ctx, o.Redis)
	if err != nil {
		return IdleResult{}, err
	}
	defer stop()
	n := queue.NewNative(rdb, "")
	now, err := n.Now(ctx)
	if err != nil {
		return IdleResult{}, err
	}
	shards, cfgs, drop, err := benchQueues(ctx, rdb, "bench-idle", o.Shards, 100)
	if err != nil {
		return IdleResult{}, err
	}
	defer drop()
	for _, s := range shards {
		if err := queue.NewInspector(rdb, "").SeedLocked(ctx, s, "m", 0, 1, now.Add(time.Hour).UnixMilli(), 0, []byte("x")); err != nil {
			return IdleResult{}, err
		}
	}
	k := tasks.New(n, o.Keeper)
	if err := k.Start(ctx); err != nil {
		return IdleResult{}, err
	}
	defer func() { _ = k.Stop(context.WithoutCancel(ctx)) }()
	k.SetConfigs(cfgs)
	k.Own(shards, 1)
	return idleMeasure(ctx, rdb, k, len(shards), o.Window, 0, nil)
}

// idleMeasure waits until the keeper k measured all its n shards, then
// measures over window what Redis (INFO commandstats calls, minus the
// bench's own two INFO calls) and this process (user+system CPU time over
// wall time, as a fraction of one core) spend, reading every measurement
// once per 10s as metric collection does, and calling also every period
// (when set).
func idleMeasure(ctx context.Context, rdb *redis.Client, k *tasks.Keeper, n int, window, period time.Duration,
	also func() error) (IdleResult, error) {
	measured := func() int {
		c := 0
		k.EachMeasurement(func(tasks.ShardMeasurement) { c++ })
		return c
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := poll.Until(sctx, 100*time.Millisecond, poll.Holds(func() bool { return measured() == n })); err != nil {
		return IdleResult{}, fmt.Errorf("settling: %d of %d shards measured: %w", measured(), n, err)
	}
	cmds0, err := commandCalls(ctx, rdb)
	if err != nil {
		return IdleResult{}, err
	}
	cpu0, wall0 := cpuTime(), time.Now()
	collect := time.NewTicker(10 * time.Second)
	defer collect.Stop()
	var tick <-chan time.Time
	if also != nil {
		t := time.NewTicker(period)
		defer t.Stop()
		tick = t.C
	}
	end := time.After(window)
	for done := false; !done; {
		select {
		case <-ctx.Done():
			return IdleResult{}, ctx.Err()
		case <-collect.C:
			measured()
		case <-tick:
			if err := also(); err != nil {
				return IdleResult{}, err
			}
		case <-end:
			done = true
		}
	}
	cpu1, wall1 := cpuTime(), time.Now()
	cmds1, err := commandCalls(ctx, rdb)
	if err != nil {
		return IdleResult{}, err
	}
	wall := wall1.Sub(wall0).Seconds()
	return IdleResult{Scenario: "idle", Shards: n, WindowS: round(wall, 1),
		RedisCmdsPerS: round(float64(cmds1-cmds0-1)/wall, 1),
		KeeperCPUFrac: round((cpu1-cpu0).Seconds()/wall, 4)}, nil
}

// cpuTime is this process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

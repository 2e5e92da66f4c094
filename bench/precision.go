package bench

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/queue"
	"github.com/keeperhq/keeper/tasks"
)

// PrecisionOptions configures the precision scenario.
type PrecisionOptions struct {
	Redis  string // address; empty starts a private redis-server
	Locked int    // messages locked; default 1,000,000
	Rate   int    // unlocks per second; default 20,000
	Shards int    // default 1
	// Lead is the time between the end of seeding and the first unlock,
	// for the keeper to start and probe its shards; default 3s. However
	// long seeding takes, the stream starts this long after it ended.
	Lead time.Duration
	// Keeper is the keeper's config; zero values are the daemon's defaults.
	Keeper tasks.Config
}

// PrecisionResult is one line of `keeper bench precision --json`.
type PrecisionResult struct {
	Scenario string  `json:"scenario"`
	Locked   int     `json:"locked"`
	Rate     int     `json:"rate"`
	Shards   int     `json:"shards"`
	LagP50   float64 `json:"lag_p50_ms"`
	LagP99   float64 `json:"lag_p99_ms"`
	LagMax   float64 `json:"lag_max_ms"`
	// ShardsOverP99 counts the shards with a lag above LagP99: every shard
	// when the keeper (or the machine) fell behind as a whole, a few when
	// a few shards were left behind.
	ShardsOverP99 int `json:"shards_over_p99"`
	// HostStallMaxMs is the longest time, from the keeper's start to the
	// last unlock, that this process ran nothing (a 100 ms ticker fired
	// that much late; 0 when never by more than 100 ms): a machine that
	// stops every process for a while shows here, and a lag tail about as
	// long as it is the machine's, not the keeper's.
	HostStallMaxMs float64 `json:"host_stall_max_ms"`
	// HostStealPct is the share of the machine's processors the
	// hypervisor gave to other guests over the same time (-1: unknown):
	// a machine slowed evenly, which no stall shows.
	HostStealPct float64 `json:"host_steal_pct"`
	// HostCalibMs is how long a fixed piece of CPU work took, the slower of
	// a run before the keeper started and one after the last unlock
	// (stall.Calibrate): 9–10 ms in this machine's fast state, more when
	// the machine runs everything slower (which no steal shows).
	HostCalibMs float64 `json:"host_calib_ms"`
	// SeedS is how long seeding took; the stream started Lead after it.
	SeedS float64 `json:"seed_s"`
	// Passes and RoundTrips are what the keeper sent, from its start to
	// the last unlock (probes aside); KeeperCPUS and RedisCPUS the CPU time
	// (user+system) this process (the keeper, and the bench's recorder)
	// and redis-server used meanwhile: the cost of the same work, however
	// loaded the machine was.
	Passes     int64   `json:"passes"`
	RoundTrips int64   `json:"round_trips"`
	KeeperCPUS float64 `json:"keeper_cpu_s"`
	RedisCPUS  float64 `json:"redis_cpu_s"`
}

// Precision locks Locked messages whose unlock times follow each other at a
// steady Rate over Shards shards (message i in shard i mod Shards; queues
// of at most 1,000 partitions), lets a
// keeper return them, and reports the lag of each: moved time minus unlock
// time, both by Redis TIME (measured inside the unlock script). The stream
// starts Lead after seeding ended, however long seeding took (see
// lockStream), so the result does not depend on how fast the machine seeds.
func Precision(ctx context.Context, o PrecisionOptions) (PrecisionResult, error) {
	if o.Locked <= 0 {
		o.Locked = 1_000_000
	}
	if o.Rate <= 0 {
		o.Rate = 20_000
	}
	if o.Shards <= 0 {
		o.Shards = 1
	}
	if o.Lead <= 0 {
		o.Lead = 3 * time.Second
	}
	rdb, stop, err := redisFor(ctx, o.Redis)
	if err != nil {
		return PrecisionResult{}, err
	}
	defer stop()
	shards, cfgs, drop, err := benchQueues(ctx, rdb, "bench-precision", o.Shards, 1000)
	if err != nil {
		return PrecisionResult{}, err
	}
	defer drop()
	seedStart := time.Now()
	now, err := redisNow(ctx, rdb)
	if err != nil {
		return PrecisionResult{}, err
	}
	stream, err := newLockStream(ctx, rdb, shards, o.Locked, o.Rate, now.Add(o.Lead))
	if err != nil {
		return PrecisionResult{}, err
	}
	if _, err := stream.rotate(ctx, o.Lead); err != nil {
		return PrecisionResult{}, err
	}
	seeded := time.Since(seedStart)
	total := stream.count()

	rec := &lagRecorder{lags: make([]time.Duration, 0, total)}
	kcfg := o.Keeper
	kcfg.Recorder = rec
	layout := &tripCounter{Layout: queue.NewNative(rdb, "")}
	cpu0 := cpuTime()
	redis0, err := redisCPU(ctx, rdb)
	if err != nil {
		return PrecisionResult{}, err
	}
	host := watchHost(ctx)
	defer host.stop()
	started := host.mark()
	k := tasks.New(layout, kcfg)
	if err := k.Start(ctx); err != nil {
		return PrecisionResult{}, err
	}
	defer func() { _ = k.Stop(context.WithoutCancel(ctx)) }()
	k.SetConfigs(cfgs)
	k.Own(shards, 1)
	wait := o.Lead + time.Duration(total)*time.Second/time.Duration(o.Rate) + time.Minute
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if _, err := poll.Until(wctx, 100*time.Millisecond, poll.Holds(func() bool { return rec.count() >= total })); err != nil {
		return PrecisionResult{}, fmt.Errorf("%d of %d unlocked: %w", rec.count(), total, err)
	}
	cpu1 := cpuTime()
	redis1, err := redisCPU(ctx, rdb)
	if err != nil {
		return PrecisionResult{}, err
	}
	hf := host.between(started, host.mark())
	lags := rec.sorted()
	return PrecisionResult{Scenario: "precision", Locked: total, Rate: o.Rate, Shards: o.Shards,
		LagP50: pctMs(lags, 0.50), LagP99: pctMs(lags, 0.99), LagMax: pctMs(lags, 1), ShardsOverP99: rec.shardsAbove(pct(lags, 0.99)),
		HostStallMaxMs: hf.stallMs, HostStealPct: hf.stealPct, HostCalibMs: hf.calibMs,
		SeedS: round(seeded.Seconds(), 1), Passes: layout.passes.Load(), RoundTrips: layout.trips.Load(),
		KeeperCPUS: round((cpu1 - cpu0).Seconds(), 2), RedisCPUS: round(redis1-redis0, 2)}, nil
}

// tripCounter counts the round trips (Passes calls) and passes a keeper
// sends through it.
type tripCounter struct {
	queue.Layout
	trips, passes atomic.Int64
}

func (c *tripCounter) Passes(ctx context.Context, reqs []queue.PassRequest) []queue.PassOutcome {
	c.trips.Add(1)
	c.passes.Add(int64(len(reqs)))
	return c.Layout.Passes(ctx, reqs)
}

// pct is the q-quantile of sorted lags.
func pct(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(q*float64(len(sorted)-1))]
}

// pctMs is pct in ms.
func pctMs(sorted []time.Duration, q float64) float64 {
	return round(float64(pct(sorted, q))/float64(time.Millisecond), 3)
}

// lagRecorder keeps every unlock lag, and each shard's largest; the rest of
// tasks.Recorder is unused.
type lagRecorder struct {
	mu    sync.Mutex
	lags  []time.Duration
	worst map[string]time.Duration // shard -> its largest lag
}

func (r *lagRecorder) RecordUnlockLag(_ context.Context, _, shard string, lag time.Duration) {
	r.mu.Lock()
	r.lags = append(r.lags, lag)
	if r.worst == nil {
		r.worst = map[string]time.Duration{}
	}
	r.worst[shard] = max(r.worst[shard], lag)
	r.mu.Unlock()
}

// shardsAbove counts the shards with a lag above d.
func (r *lagRecorder) shardsAbove(d time.Duration) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, w := range r.worst {
		if w > d {
			n++
		}
	}
	return n
}
func (r *lagRecorder) RecordPass(context.Context, string, time.Duration, error) {}
func (r *lagRecorder) RecordError(context.Context, string)                      {}
func (r *lagRecorder) RecordFenceRefusal(context.Context, string, string)       {}

func (r *lagRecorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.lags)
}

func (r *lagRecorder) sorted() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := slices.Clone(r.lags)
	slices.Sort(out)
	return out
}

var _ tasks.Recorder = (*lagRecorder)(nil)

package bench

import (
	"context"
	"fmt"
	"slices"
	"sync"
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
	Shards int    // default 1: one shard is the hardest case
	// Lead is the time between the start of seeding and the first unlock;
	// default 10s (seeding a million messages takes a few seconds).
	Lead time.Duration
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
}

// Precision locks Locked messages whose unlock times follow each other at a
// steady Rate, lets a keeper return them, and reports the lag of each: moved
// time minus unlock time, both by Redis TIME (measured inside the unlock
// script).
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
		o.Lead = 10 * time.Second
	}
	rdb, stop, err := redisFor(ctx, o.Redis)
	if err != nil {
		return PrecisionResult{}, err
	}
	defer stop()
	const name = "bench-precision"
	reg := queue.NewRegistry(rdb, "")
	_ = reg.Delete(ctx, name)
	if err := reg.Create(ctx, name, queue.Config{Partitions: o.Shards}); err != nil {
		return PrecisionResult{}, err
	}
	defer func() { _ = reg.Delete(ctx, name) }()
	n := queue.NewNative(rdb, "")
	now, err := n.Now(ctx)
	if err != nil {
		return PrecisionResult{}, err
	}
	t0 := now.Add(o.Lead)
	// Message i unlocks at t0 + i/Rate; shards take every o.Shards-th one,
	// so the whole stream keeps the rate.
	step := time.Second / time.Duration(o.Rate)
	per := o.Locked / o.Shards
	for p := 0; p < o.Shards; p++ {
		first := t0.Add(time.Duration(p) * step)
		err := queue.NewInspector(rdb, "").SeedLocked(ctx, queue.Shard{Queue: name, Partition: p}, "m", 0, per, first.UnixMilli(),
			step*time.Duration(o.Shards), []byte("x"))
		if err != nil {
			return PrecisionResult{}, err
		}
	}
	total := per * o.Shards
	if seeded, _ := n.Now(ctx); !seeded.Before(t0.Add(-time.Second)) {
		return PrecisionResult{}, fmt.Errorf("seeding took longer than the lead of %s; raise it", o.Lead)
	}

	rec := &lagRecorder{lags: make([]time.Duration, 0, total)}
	k := tasks.New(n, tasks.Config{Recorder: rec})
	if err := k.Start(ctx); err != nil {
		return PrecisionResult{}, err
	}
	defer func() { _ = k.Stop(context.WithoutCancel(ctx)) }()
	k.SetConfig(name, queue.Config{Partitions: o.Shards}.WithDefaults())
	shards := make([]queue.Shard, o.Shards)
	for p := range shards {
		shards[p] = queue.Shard{Queue: name, Partition: p}
	}
	k.Own(shards, 1)
	wait := o.Lead + time.Duration(total)*step + time.Minute
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if _, err := poll.Until(wctx, 100*time.Millisecond, poll.Holds(func() bool { return rec.count() >= total })); err != nil {
		return PrecisionResult{}, fmt.Errorf("%d of %d unlocked: %w", rec.count(), total, err)
	}
	lags := rec.sorted()
	pct := func(q float64) float64 {
		return round(float64(lags[int(q*float64(len(lags)-1))])/float64(time.Millisecond), 3)
	}
	return PrecisionResult{Scenario: "precision", Locked: total, Rate: o.Rate, Shards: o.Shards,
		LagP50: pct(0.50), LagP99: pct(0.99), LagMax: pct(1)}, nil
}

// lagRecorder keeps every unlock lag; the rest of tasks.Recorder is unused.
type lagRecorder struct {
	mu   sync.Mutex
	lags []time.Duration
}

func (r *lagRecorder) RecordUnlockLag(_ context.Context, _, _ string, lag time.Duration) {
	r.mu.Lock()
	r.lags = append(r.lags, lag)
	r.mu.Unlock()
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

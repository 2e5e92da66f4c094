package bench

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/queue"
	"github.com/keeperhq/keeper/tasks"
)

// The drain, precision and idle scenarios on Deckard's keys (`keeper bench
// <scenario> --layout deckard`): the same measurements as the native ones,
// with a keeper driving queue.Deckard. Each Deckard queue is one shard.
// Locks are written the way Deckard's clients leave them (ids in
// :lock_ack and :lock_nack, a saved score for some), by plain pipelined
// ZADDs.

// DeckardDrainResult is one line of `keeper bench drain --layout deckard --json`.
type DeckardDrainResult struct {
	DrainResult
	Layout string `json:"layout"`
}

// DeckardDrain is Drain on Deckard queues: Msgs due locks (half acked, half
// nacked, a saved score on every fourth) over Shards queues, drained once
// by the Deckard unlock script back-to-back (raw) and once by a keeper.
func DeckardDrain(ctx context.Context, o DrainOptions) (DeckardDrainResult, error) {
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
		return DeckardDrainResult{}, err
	}
	defer stop()
	res := DeckardDrainResult{DrainResult{Scenario: "drain", Msgs: o.Msgs, Shards: o.Shards}, "deckard"}
	raw, err := deckardDrainOnce(ctx, rdb, "bench-dk-raw", o, func(dk *queue.Deckard, shards []queue.Shard) error {
		return rawDrain(ctx, dk, shards, o.Batch)
	})
	if err != nil {
		return res, fmt.Errorf("raw drain: %w", err)
	}
	kept, err := deckardDrainOnce(ctx, rdb, "bench-dk-keeper", o, func(dk *queue.Deckard, shards []queue.Shard) error {
		return keeperDrain(ctx, dk, shards, deckardConfigs(shards), o)
	})
	if err != nil {
		return res, fmt.Errorf("keeper drain: %w", err)
	}
	res.RawMsgsPerS = round(float64(o.Msgs)/raw.Seconds(), 0)
	res.KeeperMsgsPerS = round(float64(o.Msgs)/kept.Seconds(), 0)
	res.Ratio = round(res.KeeperMsgsPerS/res.RawMsgsPerS, 3)
	return res, nil
}

func deckardConfigs(shards []queue.Shard) map[string]queue.Config {
	out := make(map[string]queue.Config, len(shards))
	for _, s := range shards {
		out[s.Queue] = queue.Config{Partitions: 1}
	}
	return out
}

// deckardQueues are n Deckard queues named prefix-i.
func deckardQueues(prefix string, n int) []queue.Shard {
	out := make([]queue.Shard, n)
	for i := range out {
		out[i] = queue.Shard{Queue: fmt.Sprintf("%s-%d", prefix, i)}
	}
	return out
}

// seedDeckardLocks writes count ids into q's lock pools, alternately
// lock_ack and lock_nack, the i-th unlocking at firstMs + i*step (ms
// scores, as Deckard writes them), with a saved score on every fourth.
func seedDeckardLocks(ctx context.Context, rdb redis.UniversalClient, prefix, q, tag string, count int, firstMs int64, step time.Duration) error {
	const chunk = 5000
	base := prefix + ":queue:{" + q + "}"
	for from := 0; from < count; from += chunk {
		_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			var ack, nack, ackSaved, nackSaved []redis.Z
			for i := from; i < min(from+chunk, count); i++ {
				id := fmt.Sprintf("%s%d", tag, i)
				z := redis.Z{Score: float64(firstMs + int64(time.Duration(i)*step/time.Millisecond)), Member: id}
				saved := redis.Z{Score: float64(i % 1000), Member: id}
				if i%2 == 0 {
					ack = append(ack, z)
					if i%4 == 0 {
						ackSaved = append(ackSaved, saved)
					}
				} else {
					nack = append(nack, z)
					if i%4 == 1 {
						nackSaved = append(nackSaved, saved)
					}
				}
			}
			for key, zs := range map[string][]redis.Z{base + ":lock_ack": ack, base + ":lock_nack": nack,
				base + ":lock_ack:score": ackSaved, base + ":lock_nack:score": nackSaved} {
				if len(zs) > 0 {
					p.ZAdd(ctx, key, zs...)
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("seed deckard locks of %s: %w", q, err)
		}
	}
	return nil
}

// clearDeckard deletes the keys of the queues, Deckard's and keeper's.
func clearDeckard(ctx context.Context, rdb redis.UniversalClient, prefix string, shards []queue.Shard) {
	for _, s := range shards {
		base := prefix + ":queue:{" + s.Queue + "}"
		own := prefix + ".keeper:{" + s.Queue + "}:"
		_ = rdb.Del(ctx, base, base+":tmp", base+":lock_ack", base+":lock_nack", base+":lock_ack:score",
			base+":lock_nack:score", own+"fence", own+"owner", own+"stats", own+"history").Err()
	}
}

func deckardDrainOnce(ctx context.Context, rdb redis.UniversalClient, prefix string, o DrainOptions,
	drain func(*queue.Deckard, []queue.Shard) error) (time.Duration, error) {
	dk, err := queue.NewDeckard(rdb, prefix, queue.DeckardWakeConfig{})
	if err != nil {
		return 0, err
	}
	shards := deckardQueues("q", o.Shards)
	clearDeckard(ctx, rdb, prefix, shards)
	defer clearDeckard(context.WithoutCancel(ctx), rdb, prefix, shards)
	now, err := dk.Now(ctx)
	if err != nil {
		return 0, err
	}
	per := o.Msgs / o.Shards
	for i, s := range shards {
		count := per
		if i == 0 {
			count += o.Msgs - per*o.Shards
		}
		// Due an hour ago, a millisecond apart.
		if err := seedDeckardLocks(ctx, rdb, prefix, s.Queue, "m", count, now.Add(-time.Hour).UnixMilli(), time.Millisecond); err != nil {
			return 0, err
		}
	}
	start := time.Now()
	if err := drain(dk, shards); err != nil {
		return 0, err
	}
	took := time.Since(start)
	if left, err := lockedLeft(ctx, dk, shards); err != nil || left != 0 {
		return 0, fmt.Errorf("%d queues still hold due locks after the drain (%v)", left, err)
	}
	return took, nil
}

// DeckardPrecisionOptions configures `keeper bench precision --layout deckard`.
type DeckardPrecisionOptions struct {
	PrecisionOptions
	// Wake is queue.WakeKeyspace (default) or queue.WakePoll.
	Wake string
	// Fresh is how many single locks, each alone in an empty queue and due
	// 50 ms after it is written, the keeper must hear of after the stream:
	// their lag is how fast a new deadline is heard; default 100.
	Fresh int
}

// DeckardPrecisionResult is one line of `keeper bench precision --layout
// deckard --json`.
type DeckardPrecisionResult struct {
	Scenario string  `json:"scenario"`
	Layout   string  `json:"layout"`
	Wake     string  `json:"wake"`
	Locked   int     `json:"locked"`
	Rate     int     `json:"rate"`
	Shards   int     `json:"shards"`
	LagP50   float64 `json:"lag_p50_ms"`
	LagP99   float64 `json:"lag_p99_ms"`
	LagMax   float64 `json:"lag_max_ms"`
	Fresh    int     `json:"fresh_locks"`
	FreshP50 float64 `json:"fresh_lag_p50_ms"`
	FreshP99 float64 `json:"fresh_lag_p99_ms"`
	FreshMax float64 `json:"fresh_lag_max_ms"`
}

// DeckardPrecision has a keeper own Shards empty Deckard queues, then
// writes Locked locks into them (as Deckard's clients would) whose unlock
// times follow each other at a steady Rate from Lead after the writing
// began, and records every lag (moved time − unlock time, both Redis TIME,
// measured by the unlock script). The keeper hears of the first deadlines
// by keyspace notifications or by polling (Wake), and of the rest from
// each pass. Then, Fresh times, one lock due 50 ms after it is written
// into an empty queue: its lag is the time the keeper took to hear of it
// past its due time.
func DeckardPrecision(ctx context.Context, o DeckardPrecisionOptions) (DeckardPrecisionResult, error) {
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
		o.Lead = 15 * time.Second
	}
	if o.Wake == "" {
		o.Wake = queue.WakeKeyspace
	}
	if o.Fresh <= 0 {
		o.Fresh = 100
	}
	rdb, stop, err := redisFor(ctx, o.Redis)
	if err != nil {
		return DeckardPrecisionResult{}, err
	}
	defer stop()
	wake, err := setupWake(ctx, rdb, o.Wake)
	if err != nil {
		return DeckardPrecisionResult{}, err
	}
	const prefix = "bench-dk-precision"
	dk, err := queue.NewDeckard(rdb, prefix, queue.DeckardWakeConfig{Mode: wake})
	if err != nil {
		return DeckardPrecisionResult{}, err
	}
	shards := deckardQueues("q", o.Shards)
	clearDeckard(ctx, rdb, prefix, shards)
	defer clearDeckard(context.WithoutCancel(ctx), rdb, prefix, shards)
	rec := &lagRecorder{lags: make([]time.Duration, 0, o.Locked+o.Fresh)}
	k := tasks.New(dk, tasks.Config{Recorder: rec})
	if err := k.Start(ctx); err != nil {
		return DeckardPrecisionResult{}, err
	}
	defer func() { _ = k.Stop(context.WithoutCancel(ctx)) }()
	k.SetConfigs(deckardConfigs(shards))
	k.Own(shards, 1)

	now, err := dk.Now(ctx)
	if err != nil {
		return DeckardPrecisionResult{}, err
	}
	t0 := now.Add(o.Lead)
	step := time.Second / time.Duration(o.Rate)
	per := o.Locked / o.Shards
	for p, s := range shards {
		// Shard p takes every Shards-th unlock time of the stream. A
		// lock's score is in ms, so ids due in the same ms share it.
		if err := seedDeckardLocks(ctx, rdb, prefix, s.Queue, "m", per, t0.Add(time.Duration(p)*step).UnixMilli(),
			step*time.Duration(o.Shards)); err != nil {
			return DeckardPrecisionResult{}, err
		}
	}
	total := per * o.Shards
	if seeded, _ := dk.Now(ctx); !seeded.Before(t0.Add(-time.Second)) {
		return DeckardPrecisionResult{}, fmt.Errorf("writing the locks took longer than the lead of %s; raise it", o.Lead)
	}
	wait := o.Lead + time.Duration(total)*step + time.Minute
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if _, err := poll.Until(wctx, 100*time.Millisecond, poll.Holds(func() bool { return rec.count() >= total })); err != nil {
		return DeckardPrecisionResult{}, fmt.Errorf("%d of %d unlocked: %w", rec.count(), total, err)
	}
	lags := rec.sorted()
	res := DeckardPrecisionResult{Scenario: "precision", Layout: "deckard", Wake: wake, Locked: total, Rate: o.Rate,
		Shards: o.Shards, LagP50: pctMs(lags, 0.5), LagP99: pctMs(lags, 0.99), LagMax: pctMs(lags, 1), Fresh: o.Fresh}

	fresh, err := freshLags(ctx, rdb, dk, rec, prefix, shards[0].Queue, o.Fresh)
	if err != nil {
		return res, err
	}
	res.FreshP50, res.FreshP99, res.FreshMax = pctMs(fresh, 0.5), pctMs(fresh, 0.99), pctMs(fresh, 1)
	return res, nil
}

// freshLags writes n single locks into the empty queue q, each due 50 ms
// after it is written and each after the previous one was unlocked, and
// returns their lags, sorted.
func freshLags(ctx context.Context, rdb redis.UniversalClient, dk *queue.Deckard, rec *lagRecorder, prefix, q string, n int) ([]time.Duration, error) {
	key := prefix + ":queue:{" + q + "}:lock_nack"
	before := rec.count()
	for i := 0; i < n; i++ {
		now, err := dk.Now(ctx)
		if err != nil {
			return nil, err
		}
		if err := rdb.ZAdd(ctx, key, redis.Z{Score: float64(now.Add(50 * time.Millisecond).UnixMilli()), Member: fmt.Sprint("fresh", i)}).Err(); err != nil {
			return nil, err
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err = poll.Until(wctx, time.Millisecond, poll.Holds(func() bool { return rec.count() > before+i }))
		cancel()
		if err != nil {
			return nil, fmt.Errorf("fresh lock %d not unlocked: %w", i, err)
		}
	}
	rec.mu.Lock()
	fresh := slices.Clone(rec.lags[before:])
	rec.mu.Unlock()
	slices.Sort(fresh)
	return fresh, nil
}

// setupWake sets Redis up for the wake mode asked for (keyspace events on
// for keyspace, left alone for poll) and fails if it cannot be had.
func setupWake(ctx context.Context, rdb redis.UniversalClient, want string) (string, error) {
	events := queue.KeyspaceOff
	if want == queue.WakeKeyspace {
		events = queue.KeyspaceAuto
	}
	wake, why, err := queue.SetupKeyspaceEvents(ctx, rdb, events)
	if err != nil {
		return "", err
	}
	if wake != want {
		return "", fmt.Errorf("wake %s asked for, %s possible: %s", want, wake, why)
	}
	return wake, nil
}

// DeckardIdleOptions configures `keeper bench idle --layout deckard`.
type DeckardIdleOptions struct {
	IdleOptions
	// Wake is queue.WakeKeyspace (default) or queue.WakePoll.
	Wake string
	// Discovery is the discovery interval; default 5s.
	Discovery time.Duration
}

// DeckardIdleResult is one line of `keeper bench idle --layout deckard --json`.
type DeckardIdleResult struct {
	IdleResult
	Layout string `json:"layout"`
	Wake   string `json:"wake"`
	// DiscoveryCalls and DiscoveryKeys are one scan's SCAN calls and the
	// Deckard keys it found.
	DiscoveryCalls int `json:"discovery_scan_calls"`
	DiscoveryKeys  int `json:"discovery_keys"`
}

// DeckardIdle is Idle on Shards Deckard queues, each with one lock due in
// an hour, owned by one keeper that wakes by Wake, while this process also
// runs the fleet's discovery (the scan the aggregator leader runs once per
// Discovery interval; with nothing new it writes nothing to etcd).
func DeckardIdle(ctx context.Context, o DeckardIdleOptions) (DeckardIdleResult, error) {
	if o.Shards <= 0 {
		o.Shards = 10_000
	}
	if o.Window <= 0 {
		o.Window = 30 * time.Second
	}
	if o.Wake == "" {
		o.Wake = queue.WakeKeyspace
	}
	if o.Discovery <= 0 {
		o.Discovery = 5 * time.Second
	}
	rdb, stop, err := redisFor(ctx, o.Redis)
	if err != nil {
		return DeckardIdleResult{}, err
	}
	defer stop()
	wake, err := setupWake(ctx, rdb, o.Wake)
	if err != nil {
		return DeckardIdleResult{}, err
	}
	const prefix = "bench-dk-idle"
	dk, err := queue.NewDeckard(rdb, prefix, queue.DeckardWakeConfig{Mode: wake})
	if err != nil {
		return DeckardIdleResult{}, err
	}
	shards := deckardQueues("q", o.Shards)
	clearDeckard(ctx, rdb, prefix, shards)
	defer clearDeckard(context.WithoutCancel(ctx), rdb, prefix, shards)
	now, err := dk.Now(ctx)
	if err != nil {
		return DeckardIdleResult{}, err
	}
	for _, s := range shards {
		if err := rdb.ZAdd(ctx, prefix+":queue:{"+s.Queue+"}:lock_ack",
			redis.Z{Score: float64(now.Add(time.Hour).UnixMilli()), Member: "m"}).Err(); err != nil {
			return DeckardIdleResult{}, err
		}
	}
	found, st, err := dk.Discover(ctx)
	if err != nil {
		return DeckardIdleResult{}, err
	}
	if len(found) != len(shards) {
		return DeckardIdleResult{}, fmt.Errorf("discovery found %d of %d queues", len(found), len(shards))
	}
	k := tasks.New(dk, o.Keeper)
	if err := k.Start(ctx); err != nil {
		return DeckardIdleResult{}, err
	}
	defer func() { _ = k.Stop(context.WithoutCancel(ctx)) }()
	k.SetConfigs(deckardConfigs(shards))
	k.Own(shards, 1)
	r, err := idleMeasure(ctx, rdb, k, len(shards), o.Window, o.Discovery, func() error {
		_, _, err := dk.Discover(ctx)
		return err
	})
	if err != nil {
		return DeckardIdleResult{}, err
	}
	return DeckardIdleResult{IdleResult: r, Layout: "deckard", Wake: wake, DiscoveryCalls: st.Calls, DiscoveryKeys: st.Keys}, nil
}

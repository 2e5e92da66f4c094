package tasks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/queue"
	"github.com/redis/go-redis/v9"
)

// errInjected is what faultyLayout returns in place of Redis's answer.
var errInjected = errors.New("injected: connection reset")

// faultyLayout puts the faults of a real network between the keeper and a
// real Redis: round trips that fail before they reach Redis, replies lost
// after Redis ran the passes (the keeper cannot tell the two apart), slow
// round trips, failed probes, and wake subscriptions that end (as a
// dropped pub/sub connection does; only while wakeFaults is on). Every
// choice comes from one seeded source, so a failure can be replayed by its
// seed.
type faultyLayout struct {
	queue.Layout
	wakeFaults atomic.Bool
	mu         sync.Mutex
	rnd        *rand.Rand

	passFaults, probeFaults int
}

func (f *faultyLayout) roll() float64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rnd.Float64()
}

func (f *faultyLayout) between(lo, hi time.Duration) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return lo + time.Duration(f.rnd.Int64N(int64(hi-lo)+1))
}

func (f *faultyLayout) count(n *int) {
	f.mu.Lock()
	*n++
	f.mu.Unlock()
}

func (f *faultyLayout) Passes(ctx context.Context, reqs []queue.PassRequest) []queue.PassOutcome {
	switch r := f.roll(); {
	case r < 0.05: // lost on the way: Redis never ran them
		f.count(&f.passFaults)
		out := make([]queue.PassOutcome, len(reqs))
		for i := range out {
			out[i].Err = errInjected
		}
		return out
	case r < 0.10: // the reply was lost: Redis ran them, the keeper does not know
		f.count(&f.passFaults)
		out := f.Layout.Passes(ctx, reqs)
		for i := range out {
			out[i] = queue.PassOutcome{Err: errInjected}
		}
		return out
	case r < 0.15:
		time.Sleep(f.between(time.Millisecond, 30*time.Millisecond))
	}
	return f.Layout.Passes(ctx, reqs)
}

func (f *faultyLayout) Probe(ctx context.Context, reqs []queue.ProbeRequest) ([]queue.ProbeResult, error) {
	switch r := f.roll(); {
	case r < 0.1:
		f.count(&f.probeFaults)
		return nil, errInjected
	case r < 0.2:
		f.count(&f.probeFaults)
		if _, err := f.Layout.Probe(ctx, reqs); err != nil {
			return nil, err
		}
		return nil, errInjected
	}
	return f.Layout.Probe(ctx, reqs)
}

// Wakes ends each subscription after a while: hints published until the
// keeper subscribes again are lost, and only the Resync of each shard on
// the new subscription tells it to look.
func (f *faultyLayout) Wakes(ctx context.Context, fn func(queue.Wake)) error {
	if !f.wakeFaults.Load() {
		return f.Layout.Wakes(ctx, fn)
	}
	sub, cancel := context.WithTimeout(ctx, f.between(200*time.Millisecond, 1500*time.Millisecond))
	defer cancel()
	if err := f.Layout.Wakes(sub, fn); err != nil || ctx.Err() != nil {
		return err
	}
	return errInjected
}

// No deadline is lost to faults. Round trips fail before or after Redis ran
// them and probes fail, all along. While locks are written, the wake
// subscription keeps dropping too, and shards are disowned and owned again
// under a new token. Then those two stop, and with them everything that
// would find a lost deadline again (each resubscription and each new
// ownership probes its shards; the safety sweep is an hour away): the
// locks due after that are returned only if the keeper kept every deadline
// it had learnt, from a pass's reply, a failed pass's retry or a wake. A
// lost one leaves its lock in place for good, which the end check names by
// shard.
func TestNoDeadlineLostUnderFaults(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { noDeadlineLost(t, seed) })
	}
}

func noDeadlineLost(t *testing.T, seed uint64) {
	ctx := context.Background()
	srv := redisserver.StartTB(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	client := queue.NewClient(rdb, queue.ClientOptions{ConfigTTL: time.Millisecond})
	const (
		partitions = 32
		msgs       = 2000
	)
	cfg := queue.Config{Partitions: partitions}
	if err := client.Registry().Create(ctx, "f", cfg); err != nil {
		t.Fatal(err)
	}
	cfg = cfg.WithDefaults()
	layout := &faultyLayout{Layout: queue.NewNative(rdb, ""), rnd: rand.New(rand.NewPCG(seed, 7))}
	// Batch 7: backlogs need several passes (a full batch runs again),
	// so that path is exercised as well.
	layout.wakeFaults.Store(true)
	k := New(layout, Config{SweepInterval: time.Hour, MaxBackoff: 100 * time.Millisecond, Batch: 7,
		Logger: slog.New(slog.DiscardHandler)})
	if err := k.Start(ctx); err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, k)
	k.SetConfig("f", cfg)
	shards := make([]queue.Shard, partitions)
	for p := range shards {
		shards[p] = queue.Shard{Queue: "f", Partition: p}
	}
	k.Own(shards, 1)

	rnd := rand.New(rand.NewPCG(seed, 11))
	// Ownership churn: a shard disowned and owned again, under a higher
	// token each time, as a handoff away and back would.
	churnCtx, stopChurn := context.WithCancel(ctx)
	var churn sync.WaitGroup
	churn.Add(1)
	go func() {
		defer churn.Done()
		r := rand.New(rand.NewPCG(seed, 13))
		token := int64(1)
		for churnCtx.Err() == nil {
			s := shards[r.IntN(partitions)]
			k.Disown([]queue.Shard{s})
			time.Sleep(time.Duration(r.IntN(50)) * time.Millisecond)
			token++
			k.Own([]queue.Shard{s}, token)
			time.Sleep(time.Duration(50+r.IntN(100)) * time.Millisecond)
		}
	}()
	// Locks due from at once to six seconds ahead, written over about two
	// seconds, many shards due within the same milliseconds.
	for i := range msgs {
		delay := time.Duration(rnd.IntN(6000)) * time.Millisecond
		if _, err := client.Enqueue(ctx, "f", queue.Message{ID: fmt.Sprintf("m%d", i), Delay: delay}); err != nil {
			t.Fatal(err)
		}
		if i%100 == 99 {
			time.Sleep(100 * time.Millisecond)
		}
	}
	stopChurn()
	churn.Wait()
	layout.wakeFaults.Store(false)
	// Every lock is due within six seconds. A minute is far beyond what
	// any retry takes; what is left by then was lost.
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var st queue.QueueStats
	_, err := poll.Until(wctx, 100*time.Millisecond, func() (bool, string) {
		var err error
		if st, err = client.Stats(ctx, "f"); err != nil {
			return false, err.Error()
		}
		return st.Locked == 0 && st.Ready == msgs, fmt.Sprintf("%d locked, %d ready of %d", st.Locked, st.Ready, msgs)
	})
	layout.mu.Lock()
	passFaults, probeFaults := layout.passFaults, layout.probeFaults
	layout.mu.Unlock()
	if err != nil {
		var stuck []string
		for _, s := range st.Shards {
			if s.Locked > 0 {
				stuck = append(stuck, fmt.Sprintf("%s: %d locked", s.Shard, s.Locked))
			}
		}
		sort.Strings(stuck)
		t.Fatalf("seed %d: locks never returned (a lost deadline) after %d failed round trips and %d failed probes: %v; %v",
			seed, passFaults, probeFaults, err, stuck)
	}
	if passFaults == 0 || probeFaults == 0 {
		t.Fatalf("seed %d: the faults did not happen (%d failed round trips, %d failed probes)", seed, passFaults, probeFaults)
	}
	t.Logf("seed %d: %d locks returned through %d failed round trips and %d failed probes", seed, msgs, passFaults, probeFaults)
}

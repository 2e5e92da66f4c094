package bench

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Small runs of each scenario, so `make test` proves they work end to end
// against a real redis-server. The figures are logged, never asserted: the
// machine is shared and noisy. Full-size runs are `keeper bench`.
func TestDrainSmall(t *testing.T) {
	r, err := Drain(context.Background(), DrainOptions{Msgs: 20_000, Shards: 4})
	if err != nil {
		t.Fatal(err)
	}
	if r.KeeperMsgsPerS <= 0 || r.RawMsgsPerS <= 0 {
		t.Fatalf("no throughput measured: %+v", r)
	}
	t.Logf("%+v", r)
}

// The lead is shorter than seeding takes: the stream starts after seeding
// ended whatever the machine's speed (it once failed under load with
// "seeding took longer than the lead").
func TestPrecisionSmall(t *testing.T) {
	r, err := Precision(context.Background(), PrecisionOptions{Locked: 20_000, Rate: 20_000, Shards: 4, Lead: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r.Locked != 20_000 || r.LagMax < r.LagP99 || r.LagP99 < r.LagP50 || r.LagP50 < 0 {
		t.Fatalf("inconsistent percentiles: %+v", r)
	}
	// A lag above p99 exists unless the largest is p99 itself.
	if r.ShardsOverP99 > r.Shards || (r.LagMax > r.LagP99) != (r.ShardsOverP99 > 0) {
		t.Fatalf("%d of %d shards over p99: %+v", r.ShardsOverP99, r.Shards, r)
	}
	t.Logf("%+v", r)
}

// shardsAbove tells a tail that is the whole keeper's (every shard has a
// lag above the bound) from one of a few shards.
func TestShardsAbove(t *testing.T) {
	var r lagRecorder
	ctx := context.Background()
	for i := 0; i < 100; i++ {
		for s := 0; s < 10; s++ {
			lag := time.Millisecond
			if s < 2 && i == 50 {
				lag = time.Minute // two shards left behind once
			}
			r.RecordUnlockLag(ctx, "q", fmt.Sprintf("q#%d", s), lag)
		}
	}
	lags := r.sorted()
	if p99 := pct(lags, 0.99); p99 != time.Millisecond {
		t.Fatalf("p99 %s", p99)
	}
	if n := r.shardsAbove(pct(lags, 0.99)); n != 2 {
		t.Fatalf("%d shards above p99, want 2", n)
	}
	if n := r.shardsAbove(0); n != 10 {
		t.Fatalf("%d shards above 0, want 10", n)
	}
}

func TestIdleSmall(t *testing.T) {
	r, err := Idle(context.Background(), IdleOptions{Shards: 500, Window: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.Shards != 500 || r.RedisCmdsPerS < 0 {
		t.Fatalf("%+v", r)
	}
	t.Logf("%+v", r)
}

// Each event starts from a settled fleet and ends when every shard of the
// stopped keeper is written by a new owner.
func TestFailoverSmall(t *testing.T) {
	r, err := Failover(context.Background(), FailoverOptions{Queues: 4, Parts: 5, Locks: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if r.Shards != 20 || r.CrashShards <= 0 || r.GracefulShards <= 0 || r.CrashTakeoverS <= 0 || r.GracefulHandoffMs <= 0 {
		t.Fatalf("%+v", r)
	}
	t.Logf("%+v", r)
}

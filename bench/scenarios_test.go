package bench

import (
	"context"
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
	t.Logf("%+v", r)
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

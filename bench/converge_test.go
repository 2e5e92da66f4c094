package bench

import (
	"context"
	"math"
	"testing"
	"time"
)

// Steady-state etcd writes are lease renewals only: the same for 1,000 and
// 100,000 shards, because ownership keys are per unit (and only for units
// that hold shards), and nothing is rewritten while nothing changes.
func TestConvergeWritesIndependentOfShards(t *testing.T) {
	if testing.Short() {
		t.Skip("two converge runs with a steady window each")
	}
	ctx := context.Background()
	var results []ConvergeResult
	for _, shards := range []int{1000, 100_000} {
		res, err := Converge(ctx, ConvergeOptions{Shards: shards, Keepers: 5, SteadyWindow: 5 * time.Second})
		if err != nil {
			t.Fatalf("converge %d shards: %v", shards, err)
		}
		t.Logf("%+v", res)
		if res.RevisionsPerSSteady != 0 {
			t.Fatalf("%d shards: %.2f key revisions/s in steady state, want 0", shards, res.RevisionsPerSSteady)
		}
		if want := res.UnitsUsed + res.Keepers + 1; res.EtcdKeys != want || res.UnitsUsed > res.Units {
			t.Fatalf("%d shards: %d keys, want used units+members+ring config = %d (of at most %d units)",
				shards, res.EtcdKeys, want, res.Units)
		}
		results = append(results, res)
	}
	a, b := results[0].EtcdWritesPerSSteady, results[1].EtcdWritesPerSSteady
	// 5 keepers renew every TTL/3 = 1s: about 5 writes/s either way.
	if a <= 0 || math.Abs(a-b) > 0.5*math.Max(a, b) {
		t.Fatalf("steady writes/s differ with shard count: %.2f (1,000 shards) vs %.2f (100,000)", a, b)
	}
}

func TestConvergeDefaults(t *testing.T) {
	if testing.Short() {
		t.Skip("20 keepers, 100,000 shards")
	}
	res, err := Converge(context.Background(), ConvergeOptions{SteadyWindow: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.Shards != 100_000 || res.Keepers != 20 {
		t.Fatalf("defaults not applied: %+v", res)
	}
	// The target is 10s; this box is shared, so only log a miss.
	if res.ConvergeS > 10 {
		t.Logf("converge took %.1fs, over the 10s target", res.ConvergeS)
	}
}

package bench

import (
	"context"
	"math"
	"testing"
	"time"
)

// A small scaleout, one keeper then two: every figure is measured (not a
// target or a default echoed back), the shards are split without overlap,
// and the work was done. The figures are logged, not compared: the machine
// is shared.
func TestScaleoutSmall(t *testing.T) {
	const shards, rate, leases = 40, 2000, 400
	window := 4 * time.Second
	rs, err := Scaleout(context.Background(), ScaleoutOptions{Keepers: []int{1, 2}, Shards: shards, Rate: rate,
		Leases: leases, Window: window, LogDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 {
		t.Fatalf("%d results, want 2", len(rs))
	}
	for i, r := range rs {
		t.Logf("%+v", r)
		n := i + 1
		if r.Scenario != "scaleout" || r.Keepers != n || r.Shards != shards {
			t.Fatalf("result %d: %+v", i, r)
		}
		if len(r.ShardsPerKeeper) != n || len(r.KeeperCPU) != n || len(r.KeeperCmdsPerS) != n {
			t.Fatalf("per-keeper figures for %d keepers: %+v", n, r)
		}
		owned, cmds := 0, 0.0
		for k := range n {
			if r.ShardsPerKeeper[k] <= 0 || r.KeeperCPU[k] <= 0 || r.KeeperCmdsPerS[k] <= 0 {
				t.Fatalf("keeper %d measured nothing: %+v", k, r)
			}
			owned += r.ShardsPerKeeper[k]
			cmds += r.KeeperCmdsPerS[k]
		}
		if owned != shards {
			t.Fatalf("the keepers own %d shards between them, want %d", owned, shards)
		}
		if r.BehindAtStart < 0 || r.BehindAtStart > shards || r.BehindAtEnd < 0 || r.BehindAtEnd > shards {
			t.Fatalf("shards behind out of 0..%d: %+v", shards, r)
		}
		if math.Abs(cmds-r.KeeperCmdsSum) > 1 || r.RedisCmdsPerS < r.KeeperCmdsSum {
			t.Fatalf("Redis ran %.1f commands/s, fewer than the keepers' %.1f sent: %+v", r.RedisCmdsPerS, r.KeeperCmdsSum, r)
		}
		cpuMax, cpuSum := 0.0, 0.0
		for _, c := range r.KeeperCPU {
			cpuMax, cpuSum = max(cpuMax, c), cpuSum+c
		}
		if r.KeeperCPUMax != cpuMax || math.Abs(r.KeeperCPUMean-cpuSum/float64(n)) > 1e-3 {
			t.Fatalf("CPU mean/max do not follow the per-keeper figures: %+v", r)
		}
		// The window saw the streams: unlocks and requeues at about their
		// rates (a loaded machine may fall behind; never none).
		if r.Unlocked <= 0 || r.Requeued <= 0 || r.WindowS < window.Seconds() {
			t.Fatalf("no work in the window: %+v", r)
		}
		if r.Unlocked > int64(2*rate*r.WindowS) {
			t.Fatalf("%d unlocked in %.1fs at %d/s: counted twice?", r.Unlocked, r.WindowS, rate)
		}
		if r.LagP50 <= 0 || r.LagP99 < r.LagP50 {
			t.Fatalf("lag quantiles: %+v", r)
		}
	}
}

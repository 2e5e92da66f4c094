package chaos

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"
)

// The short chaos run of `make test`: every fault kind once, in an order
// drawn from the seed (KEEPER_CHAOS_SEED replays another), under the
// workload, with every invariant checked. A failure names the seed.
func TestChaosEveryFault(t *testing.T) {
	if testing.Short() {
		t.Skip("starts keeper, etcd and redis processes")
	}
	seed := uint64(20261130)
	if s := os.Getenv("KEEPER_CHAOS_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("KEEPER_CHAOS_SEED: %v", err)
		}
		seed = n
	}
	start := time.Now()
	rep, err := Run(context.Background(), RunOptions{Duration: time.Second, MinFaults: len(AllFaults),
		Gap: 300 * time.Millisecond, Seed: seed, Log: t.Logf})
	if err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	t.Logf("seed %d: %d faults of %d kinds in %s", seed, len(rep.Faults), rep.FaultKinds, time.Since(start).Round(time.Second))
	for _, k := range AllFaults {
		s := rep.ByKind[k]
		if s.Count == 0 {
			t.Errorf("fault %s never ran", k)
			continue
		}
		t.Logf("%-20s settle %.2fs, lag max %.0fms", k, s.SettleMax, s.LagMaxMs)
	}
	for _, inv := range rep.Invariants {
		t.Logf("%v %s: %s", inv.OK, inv.Name, inv.Detail)
	}
	if rep.Violations > 0 {
		t.Fatalf("seed %d (replay: KEEPER_CHAOS_SEED=%d): %d violations: %v", seed, seed, rep.Violations, rep.ViolationList)
	}
	if rep.Messages.Enqueued == 0 || rep.Fencing.Accepted == 0 || rep.Messages.Unlocked == 0 || rep.Messages.Requeued == 0 {
		t.Fatalf("the workload did not exercise the keepers: %+v", rep.Messages)
	}
}

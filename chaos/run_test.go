package chaos

import (
	"context"
	"testing"
	"time"
)

// A short randomized run: the report must show the faults it injected and
// no violation.
func TestRunRandomFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("starts keeper processes")
	}
	rep, err := Run(context.Background(), RunOptions{Keepers: 3, Duration: 12 * time.Second,
		Faults: []string{FaultKill, FaultTerm, FaultPause}, Queues: 4, Partitions: 4, Seed: 7, Log: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Faults) < 3 {
		t.Fatalf("only %d faults injected", len(rep.Faults))
	}
	if rep.Violations > 0 {
		t.Fatalf("violations: %v", rep.ViolationList)
	}
	if rep.Messages.Enqueued == 0 || rep.Fencing.Accepted == 0 {
		t.Fatalf("nothing happened: %+v", rep)
	}
}

package election

import (
	"reflect"
	"testing"

	"github.com/keeperhq/keeper/otel"
)

// Per-queue totals sum the summaries of live members only, and list every
// queue of the catalog, sorted, also those no live member reports.
func TestQueueTotals(t *testing.T) {
	v := &view{
		members:     map[string]struct{}{"a": {}, "b": {}},
		queueShards: map[string]int{"q1": 2, "q2": 1, "q3": 4},
		summaries: map[string]Summary{
			"a":    {Queues: map[string]QueueSummary{"q1": qs(1, 1, 2, 3, 4), "q2": qs(1, 10, 0, 0, 0)}},
			"b":    {Queues: map[string]QueueSummary{"q1": qs(1, 100, 0, 0, 1)}},
			"gone": {Queues: map[string]QueueSummary{"q1": qs(1, 1000, 0, 0, 0), "q3": qs(1, 5, 0, 0, 0)}},
		},
	}
	want := []otel.QueueTotals{
		{Queue: "q1", Shards: 2, Ready: 101, Inflight: 2, Locked: 3, Dead: 5},
		{Queue: "q2", Shards: 1, Ready: 10},
		{Queue: "q3", Shards: 4},
	}
	if got := v.buildQueues(); !reflect.DeepEqual(got, want) {
		t.Fatalf("totals %+v, want %+v", got, want)
	}
}

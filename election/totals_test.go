package election

import (
	"reflect"
	"testing"

	"github.com/keeperhq/keeper/otel"
	"github.com/keeperhq/keeper/queue"
)

// Per-queue totals sum the summaries of live members only, and list every
// queue of the catalog, sorted, also those no live member reports; they are
// Complete when the summaries count each shard once (here, by count: the
// summaries have no fingerprints).
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
		{Queue: "q1", Shards: 2, Ready: 101, Inflight: 2, Locked: 3, Dead: 5, Complete: true},
		{Queue: "q2", Shards: 1, Ready: 10, Complete: true},
		{Queue: "q3", Shards: 4},
	}
	if got := v.buildQueues(); !reflect.DeepEqual(got, want) {
		t.Fatalf("totals %+v, want %+v", got, want)
	}
}

// With fingerprints, a total is Complete only when the summaries count the
// very shards of the queue: the right count of the wrong shards (one in
// transit counted twice, another by nobody) is not.
func TestQueueTotalsByFingerprint(t *testing.T) {
	fp := func(names ...string) uint64 {
		var c uint64
		for _, n := range names {
			c += shardFingerprint(n)
		}
		return c
	}
	v := &view{units: 1, members: map[string]struct{}{"a": {}, "b": {}}}
	v.setCatalog([]queue.Shard{{Queue: "q", Partition: 0}, {Queue: "q", Partition: 1}, {Queue: "q", Partition: 2}})
	for _, c := range []struct {
		a, b     []string
		complete bool
	}{
		{[]string{"q#0", "q#1"}, []string{"q#2"}, true},
		{[]string{"q#0", "q#1"}, []string{"q#1"}, false}, // q#1 twice, q#2 by nobody
		{[]string{"q#0", "q#1"}, nil, false},
		{[]string{"q#0", "q#1"}, []string{"q#2", "q#1"}, false},
	} {
		v.summaries = map[string]Summary{
			"a": {Queues: map[string]QueueSummary{"q": {Shards: len(c.a), Ready: 1, Cover: fp(c.a...)}}},
			"b": {Queues: map[string]QueueSummary{"q": {Shards: len(c.b), Ready: 1, Cover: fp(c.b...)}}},
		}
		if got := v.buildQueues(); len(got) != 1 || got[0].Complete != c.complete {
			t.Errorf("a counts %v, b %v: %+v, want complete=%v", c.a, c.b, got, c.complete)
		}
	}
	// Summarize fingerprints what it counts.
	s := Summarize("a", shardList{{Queue: "q", Shard: "q#0"}, {Queue: "q", Shard: "q#2"}})
	if s.Queues["q"].Cover != fp("q#0", "q#2") {
		t.Errorf("Summarize cover %d, want %d", s.Queues["q"].Cover, fp("q#0", "q#2"))
	}
}

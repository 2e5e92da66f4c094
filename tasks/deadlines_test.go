package tasks

import (
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/keeperhq/keeper/queue"
)

func TestDeadlinesOrderAndRemove(t *testing.T) {
	var d deadlines
	base := time.Now()
	sts := make([]*shardState, 50)
	for i := range sts {
		sts[i] = &shardState{name: string(rune('a' + i))}
		for task := queue.Task(0); task < numTasks; task++ {
			d.schedule(sts[i], task, base.Add(time.Duration(rand.IntN(1000))*time.Millisecond))
		}
	}
	// An earlier deadline moves an entry up; a later one does not move it.
	d.schedule(sts[7], Unlock, base.Add(-time.Second))
	d.schedule(sts[7], Unlock, base.Add(time.Hour))
	if e := d.peek(); e.st != sts[7] || e.task != Unlock {
		t.Fatalf("earliest is %s/%s", e.st.name, e.task)
	}
	d.remove(sts[3])
	prev := time.Time{}
	n := 0
	for d.peek() != nil {
		e := d.pop()
		if e.st == sts[3] {
			t.Fatal("removed shard still scheduled")
		}
		if e.due.Before(prev) {
			t.Fatal("popped out of order")
		}
		prev = e.due
		n++
	}
	if n != 49*int(numTasks) {
		t.Fatalf("popped %d entries", n)
	}
}

// BenchmarkScheduleAndPop is the scheduler's hot path: one deadline update
// and one pop per pass, over 100,000 owned shards.
func BenchmarkScheduleAndPop(b *testing.B) {
	const shards = 100_000
	var d deadlines
	sts := make([]*shardState, shards)
	now := time.Now()
	for i := range sts {
		sts[i] = &shardState{}
		d.schedule(sts[i], Unlock, now.Add(time.Duration(rand.IntN(60_000))*time.Millisecond))
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		e := d.pop()
		d.schedule(e.st, e.task, e.due.Add(time.Duration(rand.IntN(60_000))*time.Millisecond))
	}
}

// BenchmarkOwnedShardMemory reports what an owned, scheduled shard costs the
// keeper in memory (bytes/shard), the figure that bounds how many shards one
// keeper can hold.
func BenchmarkOwnedShardMemory(b *testing.B) {
	const shards = 10_000
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		k := New(nil, Config{})
		cfg := queue.Config{Partitions: shards}.WithDefaults()
		for p := 0; p < shards; p++ {
			k.Own(queue.Shard{Queue: "bench", Partition: p}, cfg, 1)
			st := k.shards[queue.Shard{Queue: "bench", Partition: p}.String()]
			k.heap.schedule(st, Unlock, time.Now().Add(time.Minute))
			k.heap.schedule(st, Requeue, time.Now().Add(time.Minute))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/shards, "bytes/shard")
		runtime.KeepAlive(k)
	}
}

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
		k := New(queue.NewNative(nil, ""), Config{})
		k.SetConfig("bench", queue.Config{Partitions: shards}.WithDefaults())
		for p := 0; p < shards; p++ {
			s := queue.Shard{Queue: "bench", Partition: p}
			k.Own([]queue.Shard{s}, 1)
			st := k.shards[s]
			k.heap.schedule(st, Unlock, time.Now().Add(time.Minute))
			k.heap.schedule(st, Requeue, time.Now().Add(time.Minute))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/shards, "bytes/shard")
		runtime.KeepAlive(k)
	}
}

// BenchmarkOwnAndDisown50k is the keeper's side of a large handoff: taking
// 50,000 shards in one Own and giving them back in one Disown (no Redis:
// the probes they queue are not run). It reports the cost per shard.
func BenchmarkOwnAndDisown50k(b *testing.B) {
	const n = 50_000
	shards := make([]queue.Shard, n)
	for p := range shards {
		shards[p] = queue.Shard{Queue: "bench", Partition: p}
	}
	for i := 0; i < b.N; i++ {
		k := New(queue.NewNative(nil, ""), Config{})
		k.SetConfig("bench", queue.Config{Partitions: n}.WithDefaults())
		t0 := time.Now()
		k.Own(shards, 1)
		t1 := time.Now()
		k.Disown(shards)
		b.ReportMetric(float64(t1.Sub(t0).Nanoseconds())/n, "own-ns/shard")
		b.ReportMetric(float64(time.Since(t1).Nanoseconds())/n, "disown-ns/shard")
	}
}

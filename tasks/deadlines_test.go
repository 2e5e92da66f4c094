package tasks

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/keeperhq/keeper/queue"
)

func TestDeadlinesOrderAndRemove(t *testing.T) {
	var d deadlines
	base := monoNow()
	sts := make([]*shardState, 50)
	for i := range sts {
		sts[i] = newShardState(queue.Shard{Queue: "q", Partition: i}, queue.Config{}, 1)
		for task := queue.Task(0); task < numTasks; task++ {
			d.schedule(sts[i], task, base+int64(rand.IntN(1000))*int64(time.Millisecond))
		}
	}
	// An earlier deadline moves an entry up; a later one does not move it.
	d.schedule(sts[7], Unlock, base-int64(time.Second))
	d.schedule(sts[7], Unlock, base+int64(time.Hour))
	if e := d.peek(); e.st != sts[7] || e.task != Unlock {
		t.Fatalf("earliest is %s/%s", e.st.name, e.task)
	}
	d.remove(sts[3])
	for task := range sts[3].entries {
		if sts[3].entries[task].scheduled() {
			t.Fatalf("removed shard's %s still scheduled", queue.Task(task))
		}
	}
	// Entries removed from the middle leave a heap in order.
	d.remove(sts[20])
	d.schedule(sts[20], Trim, base+int64(500*time.Millisecond))
	prev := int64(-1 << 62)
	n := 0
	for d.peek() != nil {
		if err := d.check(); err != nil {
			t.Fatal(err)
		}
		e := d.pop()
		if e.st == sts[3] {
			t.Fatal("removed shard still scheduled")
		}
		if e.due < prev {
			t.Fatal("popped out of order")
		}
		if e.scheduled() {
			t.Fatal("a popped entry still has a heap position")
		}
		prev = e.due
		n++
	}
	if want := 48*int(numTasks) + 1; n != want {
		t.Fatalf("popped %d entries, want %d", n, want)
	}
}

// check verifies the heap order and every entry's position.
func (d deadlines) check() error {
	for i, e := range d {
		if int(e.idx) != i {
			return fmt.Errorf("entry at %d says it is at %d", i, e.idx)
		}
		if i > 0 && d[(i-1)/2].due > e.due {
			return fmt.Errorf("entry at %d is due before its parent", i)
		}
	}
	return nil
}

// BenchmarkScheduleAndPop is the scheduler's hot path: one deadline update
// and one pop per pass, over 100,000 owned shards.
func BenchmarkScheduleAndPop(b *testing.B) {
	const shards = 100_000
	var d deadlines
	sts := make([]*shardState, shards)
	now := monoNow()
	for i := range sts {
		sts[i] = newShardState(queue.Shard{Queue: "bench", Partition: i}, queue.Config{}, 1)
		d.schedule(sts[i], Unlock, now+int64(rand.IntN(60_000))*int64(time.Millisecond))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		e := d.pop()
		d.schedule(e.st, e.task, e.due+int64(rand.IntN(60_000))*int64(time.Millisecond))
	}
}

// BenchmarkOwnedShardMemory reports what an owned, scheduled shard costs the
// keeper in memory (bytes/shard) at 100,000 shards, the figure that bounds how
// many shards one keeper can hold.
func BenchmarkOwnedShardMemory(b *testing.B) {
	const shards = 100_000
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
			k.heap.schedule(st, Unlock, monoNow()+int64(time.Minute))
			k.heap.schedule(st, Requeue, monoNow()+int64(time.Minute))
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

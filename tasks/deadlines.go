package tasks

import (
	"container/heap"
	"time"

	"github.com/keeperhq/keeper/queue"
)

// deadlines is a min-heap of (shard, task) entries by due time: the
// scheduler's whole view of what is next. Each entry's position is kept in
// its shard so that an earlier deadline can move an entry up in O(log n).
type deadlines []*entry

type entry struct {
	st   *shardState
	task queue.Task
	due  time.Time
	idx  int
}

func (d deadlines) Len() int           { return len(d) }
func (d deadlines) Less(i, j int) bool { return d[i].due.Before(d[j].due) }
func (d deadlines) Swap(i, j int) {
	d[i], d[j] = d[j], d[i]
	d[i].idx = i
	d[j].idx = j
}

func (d *deadlines) Push(x any) {
	e := x.(*entry)
	e.idx = len(*d)
	*d = append(*d, e)
}

func (d *deadlines) Pop() any {
	old := *d
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	e.idx = -1
	*d = old[:n-1]
	return e
}

// schedule makes (st, task) due at t, unless it is already due earlier.
func (d *deadlines) schedule(st *shardState, task queue.Task, t time.Time) {
	if e := st.entries[task]; e != nil {
		if t.Before(e.due) {
			e.due = t
			heap.Fix(d, e.idx)
		}
		return
	}
	e := &entry{st: st, task: task, due: t}
	st.entries[task] = e
	heap.Push(d, e)
}

// remove drops every entry of st.
func (d *deadlines) remove(st *shardState) {
	for t, e := range st.entries {
		if e != nil {
			heap.Remove(d, e.idx)
			st.entries[t] = nil
		}
	}
}

// peek is the earliest entry, or nil.
func (d deadlines) peek() *entry {
	if len(d) == 0 {
		return nil
	}
	return d[0]
}

// pop takes the earliest entry off the heap.
func (d *deadlines) pop() *entry {
	e := heap.Pop(d).(*entry)
	e.st.entries[e.task] = nil
	return e
}

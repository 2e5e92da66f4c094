package tasks

import (
	"time"

	"github.com/keeperhq/keeper/queue"
)

// deadlines is a binary min-heap of (shard, task) entries by due time: the
// scheduler's whole view of what is next. Entries live in their shard's
// state and know their heap position, so scheduling allocates nothing,
// and moving an entry earlier, popping and removing each cost O(log n):
// about 20 levels at 100,000 shards with several tasks each.
type deadlines []*entry

// entry is one (shard, task) deadline.
type entry struct {
	st   *shardState
	due  int64 // on the keeper's clock (monoNow)
	idx  int32 // position in the heap; -1 when not scheduled
	task queue.Task
}

// epoch anchors monoNow: deadlines are compared as plain integers, on the
// monotonic clock, so a wall clock step moves none of them.
var epoch = time.Now()

// monoNow is now on the keeper's clock: nanoseconds since epoch.
func monoNow() int64 { return int64(time.Since(epoch)) }

// scheduled tells whether e is in the heap.
func (e *entry) scheduled() bool { return e.idx >= 0 }

// schedule makes (st, task) due at t (monoNow's clock), unless it is
// already due earlier.
func (d *deadlines) schedule(st *shardState, task queue.Task, t int64) {
	e := &st.entries[task]
	if e.scheduled() {
		if t < e.due {
			e.due = t
			d.up(int(e.idx))
		}
		return
	}
	e.due = t
	e.idx = int32(len(*d))
	*d = append(*d, e)
	d.up(int(e.idx))
}

// remove drops every entry of st.
func (d *deadlines) remove(st *shardState) {
	for t := range st.entries {
		if e := &st.entries[t]; e.scheduled() {
			d.removeAt(int(e.idx))
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
	e := (*d)[0]
	d.removeAt(0)
	return e
}

func (d *deadlines) removeAt(i int) {
	h := *d
	last := len(h) - 1
	e := h[i]
	if i != last {
		h[i] = h[last]
		h[i].idx = int32(i)
	}
	h[last] = nil
	*d = h[:last]
	e.idx = -1
	if i != last {
		if !d.down(i) {
			d.up(i)
		}
	}
}

func (d deadlines) up(i int) {
	e := d[i]
	for i > 0 {
		p := (i - 1) / 2
		if d[p].due <= e.due {
			break
		}
		d[i] = d[p]
		d[i].idx = int32(i)
		i = p
	}
	d[i] = e
	e.idx = int32(i)
}

// down sifts d[i] down and reports whether it moved.
func (d deadlines) down(i int) bool {
	e := d[i]
	start := i
	n := len(d)
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		if r := c + 1; r < n && d[r].due < d[c].due {
			c = r
		}
		if e.due <= d[c].due {
			break
		}
		d[i] = d[c]
		d[i].idx = int32(i)
		i = c
	}
	d[i] = e
	e.idx = int32(i)
	return i > start
}

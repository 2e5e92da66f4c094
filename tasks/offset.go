package tasks

import (
	"sync"
	"sync/atomic"
	"time"
)

// driftPPM is how fast the bounds on the clock offset are let widen as they
// age, in parts per million (µs a second): what two machines' clocks may
// drift apart between readings. One machine's two clocks do not drift.
const driftPPM = 50

// clockOffset estimates Redis's clock minus monoNow, in µs, from scripts'
// readings of Redis TIME. A reading taken by a script sent at local time
// start and answered at end bounds the offset: Redis read its clock between
// the two, so the offset is at least now - end and at most now - start.
// Every reading narrows the bounds the earlier ones set (each widened by
// driftPPM for its age), so one quick round trip keeps them tight while the
// others are slow: a round trip that waited behind others in Redis (a
// loaded server, a pipeline of a hundred passes) can last a second, and the
// midpoint of its own bounds be off by half of it. Bounds that no longer
// meet mean a clock stepped: the estimate starts over from the reading.
//
// Deadlines are turned into local times with the lower bound (see due): a
// pass sent then reaches Redis when the deadline has passed by Redis's own
// clock, never before, at the cost of the bounds' width (tens of
// microseconds after a quick round trip). Deadlines of the same millisecond
// then map to the same local time in every shard, and go out together.
type clockOffset struct {
	us    atomic.Int64 // the estimate (the bounds' middle), read without the lock
	lower atomic.Int64 // the lower bound

	mu     sync.Mutex
	lo, hi int64 // the bounds, as of at
	at     int64 // monoNow's clock
	valid  bool
}

// guess starts the estimate from the local wall clock, for the deadlines
// learnt before the first reading of Redis's (Redis down at start): Redis's
// clock is usually close to ours.
func (c *clockOffset) guess() {
	g := time.Now().UnixMicro() - monoNow()/1000
	c.us.Store(g)
	c.lower.Store(g)
}

// load is the estimate.
func (c *clockOffset) load() int64 { return c.us.Load() }

// due is the local time (monoNow's clock) from which Redis's clock is
// surely at or past dueMs (Redis ms since the Unix epoch).
func (c *clockOffset) due(dueMs int64) int64 { return (dueMs*1000 - c.lower.Load()) * 1000 }

// sample adds a reading: Redis's clock was redisUs at some local time in
// [start, end] (monoNow's clock, ns).
func (c *clockOffset) sample(redisUs, start, end int64) {
	lo, hi := redisUs-end/1000, redisUs-start/1000
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.valid {
		widen := max(0, end-c.at) / 1000 * driftPPM / 1_000_000
		klo, khi := c.lo-widen, c.hi+widen
		if lo <= khi && hi >= klo {
			lo, hi = max(lo, klo), min(hi, khi)
		}
	}
	c.lo, c.hi, c.at, c.valid = lo, hi, end, true
	c.us.Store((lo + hi) / 2)
	c.lower.Store(lo)
}

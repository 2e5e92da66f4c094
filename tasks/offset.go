package tasks

import (
	"sync"
	"sync/atomic"
	"time"
)

// offsetWindow is how long a bound on the clock offset is trusted: long
// enough to hold a tight sample from a quiet moment, short enough to follow
// the drift between two clocks (parts per million: microseconds a second).
const offsetWindow = int64(2e9) // ns

// clockOffset estimates Redis's clock minus monoNow, in µs, from scripts'
// readings of Redis TIME. A reading taken by a script sent at local time
// start and answered at end bounds the offset: Redis read its clock between
// the two, so the offset is at least now - end and at most now - start.
// The estimate is the middle of the tightest bounds seen in the last
// window or two. A single midpoint per round trip would do on a quiet
// machine, but a round trip that waited behind others in Redis (a loaded
// server, a pipeline of a hundred passes) is long, and its midpoint can be
// off by half of it: deadlines turned into local times with it would come
// early, and passes find nothing due yet.
//
// Deadlines are turned into local times with the lower bound (see due): a
// pass sent then reaches Redis when the deadline has passed by Redis's own
// clock, never before, at the cost of the bounds' width (a quick round
// trip: tens of microseconds). Deadlines of the same millisecond then map
// to the same local time in every shard, and go out together.
type clockOffset struct {
	us    atomic.Int64 // the estimate, read without the lock
	lower atomic.Int64 // its lower bound

	mu sync.Mutex
	// lo and hi are the tightest bounds of the current window (since
	// started) and of the previous one (prevLo, prevHi).
	lo, hi, prevLo, prevHi int64
	started                int64
	valid, prevValid       bool
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
	if !c.valid || end-c.started >= offsetWindow {
		c.prevLo, c.prevHi, c.prevValid = c.lo, c.hi, c.valid
		c.lo, c.hi, c.started, c.valid = lo, hi, end, true
	} else {
		c.lo, c.hi = max(c.lo, lo), min(c.hi, hi)
	}
	bestLo, bestHi := c.lo, c.hi
	if c.prevValid {
		bestLo, bestHi = max(bestLo, c.prevLo), min(bestHi, c.prevHi)
	}
	if bestLo > bestHi {
		// The bounds disagree: one of the clocks stepped. Start over from
		// this reading.
		c.prevValid = false
		c.lo, c.hi, c.started = lo, hi, end
		bestLo, bestHi = lo, hi
	}
	c.us.Store((bestLo + bestHi) / 2)
	c.lower.Store(bestLo)
}

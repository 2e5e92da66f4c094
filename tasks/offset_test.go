package tasks

import (
	"testing"
	"time"
)

// A round trip that waited behind others in Redis bounds the offset loosely
// and must not move an estimate that a quick one bounded tightly; a clock
// that stepped (bounds that disagree) is followed at once.
func TestClockOffsetKeepsTheTightestBounds(t *testing.T) {
	const ms = int64(1e6) // ns
	var c clockOffset
	// Redis is 5,000,000 µs ahead. A quick trip: sent at 10 ms, answered
	// 0.2 ms later, Redis read its clock in the middle.
	c.sample(5_000_000+10_100, 10*ms, 10*ms+200_000)
	if got := c.load(); got < 5_000_000-100 || got > 5_000_000+100 {
		t.Fatalf("after a quick trip: %d, want 5,000,000 ± 100", got)
	}
	// A slow trip (150 ms) whose first script ran 149 ms after it was sent:
	// its midpoint would say Redis is 74 ms further ahead.
	c.sample(5_000_000+20_000+149_000, 20*ms, 170*ms)
	if got := c.load(); got < 5_000_000-100 || got > 5_000_000+100 {
		t.Fatalf("after a slow trip: %d, want still 5,000,000 ± 100", got)
	}
	// Ten seconds of slow round trips only (a second each, Redis answering
	// at a random point of it): the quick one's bounds, widened by the
	// drift allowance, still hold the estimate, and the lower bound is
	// never above the truth.
	for i := int64(0); i < 10; i++ {
		start := (1_000 + i*1_000) * ms
		at := start + (i*337%1000)*ms
		c.sample(5_000_000+at/1000, start, start+1_000*ms)
		if got := c.load(); got < 5_000_000-700 || got > 5_000_000+700 {
			t.Fatalf("after %d slow trips: %d, want 5,000,000 ± 700", i+1, got)
		}
		if c.lower.Load() > 5_000_000 {
			t.Fatalf("lower bound %d above the offset", c.lower.Load())
		}
	}
	// A quick trip again narrows it.
	c.sample(5_000_000+20_000_050, 20_000*ms, 20_000*ms+100_000)
	if got := c.load(); got < 5_000_000-60 || got > 5_000_000+60 {
		t.Fatalf("after a quick trip again: %d", got)
	}
	// Redis's clock stepped a second back: the bounds disagree with the
	// old ones, and the estimate follows the new reading.
	c.sample(4_000_000+20_010_050, 20_010*ms, 20_010*ms+100_000)
	if got := c.load(); got < 4_000_000-60 || got > 4_000_000+60 {
		t.Fatalf("after a step: %d, want 4,000,000 ± 60", got)
	}
}

// Before any reading of Redis's clock (Redis down at start), the estimate
// is our own wall clock: a deadline learnt meanwhile comes due about when
// it should, not decades late.
func TestClockOffsetGuessIsTheWallClock(t *testing.T) {
	var c clockOffset
	c.guess()
	local := (time.Now().UnixMicro() - c.load()) * 1000 // now, on monoNow's clock
	if d := local - monoNow(); d < -int64(time.Second) || d > int64(time.Second) {
		t.Fatalf("a deadline due now is due %s from now", time.Duration(d))
	}
}

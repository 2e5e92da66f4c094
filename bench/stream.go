package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/keeperhq/keeper/queue"
	"github.com/redis/go-redis/v9"
)

// lockStream is a steady stream of unlocks seeded into shards of one queue:
// message i of the whole stream unlocks at start + i/rate, and shard p holds
// every len(shards)-th one from i = p, as message ids m0, m1, ... of its
// own. Seeding a million messages takes seconds, longer on a loaded
// machine, so the stream is laid out relative to the end of seeding rather
// than its start: whatever came due while seeding (or would come due
// within the lead) is moved to the stream's end (rotate), which keeps the
// rate steady and every message locked.
type lockStream struct {
	rdb    redis.UniversalClient
	shards []queue.Shard
	per    int   // messages per shard
	stepUs int64 // between two unlocks of one shard
	// firstMs is the unlock time of message 0 of each shard as seeded;
	// message j of shard p unlocks at firstMs[p] + j*stepUs/1000 + k*periodMs
	// where k is how often it was moved to the end (turns[p][j]).
	firstMs  []int64
	periodMs int64
	turns    [][]uint16
}

// newLockStream seeds total messages (rounded down to a multiple of the
// shard count) over shards, unlocking at rate per second from start (Redis
// time). Callers then rotate it, so that seeding time does not matter.
func newLockStream(ctx context.Context, rdb redis.UniversalClient, shards []queue.Shard, total, rate int, start time.Time) (*lockStream, error) {
	if rate <= 0 || total < len(shards) || len(shards) == 0 {
		return nil, fmt.Errorf("a stream needs a positive rate and at least one message per shard (%d messages, %d shards, rate %d)", total, len(shards), rate)
	}
	step := time.Second / time.Duration(rate)
	s := &lockStream{rdb: rdb, shards: shards, per: total / len(shards),
		stepUs:  (step * time.Duration(len(shards))).Microseconds(),
		firstMs: make([]int64, len(shards)), turns: make([][]uint16, len(shards))}
	if s.stepUs <= 0 {
		return nil, fmt.Errorf("rate %d is too high to space one shard's unlocks", rate)
	}
	s.periodMs = max(1, int64(s.per)*s.stepUs/1000)
	in := queue.NewInspector(rdb, "")
	for p, sh := range shards {
		s.firstMs[p] = start.Add(time.Duration(p) * step).UnixMilli()
		s.turns[p] = make([]uint16, s.per)
		if err := in.SeedLocked(ctx, sh, "m", 0, s.per, s.firstMs[p], time.Duration(s.stepUs)*time.Microsecond, []byte("x")); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// due is when message j of shard p unlocks now.
func (s *lockStream) due(p, j int) int64 {
	return s.firstMs[p] + int64(j)*s.stepUs/1000 + int64(s.turns[p][j])*s.periodMs
}

// rotate moves every message that unlocks before lead from now to the end
// of the stream (one period later, as often as needed), and again until
// the moves themselves left none too early. It returns the stream's first
// unlock (Redis ms).
func (s *lockStream) rotate(ctx context.Context, lead time.Duration) (int64, error) {
	in := queue.NewInspector(s.rdb, "")
	var took time.Duration // the last round
	for round := 0; ; round++ {
		now, err := redisNow(ctx, s.rdb)
		if err != nil {
			return 0, err
		}
		first := s.first()
		// A lead shorter than a round (a loaded machine) cannot be kept:
		// once a round left nothing overdue, the stream starts as soon as
		// it can.
		if first >= now.Add(lead/2).UnixMilli() || (round > 0 && first > now.UnixMilli()) {
			return first, nil
		}
		if round == 20 {
			return 0, fmt.Errorf("the stream could not be laid out %s ahead of Redis's clock in %d rounds", lead, round)
		}
		start := time.Now()
		cutoff := now.Add(max(lead, 2*took)).UnixMilli()
		for p, sh := range s.shards {
			// Messages are in unlock order within a shard's current turn;
			// runs of equal new turns are seeded again in one call (the
			// seed script rewrites their scores; it also counts them as
			// enqueued again, which this benchmark's queue never audits).
			for j := 0; j < s.per; {
				k := s.turnFor(p, j, cutoff)
				if k == s.turns[p][j] {
					j++
					continue
				}
				end := j + 1
				for end < s.per && s.turns[p][end] != s.turnFor(p, end, cutoff) && s.turnFor(p, end, cutoff) == k {
					end++
				}
				for x := j; x < end; x++ {
					s.turns[p][x] = k
				}
				at := s.firstMs[p] + int64(k)*s.periodMs
				if err := in.SeedLocked(ctx, sh, "m", j, end-j, at, time.Duration(s.stepUs)*time.Microsecond, []byte("x")); err != nil {
					return 0, err
				}
				j = end
			}
		}
		took = time.Since(start)
	}
}

// turnFor is the turn message j of shard p needs to unlock at cutoff or later.
func (s *lockStream) turnFor(p, j int, cutoff int64) uint16 {
	k := s.turns[p][j]
	if d := s.due(p, j); d < cutoff {
		k += uint16((cutoff - d + s.periodMs - 1) / s.periodMs)
	}
	return k
}

// first is the earliest unlock of the stream (Redis ms).
func (s *lockStream) first() int64 {
	first := int64(-1)
	for p := range s.shards {
		for j := 0; j < s.per; j++ {
			if d := s.due(p, j); first < 0 || d < first {
				first = d
			}
		}
	}
	return first
}

// count is the number of messages in the stream.
func (s *lockStream) count() int { return s.per * len(s.shards) }

// redisNow is Redis's clock.
func redisNow(ctx context.Context, rdb redis.UniversalClient) (time.Time, error) {
	t, err := rdb.Time(ctx).Result()
	if err != nil {
		return time.Time{}, fmt.Errorf("redis TIME: %w", err)
	}
	return t, nil
}

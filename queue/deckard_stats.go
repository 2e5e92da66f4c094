package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// DeckardStats is what operators see of one Deckard queue (`keeper queue
// stats|list` with the deckard layout): its pools, its next deadlines and
// keeper's counters and fence for it. Read without a script and without
// writing, so it is a snapshot of a moving queue, not one instant.
type DeckardStats struct {
	Queue    string `json:"queue"`
	Ready    int64  `json:"ready"`
	Inflight int64  `json:"inflight"`
	LockAck  int64  `json:"lock_ack"`
	LockNack int64  `json:"lock_nack"`
	// SavedAck and SavedNack count the saved scores of locked ids.
	SavedAck  int64 `json:"saved_ack"`
	SavedNack int64 `json:"saved_nack"`
	// OldestReadyAgeMs is now minus the lowest ready score in
	// [DeckardAddTimeMin, now] (Deckard's default score is the add time);
	// 0 when none.
	OldestReadyAgeMs int64 `json:"oldest_ready_age_ms"`
	// NextTimeoutMs and NextUnlockMs are the earliest deadlines (epoch ms
	// of the Deckard pods' clocks), -1 when none.
	NextTimeoutMs int64 `json:"next_timeout_ms"`
	NextUnlockMs  int64 `json:"next_unlock_ms"`
	// Fence and Owner are keeper's fence of the queue (0 and "" before
	// any keeper claimed it).
	Fence int64  `json:"fence"`
	Owner string `json:"owner,omitempty"`
	// Counters are keeper's: UnlockedAck, UnlockedNack (and their sum
	// Unlocked) and Requeued (timed out).
	Counters Counters `json:"counters"`
}

// DeckardAddTimeMin is the lowest ready score that reads as an add time
// for the oldest-ready age (epoch ms: September 2001). Deckard's default
// score is the add time; a client may give any score instead, a priority
// (0 is the top one, where Deckard puts nacked and timed-out ids), which is
// no age. deckard_lib.lua holds the same bound (ADD_TIME_MIN).
const DeckardAddTimeMin = 1_000_000_000_000

// deckardStatsCmds are the reads of one queue's stats, in one pipeline.
type deckardStatsCmds struct {
	ready, tmp, ack, nack, savedAck, savedNack *redis.IntCmd
	head, tmpHead, ackHead, nackHead           *redis.ZSliceCmd
	stats                                      *redis.MapStringStringCmd
	fence, owner                               *redis.StringCmd
}

// StatsOf reads the stats of the queues, pipelined (one round trip per
// node), in their order. A queue with no key at all reads as empty.
func (d *Deckard) StatsOf(ctx context.Context, queues []string) ([]DeckardStats, error) {
	for _, q := range queues {
		if err := ValidateDeckardName(q); err != nil {
			return nil, err
		}
	}
	now, err := d.Now(ctx)
	if err != nil {
		return nil, err
	}
	nowMs := now.UnixMilli()
	cmds := make([]deckardStatsCmds, len(queues))
	res, err := d.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, q := range queues {
			k, c := d.keys(Shard{Queue: q}), &cmds[i]
			c.ready, c.tmp, c.ack, c.nack = p.ZCard(ctx, k.Ready), p.ZCard(ctx, k.Tmp), p.ZCard(ctx, k.LockAck), p.ZCard(ctx, k.LockNack)
			c.savedAck, c.savedNack = p.ZCard(ctx, k.LockAckScore), p.ZCard(ctx, k.LockNackScore)
			c.head = p.ZRangeByScoreWithScores(ctx, k.Ready, &redis.ZRangeBy{Min: fmt.Sprint(DeckardAddTimeMin), Max: fmt.Sprint(nowMs), Count: 1})
			c.tmpHead = p.ZRangeWithScores(ctx, k.Tmp, 0, 0)
			c.ackHead, c.nackHead = p.ZRangeWithScores(ctx, k.LockAck, 0, 0), p.ZRangeWithScores(ctx, k.LockNack, 0, 0)
			c.stats = p.HGetAll(ctx, k.Stats)
			c.fence, c.owner = p.Get(ctx, k.Fence), p.Get(ctx, k.FenceOwner)
		}
		return nil
	})
	// A missing fence reads as redis.Nil; any other error (a key of
	// another type) fails the whole read.
	for _, c := range res {
		if e := c.Err(); e != nil && !errors.Is(e, redis.Nil) {
			return nil, fmt.Errorf("deckard queue stats: %w", e)
		}
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("deckard queue stats: %w", err)
	}
	out := make([]DeckardStats, len(queues))
	for i, q := range queues {
		c := cmds[i]
		s := DeckardStats{Queue: q, Ready: c.ready.Val(), Inflight: c.tmp.Val(), LockAck: c.ack.Val(),
			LockNack: c.nack.Val(), SavedAck: c.savedAck.Val(), SavedNack: c.savedNack.Val(),
			NextTimeoutMs: headMs(c.tmpHead), NextUnlockMs: headMs(c.ackHead), Owner: c.owner.Val()}
		if n := headMs(c.nackHead); n >= 0 && (s.NextUnlockMs < 0 || n < s.NextUnlockMs) {
			s.NextUnlockMs = n
		}
		if h := c.head.Val(); len(h) == 1 {
			s.OldestReadyAgeMs = max(0, nowMs-int64(h[0].Score))
		}
		s.Fence, _ = c.fence.Int64()
		for f, v := range c.stats.Val() {
			s.Counters.readCounter(f, v)
		}
		s.Counters.Unlocked = s.Counters.UnlockedAck + s.Counters.UnlockedNack
		out[i] = s
	}
	return out, nil
}

// headMs is the score of a one-element ZRANGE, -1 for none; negative
// scores read as 0 (due).
func headMs(c *redis.ZSliceCmd) int64 {
	z := c.Val()
	if len(z) == 0 {
		return -1
	}
	return max(0, int64(z[0].Score))
}

// OldestReadyAge is the stats' oldest-ready age as a duration.
func (s DeckardStats) OldestReadyAge() time.Duration {
	return time.Duration(s.OldestReadyAgeMs) * time.Millisecond
}

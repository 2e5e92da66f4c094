package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/keeperhq/keeper/internal/progress"
	"github.com/redis/go-redis/v9"
)

// Audit is a full consistency check of one queue: invariants 1 and 2 of the
// design brief. It reads every member of every set, so it is an operator and
// test tool, not something to run on a hot path.
type Audit struct {
	Queue                         string   `json:"queue"`
	Ready, Inflight, Locked, Dead int64    `json:"-"`
	Counters                      Counters `json:"counters"`
	// Problems lists every violation found; empty means consistent.
	Problems []string `json:"problems"`
	// Members maps each message id present to its set, for tests and the
	// chaos checker that track ids themselves.
	Members map[string]State `json:"-"`
}

// Accounted is what the counters say should be in the sets: every message
// enqueued is acked, expired, trimmed, or still present.
func (a Audit) Accounted() int64 {
	c := a.Counters
	return c.Enqueued - c.Acked - c.Expired - c.Trimmed
}

// Present is the number of messages in the sets.
func (a Audit) Present() int64 { return a.Ready + a.Inflight + a.Locked + a.Dead }

// Audit checks queue: no id in two sets, nor in two shards, every id in a
// set has its body and metadata and nothing else does, in-flight ids hold a
// token and others don't, the TTL index holds only ready, locked or dead
// ids, no shard was set to a newer config than the published one (an update
// that did not finish), and the counters balance (enqueued = acked +
// expired + trimmed + present).
func (c *Client) Audit(ctx context.Context, queue string) (Audit, error) {
	st, err := c.reg.getStored(ctx, c.rdb, queue)
	if err != nil {
		return Audit{}, err
	}
	a := Audit{Queue: queue, Members: map[string]State{}}
	shardOf := map[string]Shard{}
	pr := progress.From(ctx)
	pr.Phase("audit "+queue, int64(st.Partitions), "shards")
	for p := 0; p < st.Partitions; p++ {
		if err := c.auditShard(ctx, Shard{queue, p}, st.Generation, &a, shardOf); err != nil {
			return Audit{}, err
		}
		pr.Add(1)
		pr.Detail("%d messages, %d problems", a.Present(), len(a.Problems))
	}
	if a.Accounted() != a.Present() {
		a.Problems = append(a.Problems, fmt.Sprintf(
			"counters do not balance: enqueued %d - acked %d - expired %d - trimmed %d = %d, but %d are present",
			a.Counters.Enqueued, a.Counters.Acked, a.Counters.Expired, a.Counters.Trimmed, a.Accounted(), a.Present()))
	}
	return a, nil
}

// auditShard adds s to a; shardOf is where each id was found so far.
func (c *Client) auditShard(ctx context.Context, s Shard, generation int64, a *Audit, shardOf map[string]Shard) error {
	k := keysFor(c.prefix, s)
	var (
		sets  [4]*redis.StringSliceCmd
		ttl   *redis.StringSliceCmd
		body  *redis.StringSliceCmd
		meta  *redis.StringSliceCmd
		tok   *redis.StringSliceCmd
		stats *redis.MapStringStringCmd
		gen   *redis.StringCmd
	)
	// MULTI/EXEC so the audit sees one consistent moment of the shard.
	_, err := c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for i, key := range []string{k.Ready, k.Inflight, k.Locked, k.Dead} {
			sets[i] = p.ZRange(ctx, key, 0, -1)
		}
		ttl = p.ZRange(ctx, k.TTL, 0, -1)
		body = p.HKeys(ctx, k.Body)
		meta = p.HKeys(ctx, k.Meta)
		tok = p.HKeys(ctx, k.Tok)
		stats = p.HGetAll(ctx, k.Stats)
		gen = p.Get(ctx, k.Gen)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("audit %s: %w", s, asError(err, s, 0))
	}
	states := []State{StateReady, StateInflight, StateLocked, StateDead}
	where := map[string]State{}
	bad := func(format string, args ...any) {
		a.Problems = append(a.Problems, s.String()+": "+fmt.Sprintf(format, args...))
	}
	if g, _ := strconv.ParseInt(gen.Val(), 10, 64); g > generation {
		bad("set to config generation %d, but the published config is at %d: a config update did not finish (run `keeper queue update %s` again)",
			g, generation, s.Queue)
	}
	for i, cmd := range sets {
		for _, id := range cmd.Val() {
			if prev, ok := where[id]; ok {
				bad("%s is in %s and %s", id, prev, states[i])
			} else if other, ok := shardOf[id]; ok {
				bad("%s is in shard %s (%s) and in shard %s (%s)", id, other, a.Members[id], s, states[i])
			}
			where[id] = states[i]
			shardOf[id] = s
			a.Members[id] = states[i]
		}
	}
	a.Ready += int64(len(sets[0].Val()))
	a.Inflight += int64(len(sets[1].Val()))
	a.Locked += int64(len(sets[2].Val()))
	a.Dead += int64(len(sets[3].Val()))
	for name, ids := range map[string][]string{"body": body.Val(), "meta": meta.Val()} {
		seen := map[string]bool{}
		for _, id := range ids {
			seen[id] = true
			if _, ok := where[id]; !ok {
				bad("%s has a %s but is in no set", id, name)
			}
		}
		for id := range where {
			if !seen[id] {
				bad("%s is %s but has no %s", id, where[id], name)
			}
		}
	}
	tokens := map[string]bool{}
	for _, id := range tok.Val() {
		tokens[id] = true
		if where[id] != StateInflight {
			bad("%s holds a delivery token but is %q", id, where[id])
		}
	}
	for _, id := range sets[1].Val() {
		if !tokens[id] {
			bad("%s is in flight without a delivery token", id)
		}
	}
	for _, id := range ttl.Val() {
		if st := where[id]; st == StateInflight || st == "" {
			bad("%s is in the TTL index but is %q", id, st)
		}
	}
	var counted Counters
	counted.readCounters(stats.Val())
	a.Counters = a.Counters.Add(counted)
	return nil
}

// The client's read-only views for operators (inspect an id, a queue's
// statistics) and the fence reset of `keeper queue reset-fences`.

package queue

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// MessageInfo describes one message.
type MessageInfo struct {
	ID           string    `json:"id"`
	Shard        string    `json:"shard"`
	State        State     `json:"state"`
	Score        float64   `json:"score"` // priority in ready, deadline in inflight/locked, time dead-lettered in dead
	Priority     int64     `json:"priority"`
	Deliveries   int       `json:"deliveries"`
	EnqueuedAt   time.Time `json:"enqueued_at"`
	ExpiresAt    time.Time `json:"expires_at,omitzero"`
	PayloadBytes int       `json:"payload_bytes"`
}

// Inspect finds one message. It looks in the id's partition first, then in
// the others (the id may predate a partition increase).
func (c *Client) Inspect(ctx context.Context, queue, id string) (MessageInfo, error) {
	cfg, err := c.config(ctx, queue)
	if err != nil {
		return MessageInfo{}, err
	}
	if err := ValidateID(id); err != nil {
		return MessageInfo{}, err
	}
	home := PartitionOf(id, cfg.Partitions)
	for i := 0; i < cfg.Partitions; i++ {
		s := Shard{Queue: queue, Partition: (home + i) % cfg.Partitions}
		res, err := decodeInspect(inspectScript.on(keysFor(c.prefix, s), id).run(ctx, c.rdb))
		if err != nil {
			return MessageInfo{}, fmt.Errorf("inspect %s: %w", id, c.scriptError(err, s))
		}
		if res.State == "" && res.Meta == "" {
			continue
		}
		info := MessageInfo{ID: id, Shard: s.String(), State: res.State, PayloadBytes: int(res.PayloadBytes)}
		info.Score, _ = strconv.ParseFloat(res.Score, 64)
		info.Priority, _ = strconv.ParseInt(res.Priority, 10, 64)
		info.Deliveries, _ = strconv.Atoi(res.Deliveries)
		var enq, exp int64
		if _, err := fmt.Sscanf(res.Meta, "%d|%d", &enq, &exp); err == nil {
			info.EnqueuedAt = time.UnixMilli(enq)
			if exp > 0 {
				info.ExpiresAt = time.UnixMilli(exp)
			}
		}
		return info, nil
	}
	return MessageInfo{}, fmt.Errorf("%w: %s in %s", ErrNotFound, id, queue)
}

// ShardStats are one shard's counts and cumulative counters.
type ShardStats struct {
	Shard    string   `json:"shard"`
	Ready    int64    `json:"ready"`
	Inflight int64    `json:"inflight"`
	Locked   int64    `json:"locked"`
	Dead     int64    `json:"dead"`
	Fence    int64    `json:"fence"`
	Counters Counters `json:"counters"`
}

// QueueStats sums a queue's shards.
type QueueStats struct {
	Queue    string       `json:"queue"`
	Config   Config       `json:"config"`
	Ready    int64        `json:"ready"`
	Inflight int64        `json:"inflight"`
	Locked   int64        `json:"locked"`
	Dead     int64        `json:"dead"`
	Counters Counters     `json:"counters"`
	Shards   []ShardStats `json:"shards"`
}

// ResetFences deletes the fence of every partition of queue and returns the
// fences it removed (0: none was set), by partition. The next keeper to
// claim each shard sets the fence again from its own token.
//
// It is for one recovery only: after etcd's data was reset, tokens restart
// below the fences and every keeper is refused. Run it once no keeper that
// used the old etcd is left running, paused or partitioned included: until
// the new owner's first claim such a keeper's old token would be accepted.
func (c *Client) ResetFences(ctx context.Context, queue string) ([]int64, error) {
	cfg, err := c.reg.Get(ctx, queue)
	if err != nil {
		return nil, err
	}
	cmds := make([]*redis.StringCmd, cfg.Partitions)
	_, err = c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range cmds {
			k := keysFor(c.prefix, Shard{queue, i})
			cmds[i] = p.GetDel(ctx, k.Fence)
			p.Del(ctx, k.FenceOwner)
		}
		return nil
	})
	if err != nil && err != redis.Nil {
		return nil, fmt.Errorf("reset fences of %s: %w", queue, asError(err, Shard{queue, 0}, 0))
	}
	old := make([]int64, len(cmds))
	for i, cmd := range cmds {
		old[i], _ = strconv.ParseInt(cmd.Val(), 10, 64)
	}
	return old, nil
}

// Stats reads the counts of every shard of queue in one pipeline.
func (c *Client) Stats(ctx context.Context, queue string) (QueueStats, error) {
	cfg, err := c.reg.Get(ctx, queue)
	if err != nil {
		return QueueStats{}, err
	}
	type cmds struct {
		r, i, l, d *redis.IntCmd
		f          *redis.StringCmd
		st         *redis.MapStringStringCmd
	}
	all := make([]cmds, cfg.Partitions)
	_, err = c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range all {
			k := keysFor(c.prefix, Shard{queue, i})
			all[i] = cmds{p.ZCard(ctx, k.Ready), p.ZCard(ctx, k.Inflight), p.ZCard(ctx, k.Locked),
				p.ZCard(ctx, k.Dead), p.Get(ctx, k.Fence), p.HGetAll(ctx, k.Stats)}
		}
		return nil
	})
	if err != nil && err != redis.Nil {
		return QueueStats{}, fmt.Errorf("stats of %s: %w", queue, asError(err, Shard{queue, 0}, 0))
	}
	qs := QueueStats{Queue: queue, Config: cfg}
	for i, c := range all {
		ss := ShardStats{Shard: Shard{queue, i}.String(), Ready: c.r.Val(), Inflight: c.i.Val(),
			Locked: c.l.Val(), Dead: c.d.Val()}
		ss.Fence, _ = strconv.ParseInt(c.f.Val(), 10, 64)
		ss.Counters.readCounters(c.st.Val())
		qs.Counters = qs.Counters.Add(ss.Counters)
		qs.Ready += ss.Ready
		qs.Inflight += ss.Inflight
		qs.Locked += ss.Locked
		qs.Dead += ss.Dead
		qs.Shards = append(qs.Shards, ss)
	}
	return qs, nil
}

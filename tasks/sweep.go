package tasks

import (
	"context"
	"errors"
	"time"

	"github.com/keeperhq/keeper/queue"
)

// probeChunk bounds one probe pipeline, so a keeper taking over thousands of
// shards does not hold Redis for long in one go.
const probeChunk = 500

// sweep probes shards to learn deadlines the keeper could not have heard of:
// newly owned shards and all shards after a lost subscription at once, and
// every owned shard once per SweepInterval, spread evenly, as a safety net
// (for example against writers that bypass the native client).
func (k *Keeper) sweep(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var (
		cycle  []*shardState // this sweep cycle's shards
		cursor int
		credit float64 // shards due to be swept, accrued each tick
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-k.probeCh:
		case <-tick.C:
			k.mu.Lock()
			if cursor >= len(cycle) {
				cycle = cycle[:0]
				for _, st := range k.shards {
					cycle = append(cycle, st)
				}
				cursor = 0
			}
			credit += float64(len(k.shards)) * time.Second.Seconds() / k.cfg.SweepInterval.Seconds()
			for credit >= 1 && cursor < len(cycle) {
				k.queueProbeLocked(cycle[cursor])
				cursor++
				credit--
			}
			if cursor >= len(cycle) {
				credit = 0
			}
			k.mu.Unlock()
		}
		for {
			k.mu.Lock()
			n := min(len(k.probe), probeChunk)
			batch := append([]*shardState(nil), k.probe[:n]...)
			for _, st := range batch {
				st.queued = false
			}
			k.probe = k.probe[n:]
			if len(k.probe) == 0 {
				k.probe = nil
			}
			k.mu.Unlock()
			if n == 0 {
				break
			}
			k.probeBatch(ctx, batch)
		}
	}
}

func (k *Keeper) probeBatch(ctx context.Context, batch []*shardState) {
	reqs := make([]queue.ProbeRequest, 0, len(batch))
	k.mu.Lock()
	live := batch[:0]
	for _, st := range batch {
		if !st.gone {
			live = append(live, st)
			reqs = append(reqs, queue.ProbeRequest{Shard: st.shard, MaxSize: st.cfg.MaxSize,
				Claim: !st.claimed, Token: st.token})
			// A probe may claim the shard's fence: a Disown must wait
			// for it like for a pass, or the claim can reach Redis after
			// the successor's (the chaos harness saw that 30ms after a
			// handoff).
			st.busy++
		}
	}
	k.mu.Unlock()
	if len(reqs) == 0 {
		return
	}
	start := time.Now()
	res, err := k.layout.Probe(ctx, reqs)
	now := time.Now()
	k.mu.Lock()
	for _, st := range live {
		st.busy--
		k.releaseIfIdleLocked(st)
	}
	k.mu.Unlock()
	k.log.Debug("probed", "shards", len(reqs), "took", now.Sub(start).Round(time.Millisecond))
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		k.log.Error("probe failed; will retry", "shards", len(reqs), "err", err)
		if rec := k.cfg.Recorder; rec != nil {
			rec.RecordError(ctx, ErrorKind(err))
		}
		// Try again in a second rather than lose these shards' deadlines.
		time.AfterFunc(time.Second, func() {
			k.mu.Lock()
			for _, st := range live {
				k.queueProbeLocked(st)
			}
			k.mu.Unlock()
			k.signal(k.probeCh)
		})
		return
	}
	redisNowUs := now.UnixMicro() + k.offsetUs.Load()
	var fenced []*queue.FencedError
	var fencedShards []*shardState
	var drop []queue.Shard
	k.mu.Lock()
	for i, st := range live {
		r := res[i]
		if st.gone {
			continue
		}
		var fe *queue.FencedError
		if errors.As(r.Err, &fe) {
			drop = append(drop, st.shard)
			fenced, fencedShards = append(fenced, fe), append(fencedShards, st)
			continue
		}
		if r.Err != nil {
			k.failLocked(st, Unlock, r.Err, now)
			continue
		}
		if reqs[i].Claim && reqs[i].Token == st.token {
			st.claimed = true
		}
		heads := [...]struct {
			task queue.Task
			at   int64
		}{{Unlock, r.LockedHead}, {Requeue, r.InflightHead}, {Expire, r.TTLHead}}
		for _, h := range heads {
			if h.at >= 0 {
				k.heap.schedule(st, h.task, k.localTime(h.at, redisNowUs, now))
			}
		}
		if r.Excess > 0 {
			k.heap.schedule(st, Trim, now)
		}
	}
	k.dropLocked(drop, true)
	k.mu.Unlock()
	k.signal(k.kick)
	for i, fe := range fenced {
		k.reportFenced(fencedShards[i], fe, "claim")
	}
}

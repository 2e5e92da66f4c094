package tasks

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/keeperhq/keeper/queue"
)

// probeChunk bounds one probe pipeline, so a keeper taking over thousands of
// shards does not hold Redis for long in one go.
const probeChunk = 250

// ProbePipelines is how many probe pipelines run at once, each on its own
// connection (a Redis client needs that many connections beside its
// Workers'). Redis serves its clients in turns of at most 16 KB of
// requests each, and a claim asks ~450 bytes a shard: one pipeline at a
// time got a takeover's claims a small share of a Redis busy with passes
// (500 claims took 0.3–1.4 s while Redis needed ~30 ms for them).
const ProbePipelines = 8

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
			// Up to ProbePipelines batches at once. No shard is in two
			// of them: a shard is queued once until its batch forms.
			var batches [][]*shardState
			k.mu.Lock()
			for len(batches) < ProbePipelines && len(k.probe) > 0 {
				n := min(len(k.probe), probeChunk)
				batch := append([]*shardState(nil), k.probe[:n]...)
				for _, st := range batch {
					st.queued = false
				}
				k.probe = k.probe[n:]
				batches = append(batches, batch)
			}
			if len(k.probe) == 0 {
				k.probe = nil
			}
			k.mu.Unlock()
			if len(batches) == 0 {
				break
			}
			var wg sync.WaitGroup
			for _, b := range batches {
				wg.Add(1)
				go func() {
					defer wg.Done()
					k.probeBatch(ctx, b)
				}()
			}
			wg.Wait()
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
	start := monoNow()
	res, err := k.layout.Probe(ctx, reqs)
	now := monoNow()
	k.mu.Lock()
	for _, st := range live {
		st.busy--
		k.releaseIfIdleLocked(st)
	}
	k.mu.Unlock()
	k.log.Debug("probed", "shards", len(reqs), "took", time.Duration(now-start).Round(time.Millisecond))
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		k.log.Error("probe failed; will retry", "shards", len(reqs), "err", err)
		if rec := k.cfg.Recorder; rec != nil {
			rec.RecordError(ctx, ErrorKind(err))
		}
		// Try again in a second rather than lose these shards' deadlines.
		k.probeLater(live)
		return
	}
	var fenced []*queue.FencedError
	var fencedShards, unreplicated []*shardState
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
		switch {
		case errors.Is(r.Err, queue.ErrClaimNotReplicated):
			// The fence may be lost in a failover: claim again, rather
			// than wait for the sweep to come round.
			unreplicated = append(unreplicated, st)
			continue
		case errors.Is(r.Err, queue.ErrUnknownQueue):
			k.deletedLocked(st, Unlock, r.Err)
			continue
		case r.Err != nil:
			k.failLocked(st, Unlock, r.Err, now)
			continue
		}
		if st.deleted {
			k.log.Info("queue live again: passes resume", "shard", st.name, "queue", st.shard.Queue)
			st.deleted = false
		}
		if reqs[i].Claim && reqs[i].Token == st.token {
			st.claimed = true
			if !st.measured {
				// Spread first measurements over a quarter interval so
				// that taking over thousands of shards does not measure
				// them all at once.
				k.heap.schedule(st, Measure, now+int64(rand.N(k.cfg.MeasureInterval/4+1)))
			}
		}
		heads := [...]struct {
			task queue.Task
			at   int64
		}{{Unlock, r.LockedHead}, {Requeue, r.InflightHead}, {Expire, r.TTLHead}}
		for _, h := range heads {
			if h.at >= 0 {
				k.heap.schedule(st, h.task, k.localMono(h.at))
			}
		}
		if r.Excess > 0 {
			k.heap.schedule(st, Trim, now)
		}
	}
	k.dropLocked(drop)
	k.mu.Unlock()
	k.signal(k.kick)
	for i, fe := range fenced {
		k.reportFenced(fencedShards[i], fe, "claim")
	}
	if len(unreplicated) > 0 {
		k.log.Warn("claims not acknowledged by a replica; claiming again", "shards", len(unreplicated),
			"shard", unreplicated[0].name, "queue", unreplicated[0].shard.Queue, "retry_in", time.Second)
		if rec := k.cfg.Recorder; rec != nil {
			rec.RecordError(ctx, "unreplicated")
		}
		k.probeLater(unreplicated)
	}
}

// probeLater probes sts again in a second (those still owned then).
func (k *Keeper) probeLater(sts []*shardState) {
	time.AfterFunc(time.Second, func() {
		k.mu.Lock()
		for _, st := range sts {
			if !st.gone {
				k.queueProbeLocked(st)
			}
		}
		k.mu.Unlock()
		k.signal(k.probeCh)
	})
}

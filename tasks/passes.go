package tasks

import (
	"context"
	"errors"
	"math"
	"time"

	"github.com/keeperhq/keeper/queue"
)

// maxPipeline bounds the passes of one round trip, and tripWork the
// messages they are expected to move. Redis runs a pipeline's scripts one
// after another and the replies come back together, so a pass in a round
// trip waits for all the others: many small passes (thousands of shards
// with a message or two due each) share a round trip, a pass with much to
// move goes with few others or alone. A hundred messages is well under a
// millisecond of Redis time.
const (
	maxPipeline = 128
	tripWork    = 100
)

// job is one pass handed to a worker: the shard and task of an entry as it
// was popped (the entry itself may be scheduled again while the pass runs).
type job struct {
	st   *shardState
	task queue.Task
	due  int64
	// work is the messages the pass is expected to move: as many as the
	// shard's last pass of the task moved (a full batch: a backlog).
	work int
}

// trip is the passes of one round trip and the context they run under.
type trip struct {
	ctx  context.Context
	jobs []job
}

// dispatch hands due passes to workers, never more than Workers round trips
// at once, and sleeps until the next deadline otherwise. Whatever is due
// when workers are free goes at once (see planTripsLocked): a pass alone
// when few are due, and when thousands of shards come due together (or
// Redis is slow and passes queue up) up to maxPipeline passes a round trip
// rather than one each.
func (k *Keeper) dispatch(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		k.mu.Lock()
		wait := time.Hour
		for k.trips < k.cfg.Workers {
			now := monoNow()
			plan := k.planTripsLocked(now, k.cfg.Workers-k.trips)
			if len(plan) == 0 {
				if e := k.heap.peek(); e != nil {
					wait = time.Duration(e.due - now)
				}
				break
			}
			for i, jobs := range plan {
				t := trip{ctx: k.passContextLocked(), jobs: jobs}
				k.trips++
				k.mu.Unlock()
				select {
				case k.jobs <- t:
				case <-ctx.Done():
					// No worker took these passes: they never ran, so they
					// must not stay counted, or Disown would wait for them
					// forever.
					k.mu.Lock()
					k.trips--
					for _, rest := range plan[i:] {
						k.putBackLocked(rest)
					}
					k.mu.Unlock()
					return
				}
				k.mu.Lock()
			}
		}
		k.mu.Unlock()
		timer.Reset(max(wait, 0))
		select {
		case <-ctx.Done():
			return
		case <-k.kick:
		case <-timer.C:
		}
	}
}

// planTripsLocked takes the passes due at now into at most free round
// trips. They are spread over the free workers (on a loaded machine a
// round trip's time is mostly waiting to be scheduled, so every free
// worker's round trip should be in flight), each trip taking its share of
// the expected work, in deadline order, up to tripWork messages and
// maxPipeline passes, and at least one pass. What does not fit stays due,
// first in line for the next free worker.
func (k *Keeper) planTripsLocked(now int64, free int) [][]job {
	due := k.takeDueLocked(now, free*maxPipeline)
	if len(due) == 0 {
		return nil
	}
	trips := min(free, len(due))
	total := 0
	for _, j := range due {
		total += j.work
	}
	share := min(max((total+trips-1)/trips, 1), tripWork)
	plan := make([][]job, 0, trips)
	var cur []job
	work, i := 0, 0
	for ; i < len(due); i++ {
		j := due[i]
		if len(cur) > 0 && (work+j.work > share || len(cur) == maxPipeline) {
			plan = append(plan, cur)
			cur, work = nil, 0
			if len(plan) == trips {
				break
			}
		}
		cur = append(cur, j)
		work += j.work
	}
	if len(cur) > 0 {
		plan = append(plan, cur)
	}
	k.putBackLocked(due[i:])
	return plan
}

// takeDueLocked pops up to limit entries due at now, each counted as
// running. An entry whose (shard, task) is running already is not run
// twice at once: it runs again when the running pass ends.
func (k *Keeper) takeDueLocked(now int64, limit int) []job {
	var due []job
	for len(due) < limit {
		e := k.heap.peek()
		if e == nil || e.due > now {
			break
		}
		k.heap.pop()
		st, bit := e.st, uint8(1)<<e.task
		if st.running&bit != 0 {
			st.rerun |= bit
			continue
		}
		st.running |= bit
		st.busy++
		due = append(due, job{st: st, task: e.task, due: e.due, work: max(1, int(st.moved[e.task]))})
	}
	return due
}

// putBackLocked returns passes taken but not sent to the heap, due when
// they were.
func (k *Keeper) putBackLocked(jobs []job) {
	for _, j := range jobs {
		if !j.st.gone {
			k.heap.schedule(j.st, j.task, j.due)
		}
		k.passEndedLocked(j.st, j.task)
	}
}

// passContextLocked is the context of passes sent now: the keeper's life,
// until DisownAll cancels what runs under it.
func (k *Keeper) passContextLocked() context.Context {
	if k.passCtx == nil {
		k.passCtx, k.passCancel = context.WithCancel(k.life())
	}
	return k.passCtx
}

func (k *Keeper) worker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case t := <-k.jobs:
			k.run(t)
		}
	}
}

// run sends the passes of one round trip and schedules what comes next for
// each from its own outcome: a shard's failure or refusal leaves the
// others' results standing.
func (k *Keeper) run(t trip) {
	reqs := make([]queue.PassRequest, 0, len(t.jobs))
	sent := make([]int, 0, len(t.jobs)) // reqs[i] is the pass of t.jobs[sent[i]]
	k.mu.Lock()
	for i, j := range t.jobs {
		st := j.st
		if st.gone || st.deleted {
			continue
		}
		reqs = append(reqs, queue.PassRequest{Shard: st.shard, Task: j.task, Token: st.token, Batch: k.cfg.Batch, Config: st.cfg})
		sent = append(sent, i)
	}
	k.mu.Unlock()

	outs := make([]queue.PassOutcome, len(t.jobs))
	start := monoNow()
	if len(reqs) > 0 {
		for i, o := range k.layout.Passes(t.ctx, reqs) {
			outs[sent[i]] = o
		}
	}
	end := monoNow()
	k.learnOffset(outs, sent, start, end)
	if rec := k.cfg.Recorder; rec != nil {
		took := time.Duration(end - start)
		for _, i := range sent {
			j, o := t.jobs[i], outs[i]
			rec.RecordPass(t.ctx, j.task.String(), took, o.Err)
			if j.task == Unlock {
				for _, lag := range o.Result.Lags {
					rec.RecordUnlockLag(t.ctx, j.st.shard.Queue, j.st.name, lag)
				}
			}
		}
	}

	type refusal struct {
		st *shardState
		fe *queue.FencedError
		t  queue.Task
	}
	var refused []refusal
	k.mu.Lock()
	k.trips--
	next := 0
	for i, j := range t.jobs {
		st, task := j.st, j.task
		k.passEndedLocked(st, task)
		if next >= len(sent) || sent[next] != i {
			continue // not sent: disowned, or its queue deleted
		}
		next++
		o := outs[i]
		var fe *queue.FencedError
		switch {
		case st.gone:
			// Disowned while running: drop the result.
		case errors.As(o.Err, &fe):
			k.dropLocked([]queue.Shard{st.shard})
			refused = append(refused, refusal{st, fe, task})
		case errors.Is(o.Err, queue.ErrUnknownQueue):
			k.deletedLocked(st, task, o.Err)
		case st.deleted:
			// Another pass found the queue deleted meanwhile: a probe
			// decides when passes resume.
		case o.Err != nil:
			k.failLocked(st, task, o.Err, end)
		default:
			k.doneLocked(st, task, o.Result, o.Measurement, end)
		}
		k.releaseIfIdleLocked(st)
	}
	k.mu.Unlock()
	k.signal(k.kick)
	for _, r := range refused {
		k.reportFenced(r.st, r.fe, r.t.String())
	}
}

// learnOffset samples Redis's clock from the first and the last pass of a
// round trip that read it: the first ran closest to the trip's start, the
// last closest to its end, so they bound the offset most tightly.
func (k *Keeper) learnOffset(outs []queue.PassOutcome, sent []int, start, end int64) {
	first, last := -1, -1
	for _, j := range sent {
		if outs[j].Err == nil && outs[j].Result.NowUs != 0 {
			if first < 0 {
				first = j
			}
			last = j
		}
	}
	if first >= 0 {
		k.offset.sample(outs[first].Result.NowUs, start, end)
		if last != first {
			k.offset.sample(outs[last].Result.NowUs, start, end)
		}
	}
}

// passEndedLocked undoes what the dispatcher counted when it handed a pass
// out: the pass ran and returned, or no worker ever took it.
func (k *Keeper) passEndedLocked(st *shardState, task queue.Task) {
	st.running &^= 1 << task
	st.busy--
	k.releaseIfIdleLocked(st)
}

// releaseIfIdleLocked lets a Disown of st return once its last pass ended.
func (k *Keeper) releaseIfIdleLocked(st *shardState) {
	if st.gone && st.busy == 0 && st.idle != nil {
		select {
		case <-st.idle:
		default:
			close(st.idle)
		}
	}
}

// reportFenced tells the log, the metrics and the owner of the ownership
// (OnFenced) that Redis refused our token for a shard we already dropped.
func (k *Keeper) reportFenced(st *shardState, fe *queue.FencedError, what string) {
	k.log.Warn("fenced: redis refused our token, dropping shard",
		"shard", st.name, "queue", st.shard.Queue, "token", fe.Token, "fence", fe.Fence, "task", what)
	if rec := k.cfg.Recorder; rec != nil {
		rec.RecordFenceRefusal(context.Background(), st.shard.Queue, st.name)
	}
	if k.cfg.OnFenced != nil {
		k.cfg.OnFenced(st.shard, fe.Token)
	}
}

func (k *Keeper) doneLocked(st *shardState, task queue.Task, res queue.PassResult, m queue.Measurement, now int64) {
	if f := st.fail; f != nil && f.backoff[task] > 0 {
		k.log.Info("pass recovered", "shard", st.name, "queue", st.shard.Queue, "task", task.String())
		f.backoff[task] = 0
		if f.backoff == ([numTasks]time.Duration{}) {
			st.fail = nil
		}
	}
	if task == Measure {
		st.m, st.measured, st.lastMeasure, st.dirty = m, true, now, false
	}
	if res.Moved > 0 {
		k.markDirtyLocked(st)
	}
	switch task {
	case Trim:
		st.overCap = res.Excess > 0
	case Unlock, Requeue:
		if st.overCap && res.Moved > 0 {
			k.heap.schedule(st, Trim, now)
		}
	}
	bit := uint8(1) << task
	st.moved[task] = uint16(min(res.Moved, math.MaxUint16))
	switch {
	case res.Full || st.rerun&bit != 0:
		k.heap.schedule(st, task, now)
	case res.NextMs >= 0:
		k.heap.schedule(st, task, k.localMono(res.NextMs))
	}
	st.rerun &^= bit
	for _, h := range res.Hints {
		k.heap.schedule(st, h.Task, k.localMono(h.AtMs))
	}
}

// localMono turns a Redis deadline (ms since the Unix epoch) into monoNow's
// clock (see clockOffset.due).
func (k *Keeper) localMono(dueMs int64) int64 { return k.offset.due(dueMs) }

// redisNowUs is Redis's clock (µs) at monoNow's time at.
func (k *Keeper) redisNowUs(at int64) int64 { return at/1000 + k.offset.load() }

func (k *Keeper) markDirtyLocked(st *shardState) {
	st.dirty = true
	next := int64(0) // never measured: at once
	if st.measured {
		next = st.lastMeasure + int64(k.cfg.MeasureInterval)
	} else if !st.claimed || st.entries[Measure].scheduled() {
		// Its first measurement is scheduled by its claim, spread (see
		// probeBatch): the first passes of a takeover change most taken
		// shards, and measuring them all at once would hold Redis from the
		// takeover's claims.
		return
	}
	k.heap.schedule(st, Measure, next)
}

func (k *Keeper) failLocked(st *shardState, task queue.Task, err error, now int64) {
	if st.fail == nil {
		st.fail = &failure{}
	}
	f := st.fail
	b := f.backoff[task]
	if b == 0 {
		b = 50 * time.Millisecond
	} else {
		b = min(2*b, k.cfg.MaxBackoff)
	}
	f.backoff[task] = b
	kind := ErrorKind(err)
	if rec := k.cfg.Recorder; rec != nil {
		rec.RecordError(context.Background(), kind)
	}
	// One line per failing (shard, task) every 10s, not one per retry.
	if f.lastLog[task] == 0 || now-f.lastLog[task] >= int64(10*time.Second) {
		f.lastLog[task] = now
		k.log.Error("pass failed", "shard", st.name, "queue", st.shard.Queue, "task", task.String(),
			"kind", kind, "retry_in", b, "err", err)
	}
	k.heap.schedule(st, task, now+int64(b))
	st.rerun &^= 1 << task
}

// deletedLocked stops the passes of a shard whose queue was deleted (a
// script found its tombstone): retrying cannot succeed, and the catalog
// drops the queue at its next refresh. A probe finds out if the queue is
// created again (see shardState.deleted).
func (k *Keeper) deletedLocked(st *shardState, task queue.Task, err error) {
	if rec := k.cfg.Recorder; rec != nil {
		rec.RecordError(context.Background(), "deleted")
	}
	st.rerun = 0
	if st.deleted {
		return
	}
	st.deleted = true
	k.heap.remove(st)
	k.log.Warn("queue deleted: no more passes on the shard until it is created again",
		"shard", st.name, "queue", st.shard.Queue, "task", task.String(), "err", err)
}

// ErrorKind classifies a pass error for metrics and logs.
func ErrorKind(err error) string {
	var fe *queue.FencedError
	switch {
	case errors.As(err, &fe):
		return "fenced"
	case errors.Is(err, queue.ErrWrongType):
		return "wrongtype"
	case errors.Is(err, queue.ErrUnknownQueue):
		return "deleted"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "redis"
}

package tasks

import (
	"context"
	"errors"
	"time"

	"github.com/keeperhq/keeper/queue"
)

// dispatch hands due entries to workers, earliest first, never more than
// Workers at once, and sleeps until the next deadline otherwise.
func (k *Keeper) dispatch(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		k.mu.Lock()
		var wait time.Duration = time.Hour
		for k.busy < k.cfg.Workers {
			e := k.heap.peek()
			if e == nil {
				break
			}
			now := time.Now()
			if e.due.After(now) {
				wait = e.due.Sub(now)
				break
			}
			k.heap.pop()
			if e.st.running[e.task] {
				// One pass per (shard, task) at a time; run again after it.
				e.st.rerun[e.task] = true
				continue
			}
			e.st.running[e.task] = true
			e.st.busy++
			k.busy++
			k.mu.Unlock()
			select {
			case k.jobs <- e:
			case <-ctx.Done():
				// No worker took the pass: it never ran, so it must not
				// stay counted, or Disown would wait for it forever.
				k.mu.Lock()
				if !e.st.gone {
					k.heap.schedule(e.st, e.task, e.due)
				}
				k.passEndedLocked(e.st, e.task)
				k.mu.Unlock()
				return
			}
			k.mu.Lock()
		}
		k.mu.Unlock()
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-k.kick:
		case <-timer.C:
		}
	}
}

func (k *Keeper) worker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-k.jobs:
			k.run(e)
		}
	}
}

// run does one pass and schedules what comes next from its result.
func (k *Keeper) run(e *entry) {
	st, task := e.st, e.task
	k.mu.Lock()
	s, cfg, token, ctx := st.shard, st.cfg, st.token, st.ctx
	k.mu.Unlock()

	start := time.Now()
	out := k.layout.Passes(ctx, []queue.PassRequest{{Shard: s, Task: task, Token: token, Batch: k.cfg.Batch, Config: cfg}})[0]
	res, m, err := out.Result, out.Measurement, out.Err
	end := time.Now()
	if err == nil {
		// Redis ran the script between start and end; the midpoint is the
		// best local estimate of its "now".
		mid := start.Add(end.Sub(start) / 2)
		k.offsetUs.Store(res.NowUs - mid.UnixMicro())
	}
	if rec := k.cfg.Recorder; rec != nil {
		rec.RecordPass(ctx, task.String(), end.Sub(start), err)
		if task == Unlock {
			for _, lag := range res.Lags {
				rec.RecordUnlockLag(ctx, s.Queue, st.name, lag)
			}
		}
	}

	var fenced *queue.FencedError
	k.mu.Lock()
	k.passEndedLocked(st, task)
	switch {
	case st.gone:
		// Disowned while running: drop the result.
	case errors.As(err, &fenced):
		k.dropLocked([]queue.Shard{st.shard}, true)
	case err != nil:
		k.failLocked(st, task, err, end)
	default:
		k.doneLocked(st, task, res, m, end)
	}
	k.releaseIfIdleLocked(st)
	k.mu.Unlock()
	k.signal(k.kick)

	if fenced != nil {
		k.reportFenced(st, fenced, task.String())
	}
}

// passEndedLocked undoes what the dispatcher counted when it handed a pass
// out: the pass ran and returned, or no worker ever took it.
func (k *Keeper) passEndedLocked(st *shardState, task queue.Task) {
	st.running[task] = false
	st.busy--
	k.busy--
	k.releaseIfIdleLocked(st)
}

// releaseIfIdleLocked lets a Disown of st return once its last pass ended.
func (k *Keeper) releaseIfIdleLocked(st *shardState) {
	if st.gone && st.busy == 0 && st.idle != nil {
		select {
		case <-st.idle:
		default:
			st.cancel()
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

func (k *Keeper) doneLocked(st *shardState, task queue.Task, res queue.PassResult, m queue.Measurement, now time.Time) {
	if st.backoff[task] > 0 {
		k.log.Info("pass recovered", "shard", st.name, "queue", st.shard.Queue, "task", task.String())
		st.backoff[task] = 0
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
	switch {
	case res.Full || st.rerun[task]:
		k.heap.schedule(st, task, now)
	case res.NextMs >= 0:
		k.heap.schedule(st, task, k.localTime(res.NextMs, res.NowUs, now))
	}
	st.rerun[task] = false
	for _, h := range res.Hints {
		k.heap.schedule(st, h.Task, k.localTime(h.AtMs, res.NowUs, now))
	}
}

// localTime turns a Redis deadline (ms) into a local time, given Redis's
// clock (µs) at local time at.
func (k *Keeper) localTime(dueMs, redisNowUs int64, at time.Time) time.Time {
	return at.Add(time.Duration(dueMs*1000-redisNowUs) * time.Microsecond)
}

func (k *Keeper) markDirtyLocked(st *shardState) {
	st.dirty = true
	next := st.lastMeasure.Add(k.cfg.MeasureInterval)
	k.heap.schedule(st, Measure, next)
}

func (k *Keeper) failLocked(st *shardState, task queue.Task, err error, now time.Time) {
	b := st.backoff[task]
	if b == 0 {
		b = 50 * time.Millisecond
	} else {
		b = min(2*b, k.cfg.MaxBackoff)
	}
	st.backoff[task] = b
	kind := ErrorKind(err)
	if rec := k.cfg.Recorder; rec != nil {
		rec.RecordError(context.Background(), kind)
	}
	// One line per failing (shard, task) every 10s, not one per retry.
	if now.Sub(st.lastLog[task]) >= 10*time.Second {
		st.lastLog[task] = now
		k.log.Error("pass failed", "shard", st.name, "queue", st.shard.Queue, "task", task.String(),
			"kind", kind, "retry_in", b, "err", err)
	}
	k.heap.schedule(st, task, now.Add(b))
	st.rerun[task] = false
}

// ErrorKind classifies a pass error for metrics and logs.
func ErrorKind(err error) string {
	var fe *queue.FencedError
	switch {
	case errors.As(err, &fe):
		return "fenced"
	case errors.Is(err, queue.ErrWrongType):
		return "wrongtype"
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

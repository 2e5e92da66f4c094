// Package tasks runs the housekeeping of the shards a keeper owns: unlock,
// requeue, expire, trim and measure, each pass at the shard's next due time.
//
// The Keeper holds one deadline per (shard, task) in a heap and runs a pass
// when it comes due, on a bounded pool of workers. It learns deadlines from
// the passes themselves (each returns the set's next deadline), from the
// layout's wake channel (a client that sets a deadline earlier than the
// shard's earliest says so), and from a slow, bounded safety sweep. An idle
// shard therefore costs nothing until something happens to it.
package tasks

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keeperhq/keeper/queue"
)

// The tasks, as the layout names them.
const (
	Unlock   = queue.TaskUnlock
	Requeue  = queue.TaskRequeue
	Expire   = queue.TaskExpire
	Trim     = queue.TaskTrim
	Measure  = queue.TaskMeasure
	numTasks = queue.NumTasks
)

// Recorder receives what the keeper measures about itself. otel.Instruments
// implements it; nil records nothing.
type Recorder interface {
	RecordUnlockLag(ctx context.Context, queue, shard string, lag time.Duration)
	RecordPass(ctx context.Context, task string, d time.Duration, err error)
	RecordError(ctx context.Context, kind string)
	RecordFenceRefusal(ctx context.Context, queue, shard string)
}

// Config tunes a Keeper. Zero values take the defaults noted.
type Config struct {
	// Workers bounds the passes running at once; default 4. Each is one
	// script call, so a few workers keep Redis busy without queueing on it.
	Workers int
	// Batch is the most messages one pass handles; default 1000 (about a
	// millisecond of Redis time). A full batch runs again at once.
	Batch int
	// MeasureInterval is how often a changed shard is measured; default 10s.
	// Shards that did not change are not measured at all.
	MeasureInterval time.Duration
	// SweepInterval is the period of the safety sweep, which probes every
	// owned shard once per interval (spread evenly) for deadlines the keeper
	// could not have heard of, such as writes by other tools; default 60s.
	SweepInterval time.Duration
	// MaxBackoff caps the retry delay of a failing pass; default 5s.
	MaxBackoff time.Duration
	// Recorder gets lags, pass durations and errors; optional.
	Recorder Recorder
	// OnFenced is called (outside the keeper's locks) when Redis refused a
	// shard's token: the keeper has already dropped the shard.
	OnFenced func(s queue.Shard, token int64)
	// OnConfigChanged is called when the layout announces a queue config
	// change, so the caller can refresh its catalog.
	OnConfigChanged func()
	// Logger; default slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Workers <= 0 {
		c.Workers = 4
	}
	if c.Batch <= 0 {
		c.Batch = 1000
	}
	if c.MeasureInterval <= 0 {
		c.MeasureInterval = 10 * time.Second
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = 60 * time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// shardState is everything the keeper keeps about one owned shard. Fields are
// guarded by Keeper.mu.
type shardState struct {
	shard   queue.Shard
	name    string
	cfg     queue.Config
	token   int64
	ctx     context.Context
	cancel  context.CancelFunc
	gone    bool // disowned: results of running passes are dropped
	entries [numTasks]*entry
	running [numTasks]bool
	rerun   [numTasks]bool
	backoff [numTasks]time.Duration
	lastLog [numTasks]time.Time
	busy    int           // passes running now
	idle    chan struct{} // closed when busy drops to 0 after Disown

	// claimed: the first probe after Own raised the shard's fence to our
	// token, shutting a previous owner out.
	claimed bool
	// queued: on the probe list and not yet taken into a batch. A queued
	// probe reads the shard when its batch forms, after whatever asked for
	// it again, so it is not queued twice.
	queued bool
	// overCap: the last trim left excess it could not drop (in-flight and
	// locked messages alone are over max size); messages that return to
	// ready must be trimmed next.
	overCap bool

	dirty       bool
	measured    bool
	lastMeasure time.Time
	m           queue.Measurement
}

// Keeper runs the housekeeping of the shards it is told it owns.
type Keeper struct {
	cfg    Config
	layout queue.Layout
	log    *slog.Logger

	mu     sync.Mutex
	shards map[string]*shardState
	heap   deadlines
	busy   int // passes running, all shards
	probe  []*shardState

	kick    chan struct{} // wakes the dispatcher
	probeCh chan struct{} // wakes the sweeper for urgent probes
	jobs    chan *entry
	// offsetUs is Redis's clock minus ours, from the latest pass; wake
	// deadlines (Redis time) are turned into local timer times with it.
	offsetUs atomic.Int64

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New returns a Keeper over layout.
func New(layout queue.Layout, cfg Config) *Keeper {
	cfg = cfg.withDefaults()
	return &Keeper{
		cfg: cfg, layout: layout, log: cfg.Logger,
		shards: map[string]*shardState{}, kick: make(chan struct{}, 1),
		probeCh: make(chan struct{}, 1), jobs: make(chan *entry),
	}
}

// Start launches the dispatcher, the workers, the sweeper and the wake
// subscription. It returns at once; Stop ends them. ctx bounds the start
// only (and lends its values): a caller that starts under a signal context
// must still be able to let running passes finish while it hands its shards
// over, so ending ctx stops nothing.
func (k *Keeper) Start(ctx context.Context) error {
	k.ctx, k.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if now, err := k.layout.Now(k.ctx); err == nil {
		k.offsetUs.Store(now.UnixMicro() - time.Now().UnixMicro())
	} else {
		// Not fatal: Redis may come later; passes will set the offset.
		k.log.Warn("cannot read redis clock at start", "err", err)
	}
	for i := 0; i < k.cfg.Workers; i++ {
		k.wg.Add(1)
		go k.worker()
	}
	k.wg.Add(3)
	go k.dispatch()
	go k.sweep()
	go k.subscribe()
	return nil
}

// Stop stops starting passes, cancels the running ones, waits for them to
// return and returns. The shards stay owned as far as the keeper knows;
// callers release them first (Disown) for a graceful handoff. Disown and
// DisownAll still return after Stop. Stop may be called more than once, and
// while a Disown waits: it is how a bounded shutdown cuts a pass short.
func (k *Keeper) Stop() {
	if k.cancel == nil {
		return
	}
	k.cancel()
	k.wg.Wait()
}

// Own starts housekeeping of s under token, or raises the token of a shard
// already owned. The shard is probed at once to learn its deadlines.
func (k *Keeper) Own(s queue.Shard, cfg queue.Config, token int64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	name := s.String()
	if st, ok := k.shards[name]; ok {
		if token > st.token {
			st.token = token
			st.claimed = false
			k.queueProbeLocked(st)
			k.signal(k.probeCh)
		}
		st.cfg = cfg
		return
	}
	parent := k.ctx
	if parent == nil {
		parent = context.Background()
	}
	st := &shardState{shard: s, name: name, cfg: cfg, token: token, dirty: true}
	st.ctx, st.cancel = context.WithCancel(parent)
	k.shards[name] = st
	// Probed now and again once the subscription is confirmed (a Resync):
	// a hint published between this probe and the subscription is covered
	// by the second.
	k.layout.Watch([]queue.Shard{s}, true)
	k.queueProbeLocked(st)
	// Spread first measurements over one interval so that taking over
	// thousands of shards does not measure them all at once.
	k.heap.schedule(st, Measure, time.Now().Add(rand.N(k.cfg.MeasureInterval/4+1)))
	k.signal(k.probeCh)
	k.signal(k.kick)
}

// queueProbeLocked puts st on the probe list unless it is there already.
func (k *Keeper) queueProbeLocked(st *shardState) {
	if st.queued {
		return
	}
	st.queued = true
	k.probe = append(k.probe, st)
}

// SetConfig updates the config of every owned shard of a queue.
func (k *Keeper) SetConfig(queueName string, cfg queue.Config) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, st := range k.shards {
		if st.shard.Queue == queueName && st.cfg != cfg {
			sizeChanged := st.cfg.MaxSize != cfg.MaxSize
			st.cfg = cfg
			if sizeChanged {
				k.queueProbeLocked(st)
				k.signal(k.probeCh)
			}
		}
	}
}

// Disown stops housekeeping of s and returns once none of its passes is
// running: the graceful half of a handoff.
func (k *Keeper) Disown(s queue.Shard) {
	k.mu.Lock()
	st := k.dropLocked(s.String(), false)
	k.mu.Unlock()
	if st != nil {
		<-st.idle
	}
}

// DisownAll stops everything at once: the session that made the keeper an
// owner is gone. Running passes are cancelled, not awaited in Redis (their
// writes are fenced), but DisownAll returns only after they have returned.
func (k *Keeper) DisownAll() {
	k.mu.Lock()
	var sts []*shardState
	for name := range k.shards {
		sts = append(sts, k.dropLocked(name, true))
	}
	k.mu.Unlock()
	for _, st := range sts {
		<-st.idle
	}
}

func (k *Keeper) dropLocked(name string, cancel bool) *shardState {
	st, ok := k.shards[name]
	if !ok {
		return nil
	}
	delete(k.shards, name)
	k.layout.Watch([]queue.Shard{st.shard}, false)
	k.heap.remove(st)
	st.gone = true
	st.idle = make(chan struct{})
	if cancel || st.busy == 0 {
		st.cancel()
	}
	if st.busy == 0 {
		close(st.idle)
	}
	return st
}

// Owned reports the shards owned and their tokens.
func (k *Keeper) Owned() map[string]int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[string]int64, len(k.shards))
	for n, st := range k.shards {
		out[n] = st.token
	}
	return out
}

// EachOwned calls fn for every owned shard, measured yet or not: what the
// per-shard unlock lags are kept for. It reads memory only.
func (k *Keeper) EachOwned(fn func(queue.Shard)) {
	k.mu.Lock()
	out := make([]queue.Shard, 0, len(k.shards))
	for _, st := range k.shards {
		out = append(out, st.shard)
	}
	k.mu.Unlock()
	for _, s := range out {
		fn(s)
	}
}

// ShardMeasurement is the latest measurement of one owned shard.
type ShardMeasurement struct {
	Shard queue.Shard
	queue.Measurement
	// OldestReadyAge is computed now, so it grows while a shard sits idle
	// without being measured again.
	OldestReadyAge time.Duration
}

// EachMeasurement calls fn for every owned shard measured at least once.
// It reads memory only, so metric collection costs Redis nothing.
func (k *Keeper) EachMeasurement(fn func(ShardMeasurement)) {
	k.mu.Lock()
	out := make([]ShardMeasurement, 0, len(k.shards))
	redisNowUs := time.Now().UnixMicro() + k.offsetUs.Load()
	for _, st := range k.shards {
		if !st.measured {
			continue
		}
		m := st.m
		m.NowUs = redisNowUs
		out = append(out, ShardMeasurement{Shard: st.shard, Measurement: st.m, OldestReadyAge: m.OldestReadyAge()})
	}
	k.mu.Unlock()
	for _, m := range out {
		fn(m)
	}
}

func (k *Keeper) signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// dispatch hands due entries to workers, earliest first, never more than
// Workers at once, and sleeps until the next deadline otherwise.
func (k *Keeper) dispatch() {
	defer k.wg.Done()
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
			case <-k.ctx.Done():
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
		case <-k.ctx.Done():
			return
		case <-k.kick:
		case <-timer.C:
		}
	}
}

func (k *Keeper) worker() {
	defer k.wg.Done()
	for {
		select {
		case <-k.ctx.Done():
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
		k.dropLocked(st.name, true)
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

// subscribe feeds wake hints into the heap for as long as the keeper runs.
func (k *Keeper) subscribe() {
	defer k.wg.Done()
	for k.ctx.Err() == nil {
		err := k.layout.Wakes(k.ctx, k.onWake)
		if k.ctx.Err() != nil {
			return
		}
		k.log.Warn("wake subscription ended; resubscribing", "err", err)
		select {
		case <-k.ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (k *Keeper) onWake(w queue.Wake) {
	switch {
	case w.ConfigChanged:
		if k.cfg.OnConfigChanged != nil {
			k.cfg.OnConfigChanged()
		}
		return
	case w.Resync:
		// Hints sent while we were not subscribed are lost: look again.
		k.mu.Lock()
		if st, ok := k.shards[w.Shard.String()]; ok {
			k.queueProbeLocked(st)
		}
		k.mu.Unlock()
		k.signal(k.probeCh)
		return
	}
	task := w.Due.Task
	if task >= numTasks {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	st, ok := k.shards[w.Shard.String()]
	if !ok {
		return
	}
	if task == Measure {
		k.markDirtyLocked(st)
	} else {
		at := time.Now()
		if task != Trim {
			at = k.localTime(w.Due.AtMs, at.UnixMicro()+k.offsetUs.Load(), at)
		}
		k.heap.schedule(st, task, at)
	}
	k.signal(k.kick)
}

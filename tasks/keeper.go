// Package tasks runs the housekeeping of the shards a keeper owns: unlock,
// requeue, expire, trim and measure, each pass at the shard's next due time.
//
// The Keeper holds one deadline per (shard, task) in a heap and runs a pass
// when it comes due, on a bounded pool of workers (passes.go). It learns
// deadlines from the passes themselves (each returns the set's next
// deadline), from the layout's wake channel (wakes.go: a client that sets a
// deadline earlier than the shard's earliest says so), and from a slow,
// bounded safety sweep (sweep.go). An idle shard therefore costs nothing
// until something happens to it.
package tasks

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/keeperhq/keeper/internal/service"
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

// Defaults of Config.
const (
	WorkersDefault         = 4
	BatchDefault           = 1000
	MeasureIntervalDefault = 10 * time.Second
	SweepIntervalDefault   = 60 * time.Second
	MaxBackoffDefault      = 5 * time.Second
)

// Config tunes a Keeper. Zero values take the defaults above.
type Config struct {
	// Workers bounds the round trips to Redis in flight at once. Each
	// carries the passes that were due when it was sent (up to
	// maxPipeline), pipelined: a few keep Redis busy without queueing on
	// it, however many shards are due at once.
	Workers int
	// Batch is the most messages one pass handles (1000 is about a
	// millisecond of Redis time). A full batch runs again at once.
	Batch int
	// MeasureInterval is how often a changed shard is measured. Shards
	// that did not change are not measured at all.
	MeasureInterval time.Duration
	// SweepInterval is the period of the safety sweep, which probes every
	// owned shard once per interval (spread evenly) for deadlines the keeper
	// could not have heard of, such as writes by other tools.
	SweepInterval time.Duration
	// MaxBackoff caps the retry delay of a failing pass.
	MaxBackoff time.Duration
	// Recorder gets lags, pass durations and errors; optional.
	Recorder Recorder
	// OnFenced is called (outside the keeper's locks) when Redis refused a
	// shard's token: the keeper has already dropped the shard. The daemon
	// passes shard.Refusals.Report.
	OnFenced func(s queue.Shard, token int64)
	// Logger; default slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Workers <= 0 {
		c.Workers = WorkersDefault
	}
	if c.Batch <= 0 {
		c.Batch = BatchDefault
	}
	if c.MeasureInterval <= 0 {
		c.MeasureInterval = MeasureIntervalDefault
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = SweepIntervalDefault
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = MaxBackoffDefault
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// shardState is everything the keeper keeps about one owned shard: a few
// hundred bytes, since one keeper may own 100,000 shards
// (BenchmarkOwnedShardMemory). Fields are guarded by Keeper.mu.
type shardState struct {
	shard   queue.Shard
	name    string
	cfg     queue.Config
	token   int64
	entries [numTasks]entry  // its deadlines, one per task (see deadlines)
	running uint8            // bit per task: a pass of it is in flight
	rerun   uint8            // bit per task: due again while running
	moved   [numTasks]uint16 // what its last pass of each task moved
	busy    int32            // passes in flight
	gone    bool             // disowned: results of running passes are dropped
	idle    chan struct{}    // closed when busy drops to 0 after Disown
	// fail holds the backoff of failing tasks; nil while none fails.
	fail *failure

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
	// deleted: a pass found the queue's tombstone. No pass runs until a
	// probe (the sweep's, or one a wake or a new config asks for) finds
	// the queue live again; the catalog drops the queue meanwhile.
	deleted bool

	dirty       bool
	measured    bool
	lastMeasure int64 // monoNow's clock
	m           queue.Measurement
}

// failure is what a shard keeps while some of its tasks fail.
type failure struct {
	backoff [numTasks]time.Duration
	lastLog [numTasks]int64 // monoNow's clock; 0: never logged
}

// newShardState is the state of a shard just owned, with nothing scheduled.
func newShardState(s queue.Shard, cfg queue.Config, token int64) *shardState {
	st := &shardState{shard: s, name: s.String(), cfg: cfg, token: token, dirty: true}
	for t := range st.entries {
		st.entries[t] = entry{st: st, task: queue.Task(t), idx: -1}
	}
	return st
}

// Keeper runs the housekeeping of the shards it is told it owns. It
// implements shard.Listener: ownership comes and goes a unit (a batch of
// shards under one token) at a time.
type Keeper struct {
	base   service.Base
	cfg    Config
	layout queue.Layout
	log    *slog.Logger

	mu      sync.Mutex
	configs map[string]queue.Config // by queue, as last set
	shards  map[queue.Shard]*shardState
	heap    deadlines
	trips   int // round trips in flight (at most Workers)
	probe   []*shardState
	// passCtx is what passes run under until DisownAll cancels it (the
	// session is gone: running passes are not awaited in Redis); the next
	// round trip gets a new one. nil until the first.
	passCtx    context.Context
	passCancel context.CancelFunc

	kick    chan struct{} // wakes the dispatcher
	probeCh chan struct{} // wakes the sweeper for urgent probes
	jobs    chan trip
	// configChanged is signalled when the layout announces a queue config
	// change (see ConfigChanged).
	configChanged chan struct{}
	// offset is Redis's clock (µs since the Unix epoch) minus monoNow (in
	// µs), learnt from the passes; deadlines in Redis time are turned into
	// monoNow's clock with it.
	offset clockOffset
}

// New returns a Keeper over layout.
func New(layout queue.Layout, cfg Config) *Keeper {
	cfg = cfg.withDefaults()
	k := &Keeper{
		cfg: cfg, layout: layout, log: cfg.Logger,
		configs: map[string]queue.Config{}, shards: map[queue.Shard]*shardState{},
		kick: make(chan struct{}, 1), probeCh: make(chan struct{}, 1), jobs: make(chan trip),
		configChanged: make(chan struct{}, 1),
	}
	k.offset.guess()
	return k
}

// Start launches the dispatcher, the workers, the sweeper and the wake
// subscription, and returns. ctx bounds the start only (reading Redis's
// clock); ending it later stops nothing: a caller that starts under a
// signal context must still be able to let running passes finish while it
// hands its shards over.
func (k *Keeper) Start(ctx context.Context) error {
	startCtx, err := k.base.StartInit(ctx)
	if err != nil {
		return err
	}
	sent := monoNow()
	if now, err := k.layout.Now(startCtx); err == nil {
		k.offset.sample(now.UnixMicro(), sent, monoNow())
	} else {
		// Not fatal: Redis may come later; passes will set the offset.
		k.log.Warn("cannot read redis clock at start", "err", err)
	}
	for i := 0; i < k.cfg.Workers; i++ {
		k.base.Go(k.worker)
	}
	k.base.Go(k.dispatch)
	k.base.Go(k.sweep)
	k.base.Go(k.subscribe)
	return k.base.StartDone(nil)
}

// Stop stops starting passes, cancels the running ones and returns once
// they returned (or ctx ended). The shards stay owned as far as the keeper
// knows; callers release them first (Disown) for a graceful handoff. Disown
// and DisownAll still return after Stop. Stop may be called while a Disown
// waits: it is how a bounded shutdown cuts a pass short.
func (k *Keeper) Stop(ctx context.Context) error {
	return k.base.Halt(ctx, nil)
}

// life is the context passes run under: the keeper's once started.
func (k *Keeper) life() context.Context {
	if l := k.base.Life(); l != nil {
		return l
	}
	return context.Background()
}

// SetConfig sets the config of a queue, for shards owned from now on and
// for every owned shard of it.
func (k *Keeper) SetConfig(queueName string, cfg queue.Config) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.setConfigLocked(queueName, cfg)
}

// SetConfigs replaces the configs of all queues (the catalog's view).
// Owned shards of a queue no longer listed keep their last config until
// they are disowned.
func (k *Keeper) SetConfigs(queues map[string]queue.Config) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for name := range k.configs {
		if _, ok := queues[name]; !ok {
			delete(k.configs, name)
		}
	}
	for name, cfg := range queues {
		k.setConfigLocked(name, cfg)
	}
}

func (k *Keeper) setConfigLocked(queueName string, cfg queue.Config) {
	if cur, ok := k.configs[queueName]; ok && cur == cfg {
		return
	}
	k.configs[queueName] = cfg
	for _, st := range k.shards {
		if st.shard.Queue == queueName && st.cfg != cfg {
			sizeChanged := st.cfg.MaxSize != cfg.MaxSize
			st.cfg = cfg
			if sizeChanged || st.deleted {
				k.queueProbeLocked(st)
				k.signal(k.probeCh)
			}
		}
	}
}

// Own starts housekeeping of shards under token, or raises the token of
// shards already owned; each is probed at once (claimed: its fence rises to
// token) to learn its deadlines. Shards of a queue whose config was never
// set are left out and logged. It does not block on Redis.
func (k *Keeper) Own(shards []queue.Shard, token int64) {
	var unknown []queue.Shard
	k.mu.Lock()
	watch := make([]queue.Shard, 0, len(shards))
	for _, s := range shards {
		if st, ok := k.shards[s]; ok {
			if token > st.token {
				st.token = token
				st.claimed = false
				k.queueProbeLocked(st)
			}
			continue
		}
		cfg, ok := k.configs[s.Queue]
		if !ok {
			unknown = append(unknown, s)
			continue
		}
		st := newShardState(s, cfg, token)
		k.shards[s] = st
		watch = append(watch, s)
		// Its first measurement is scheduled once the probe has claimed
		// it (see probeBatch): a takeover's claims come first.
		k.queueProbeLocked(st)
	}
	// Probed now and again once the subscription is confirmed (a Resync):
	// a hint published between this probe and the subscription is covered
	// by the second.
	if len(watch) > 0 {
		k.layout.Watch(watch, true)
	}
	k.mu.Unlock()
	k.signal(k.probeCh)
	k.signal(k.kick)
	if len(unknown) > 0 {
		k.log.Warn("owned shards of queues without a config are not housekept", "shards", len(unknown),
			"shard", unknown[0].String(), "queue", unknown[0].Queue)
	}
}

// queueProbeLocked puts st on the probe list unless it is there already.
func (k *Keeper) queueProbeLocked(st *shardState) {
	if st.queued {
		return
	}
	st.queued = true
	k.probe = append(k.probe, st)
}

// Disown stops housekeeping of shards and returns once none of their
// passes is running: the graceful half of a handoff.
func (k *Keeper) Disown(shards []queue.Shard) {
	k.mu.Lock()
	sts := k.dropLocked(shards)
	k.mu.Unlock()
	for _, st := range sts {
		<-st.idle
	}
}

// DisownAll stops everything at once: the session that made the keeper an
// owner is gone. Running passes are cancelled, not awaited in Redis (their
// writes are fenced), but DisownAll returns only after they have returned.
func (k *Keeper) DisownAll() {
	k.mu.Lock()
	all := make([]queue.Shard, 0, len(k.shards))
	for s := range k.shards {
		all = append(all, s)
	}
	sts := k.dropLocked(all)
	if k.passCancel != nil {
		k.passCancel()
		k.passCtx, k.passCancel = nil, nil
	}
	k.mu.Unlock()
	for _, st := range sts {
		<-st.idle
	}
}

// dropLocked forgets the shards (those owned), unwatches them in one call,
// and returns their states, whose idle channels close once their last pass
// ended.
func (k *Keeper) dropLocked(shards []queue.Shard) []*shardState {
	sts := make([]*shardState, 0, len(shards))
	unwatch := make([]queue.Shard, 0, len(shards))
	for _, s := range shards {
		st, ok := k.shards[s]
		if !ok {
			continue
		}
		delete(k.shards, s)
		unwatch = append(unwatch, s)
		k.heap.remove(st)
		st.gone = true
		st.idle = make(chan struct{})
		if st.busy == 0 {
			close(st.idle)
		}
		sts = append(sts, st)
	}
	if len(unwatch) > 0 {
		k.layout.Watch(unwatch, false)
	}
	return sts
}

// ConfigChanged is signalled (coalesced) when the layout announces that a
// queue config was created or changed: the catalog refreshes on it.
func (k *Keeper) ConfigChanged() <-chan struct{} { return k.configChanged }

// Owned reports the shards owned and their tokens.
func (k *Keeper) Owned() map[string]int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[string]int64, len(k.shards))
	for _, st := range k.shards {
		out[st.name] = st.token
	}
	return out
}

// OwnedCount is the number of shards owned.
func (k *Keeper) OwnedCount() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.shards)
}

// EachOwned calls fn for every owned shard, measured yet or not: what the
// per-shard unlock lags are kept for. It reads memory only.
func (k *Keeper) EachOwned(fn func(queue.Shard)) {
	k.mu.Lock()
	out := make([]queue.Shard, 0, len(k.shards))
	for s := range k.shards {
		out = append(out, s)
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
	redisNowUs := k.redisNowUs(monoNow())
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

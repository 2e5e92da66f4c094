package otel

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/keeperhq/keeper/queue"
)

// Metric names, in OpenTelemetry style (dot-separated, UCUM units). The
// collector's Prometheus exporter rewrites them: dots become underscores,
// unit "s" appends _seconds, counters append _total, and curly-brace units
// such as {message} add nothing. The Prometheus name is given for each.
//
// The fleet series (fleet.go), under the fleet resource, which names no
// keeper. Per shard, written only by the shard's current owner, attributes
// queue and shard (read at collection time from ShardSource, so a shard
// that leaves is not in the next collection; the next owner continues the
// same series, from the same Redis counters):
//
//	keeper.queue.messages          gauge {message}, +state=ready|inflight|locked|dead  keeper_queue_messages
//	keeper.queue.oldest_ready.age  gauge s                                              keeper_queue_oldest_ready_age_seconds
//	keeper.queue.enqueued          counter {message}                                    keeper_queue_enqueued_total
//	keeper.queue.acked             counter {message}                                    keeper_queue_acked_total
//	keeper.queue.unlocked          counter {message}  locked -> ready                   keeper_queue_unlocked_total
//	keeper.queue.requeued          counter {message}  expired lease -> ready            keeper_queue_requeued_total
//	keeper.queue.expired           counter {message}  dropped by TTL                    keeper_queue_expired_total
//	keeper.queue.dead_lettered     counter {message}  moved to dead                     keeper_queue_dead_lettered_total
//	keeper.queue.trimmed           counter {message}  dropped by size cap               keeper_queue_trimmed_total
//	keeper.unlock.lag              histogram s        due time -> moved time, kept in Redis  keeper_unlock_lag_seconds_{bucket,sum,count}
//
// A shard of a layout with two lock pools (Deckard's :lock_ack and
// :lock_nack; ShardSnapshot.SplitLocks) reports state=locked and the
// unlocked counter as two series each, with lock=ack and lock=nack, instead
// of one: sums over lock give the totals, and the attribute set of each
// series stays the same for the shard's whole life.
//
// The messages gauge is one instrument with a state attribute rather than
// four gauges, so that `sum by (state)` and stacked dashboards need no
// label_replace, and adding a state later adds no metric name.
//
// Global, written only by the aggregator leader (GlobalSource ok=true):
//
//	keeper.cluster.members          gauge {member}                        keeper_cluster_members
//	keeper.cluster.shards           gauge {shard}                         keeper_cluster_shards
//	keeper.cluster.shards.unowned   gauge {shard}                         keeper_cluster_shards_unowned
//	keeper.cluster.rebalances       counter {rebalance}                   keeper_cluster_rebalances_total
//	keeper.cluster.queue.messages   gauge {message}, queue, state         keeper_cluster_queue_messages
//	keeper.cluster.queue.shards     gauge {shard}, queue                  keeper_cluster_queue_shards
//
// A keeper's own series, under its resource with service.instance.id (the
// instance label tells keepers apart):
//
//	keeper.member.shards.owned            gauge {shard}                          keeper_member_shards_owned
//	keeper.member.leader                  gauge, 1 when aggregator leader else 0  keeper_member_leader
//	keeper.member.unlock.lag              histogram s, the lags of this keeper's unlocks  keeper_member_unlock_lag_seconds_*
//	keeper.task.pass.duration             histogram s, task, outcome=ok|error|canceled  keeper_task_pass_duration_seconds_*
//	keeper.task.last_success.timestamp    gauge s (unix time), task               keeper_task_last_success_timestamp_seconds
//	keeper.errors                         counter {error}, kind (and task for kind=pass)  keeper_errors_total
//	keeper.fence.refusals                 counter {refusal}, queue, shard         keeper_fence_refusals_total
const (
	MetricQueueMessages       = "keeper.queue.messages"
	MetricQueueOldestReadyAge = "keeper.queue.oldest_ready.age"
	MetricQueueEnqueued       = "keeper.queue.enqueued"
	MetricQueueAcked          = "keeper.queue.acked"
	MetricQueueUnlocked       = "keeper.queue.unlocked"
	MetricQueueRequeued       = "keeper.queue.requeued"
	MetricQueueExpired        = "keeper.queue.expired"
	MetricQueueDeadLettered   = "keeper.queue.dead_lettered"
	MetricQueueTrimmed        = "keeper.queue.trimmed"
	MetricUnlockLag           = "keeper.unlock.lag"

	MetricClusterMembers       = "keeper.cluster.members"
	MetricClusterShards        = "keeper.cluster.shards"
	MetricClusterUnowned       = "keeper.cluster.shards.unowned"
	MetricClusterRebalances    = "keeper.cluster.rebalances"
	MetricClusterQueueMessages = "keeper.cluster.queue.messages"
	MetricClusterQueueShards   = "keeper.cluster.queue.shards"

	MetricMemberOwnedShards = "keeper.member.shards.owned"
	MetricMemberLeader      = "keeper.member.leader"
	MetricMemberUnlockLag   = "keeper.member.unlock.lag"
	MetricTaskPassDuration  = "keeper.task.pass.duration"
	MetricTaskLastSuccess   = "keeper.task.last_success.timestamp"
	MetricErrors            = "keeper.errors"
	MetricFenceRefusals     = "keeper.fence.refusals"
)

// Attribute keys and state values.
const (
	AttrQueue   = "queue"
	AttrShard   = "shard"
	AttrState   = "state"
	AttrTask    = "task"
	AttrOutcome = "outcome"
	AttrKind    = "kind"
	AttrLock    = "lock"

	StateReady    = "ready"
	StateInflight = "inflight"
	StateLocked   = "locked"
	StateDead     = "dead"

	LockAck  = "ack"
	LockNack = "nack"
)

// ScopeName is the instrumentation scope of every keeper series.
const ScopeName = "github.com/keeperhq/keeper"

// PassBuckets are the task pass-duration boundaries in seconds; a pass is a
// few Redis round trips normally and bounded by its batch size, longer ones
// show a slow Redis.
var PassBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// ShardSnapshot is the latest measurement of one owned shard.
type ShardSnapshot struct {
	Queue, Shard                  string
	Ready, Inflight, Locked, Dead int64
	OldestReadyAge                time.Duration
	// SplitLocks: the layout has two lock pools, LockedAck and LockedNack
	// (their sum is Locked), and counts unlocks by pool (UnlockedAck,
	// UnlockedNack in Counters).
	SplitLocks            bool
	LockedAck, LockedNack int64
	// Cumulative since queue creation, read from Redis by the owner, so the
	// series continues across an owner change.
	queue.Counters
	// Lag is the shard's unlock-lag histogram, read from Redis likewise.
	Lag queue.LagHistogram
}

// ShardSource yields the shards this keeper owns right now, each with its
// latest measurement (a shard not measured yet is left out: the collector
// keeps serving the previous owner's last points until the first). It is
// called at every collection, so it must be cheap: return the last snapshot
// taken by the tasks, do not go to Redis.
type ShardSource interface{ EachShard(func(ShardSnapshot)) }

// QueueTotals is one queue summed over all its shards.
type QueueTotals struct {
	Queue                         string
	Shards                        int
	Ready, Inflight, Locked, Dead int64
	// Complete tells that the counts cover every shard of the queue exactly
	// once. While shards move they may not, and the messages totals are
	// left out of the export: the collector keeps showing the last
	// complete ones, from whichever aggregator sent them.
	Complete bool
}

// GlobalSnapshot is what the aggregator knows about the whole fleet.
type GlobalSnapshot struct {
	Members, Shards, UnownedShards int
	// Rebalances is cumulative for the fleet (kept where a new leader can
	// read it), so the counter continues across a leader change.
	Rebalances int64
	Queues     []QueueTotals
}

// GlobalSource reports ok=false when this keeper is not the aggregator
// leader; it then reports nothing, so each global series has one writer.
type GlobalSource interface {
	Global() (GlobalSnapshot, bool)
}

// SelfSource describes this keeper.
type SelfSource interface {
	OwnedShards() int
	IsLeader() bool
}

// Instruments are a keeper's own instruments, on one meter: what it
// records about its passes, errors and refusals, and the gauges that
// describe it (SelfSource). A nil *Instruments is valid and records
// nothing, so tasks can run without metrics.
type Instruments struct {
	meter        metric.Meter
	unlockLag    metric.Float64Histogram
	passDuration metric.Float64Histogram
	errs         metric.Int64Counter
	refusals     metric.Int64Counter

	lastMu      sync.Mutex
	lastSuccess map[string]float64

	// passAttrs holds RecordPass's attribute set per task and outcome
	// (passKey -> metric.MeasurementOption). A set built per call is
	// sorted and allocated for each of thousands of passes a second:
	// BenchmarkRecordPass took 705–1,167 ns and four allocations that
	// way, 415–533 ns and one with the sets kept.
	passAttrs sync.Map

	regs []metric.Registration
}

type passKey struct{ task, outcome string }

func (i *Instruments) passAttr(task, outcome string) metric.MeasurementOption {
	k := passKey{task, outcome}
	if o, ok := i.passAttrs.Load(k); ok {
		return o.(metric.MeasurementOption)
	}
	o := metric.WithAttributeSet(attribute.NewSet(attribute.String(AttrTask, task), attribute.String(AttrOutcome, outcome)))
	i.passAttrs.Store(k, o)
	return o
}

// NewInstruments creates the instruments on m. What the keeper records
// (passes, errors, refusals, unlock lags) works at once; the gauges that
// read the keeper's state are registered by Observe, once that state
// exists: a task keeper records into these instruments from its start, and
// the instruments read it back, so it is built in between.
func NewInstruments(m metric.Meter) (*Instruments, error) {
	i := &Instruments{meter: m, lastSuccess: map[string]float64{}}
	var err error
	if i.unlockLag, err = m.Float64Histogram(MetricMemberUnlockLag,
		metric.WithDescription("Time from a locked message's due time to its move back to ready, of the unlocks this keeper made."),
		metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(LagBuckets...)); err != nil {
		return nil, fmt.Errorf("instrument %s: %w", MetricMemberUnlockLag, err)
	}
	if i.passDuration, err = m.Float64Histogram(MetricTaskPassDuration,
		metric.WithDescription("Duration of one housekeeping pass of a task."),
		metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(PassBuckets...)); err != nil {
		return nil, fmt.Errorf("instrument %s: %w", MetricTaskPassDuration, err)
	}
	if i.errs, err = m.Int64Counter(MetricErrors,
		metric.WithDescription("Errors by kind; failed task passes have kind=pass and the task."),
		metric.WithUnit("{error}")); err != nil {
		return nil, fmt.Errorf("instrument %s: %w", MetricErrors, err)
	}
	if i.refusals, err = m.Int64Counter(MetricFenceRefusals,
		metric.WithDescription("Housekeeping writes Redis refused because a newer owner's token is fenced in."),
		metric.WithUnit("{refusal}")); err != nil {
		return nil, fmt.Errorf("instrument %s: %w", MetricFenceRefusals, err)
	}
	return i, nil
}

// Observe registers the callbacks that read the keeper's state at
// collection time: the tasks' last successes and, when self is not nil,
// the shards owned and the leader gauge. Call it once.
func (i *Instruments) Observe(self SelfSource) error {
	if err := i.registerTaskGauges(i.meter); err != nil {
		return err
	}
	if self != nil {
		if err := i.registerSelf(i.meter, self); err != nil {
			i.Unregister()
			return err
		}
	}
	return nil
}

// Unregister stops the callbacks, for a keeper that rebuilds its
// instruments; the synchronous instruments stay usable.
func (i *Instruments) Unregister() {
	if i == nil {
		return
	}
	for _, r := range i.regs {
		_ = r.Unregister()
	}
	i.regs = nil
}

func (i *Instruments) registerSelf(m metric.Meter, src SelfSource) error {
	owned, err1 := m.Int64ObservableGauge(MetricMemberOwnedShards, metric.WithUnit("{shard}"),
		metric.WithDescription("Shards this keeper owns."))
	leader, err2 := m.Int64ObservableGauge(MetricMemberLeader,
		metric.WithDescription("1 while this keeper is the aggregator leader, else 0."))
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("self instruments: %w", err)
	}
	reg, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(owned, int64(src.OwnedShards()))
		var l int64
		if src.IsLeader() {
			l = 1
		}
		o.ObserveInt64(leader, l)
		return nil
	}, owned, leader)
	if err != nil {
		return fmt.Errorf("self callback: %w", err)
	}
	i.regs = append(i.regs, reg)
	return nil
}

func (i *Instruments) registerTaskGauges(m metric.Meter) error {
	last, err := m.Float64ObservableGauge(MetricTaskLastSuccess, metric.WithUnit("s"),
		metric.WithDescription("Unix time of the task's last successful pass; alert on time() minus this."))
	if err != nil {
		return fmt.Errorf("instrument %s: %w", MetricTaskLastSuccess, err)
	}
	reg, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		i.lastMu.Lock()
		defer i.lastMu.Unlock()
		for task, ts := range i.lastSuccess {
			o.ObserveFloat64(last, ts, metric.WithAttributes(attribute.String(AttrTask, task)))
		}
		return nil
	}, last)
	if err != nil {
		return fmt.Errorf("task callback: %w", err)
	}
	i.regs = append(i.regs, reg)
	return nil
}

// RecordUnlockLag records how late one locked message this keeper moved went
// back to ready, in the keeper's own histogram: the per-shard histogram
// (keeper.unlock.lag) is counted by the unlock script itself, in Redis, so
// that it continues across owners; this one tells which keeper is late. A
// negative lag (clock noise between Redis TIME readings) counts as 0.
func (i *Instruments) RecordUnlockLag(ctx context.Context, _, _ string, lag time.Duration) {
	if i == nil {
		return
	}
	i.unlockLag.Record(ctx, max(lag, 0).Seconds())
}

// RecordPass records one pass of a task: its duration by outcome, the time
// of the last success, and a kind=pass error when it failed. A pass ended by
// context cancellation (shutdown, or the shard moving away) is "canceled",
// not an error.
func (i *Instruments) RecordPass(ctx context.Context, task string, d time.Duration, err error) {
	if i == nil {
		return
	}
	outcome := "ok"
	switch {
	case err == nil:
		i.lastMu.Lock()
		i.lastSuccess[task] = float64(time.Now().UnixNano()) / 1e9
		i.lastMu.Unlock()
	case errors.Is(err, context.Canceled):
		outcome = "canceled"
	default:
		outcome = "error"
		i.errs.Add(ctx, 1, metric.WithAttributes(attribute.String(AttrKind, "pass"), attribute.String(AttrTask, task)))
	}
	i.passDuration.Record(ctx, max(d, 0).Seconds(), i.passAttr(task, outcome))
}

// RecordError counts an error of the given kind (e.g. "redis", "etcd").
func (i *Instruments) RecordError(ctx context.Context, kind string) {
	if i == nil {
		return
	}
	i.errs.Add(ctx, 1, metric.WithAttributes(attribute.String(AttrKind, kind)))
}

// RecordFenceRefusal counts a housekeeping write that Redis refused because
// the shard's fence holds a newer owner's token. It is a per-keeper event
// (the refused keeper no longer owns the shard), so unlike the per-shard
// state series it stays with the keeper that was refused.
func (i *Instruments) RecordFenceRefusal(ctx context.Context, queue, shard string) {
	if i == nil {
		return
	}
	i.refusals.Add(ctx, 1, metric.WithAttributes(attribute.String(AttrQueue, queue), attribute.String(AttrShard, shard)))
}

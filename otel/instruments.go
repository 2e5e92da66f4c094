package otel

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/sdk/instrumentation"

	"github.com/keeperhq/keeper/queue"
)

// Metric names, in OpenTelemetry style (dot-separated, UCUM units). The
// collector's Prometheus exporter rewrites them: dots become underscores,
// unit "s" appends _seconds, counters append _total, and curly-brace units
// such as {message} add nothing. The Prometheus name is given for each.
//
// Per shard, written only by the shard's current owner, attributes queue and
// shard (observed at collection time from ShardSource, so a shard that
// leaves disappears from the next collection):
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
//	keeper.unlock.lag              histogram s        due time -> moved time            keeper_unlock_lag_seconds_{bucket,sum,count}
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
// Per keeper, about the keeper itself (the instance label tells keepers
// apart):
//
//	keeper.member.shards.owned            gauge {shard}                          keeper_member_shards_owned
//	keeper.member.leader                  gauge, 1 when aggregator leader else 0  keeper_member_leader
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

// LagBuckets are the unlock-lag histogram boundaries in seconds: keeper aims
// at millisecond precision, so the low end is sub-millisecond, and 5s is
// already a fault (invariant 6 allows session TTL plus a second).
var LagBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

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
}

// ShardSource yields the shards this keeper owns right now. It is called at
// every collection, so it must be cheap: return the last snapshot taken by
// the tasks, do not go to Redis.
type ShardSource interface{ EachShard(func(ShardSnapshot)) }

// OwnedSource lists every shard this keeper owns, measured yet or not. A
// ShardSource that lists only measured shards must implement it too: the
// unlock-lag histogram keeps a shard's samples while the shard is owned, and
// a shard just taken over records lags (the takeover's backlog, the ones
// that matter most) before its first measurement. Called at every
// collection, so it must be as cheap as EachShard.
type OwnedSource interface {
	EachOwned(func(queue, shard string))
}

// QueueTotals is one queue summed over all its shards.
type QueueTotals struct {
	Queue                         string
	Shards                        int
	Ready, Inflight, Locked, Dead int64
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

// Instruments are keeper's instruments on one meter. A nil *Instruments is
// valid and records nothing, so tasks can run without metrics.
type Instruments struct {
	meter        metric.Meter
	lag          *ownedHistograms        // with a Provider's meter
	lagSync      metric.Float64Histogram // with any other meter
	passDuration metric.Float64Histogram
	errs         metric.Int64Counter
	refusals     metric.Int64Counter

	lastMu      sync.Mutex
	lastSuccess map[string]float64

	regs      []metric.Registration
	producers *producerSet
}

// RegisterInstruments is NewInstruments and Observe in one call.
func RegisterInstruments(m metric.Meter, shards ShardSource, global GlobalSource, self SelfSource) (*Instruments, error) {
	i, err := NewInstruments(m)
	if err != nil {
		return nil, err
	}
	if err := i.Observe(shards, global, self); err != nil {
		return nil, err
	}
	return i, nil
}

// NewInstruments creates the instruments on m. What the keeper records
// (passes, errors, refusals, unlock lags) works at once; the gauges that
// read the keeper's state are registered by Observe, once that state
// exists: a task keeper records into these instruments from its start, and
// the instruments read it back, so it is built in between.
//
// With a meter from (*Provider).Meter, the unlock-lag histogram is kept per
// owned shard and dropped when the shard leaves (see ownedHistograms); with
// any other meter it falls back to a plain SDK histogram, whose series stay
// with this keeper after a shard moves.
func NewInstruments(m metric.Meter) (*Instruments, error) {
	i := &Instruments{meter: m, lastSuccess: map[string]float64{}}
	var err error
	if pm, ok := m.(*providerMeter); ok {
		i.lag = newOwnedHistograms(instrumentation.Scope{Name: pm.name}, MetricUnlockLag,
			"Time from a locked message's due time to its move back to ready.", "s", LagBuckets)
		i.producers = pm.producers
	} else {
		i.lagSync, err = m.Float64Histogram(MetricUnlockLag,
			metric.WithDescription("Time from a locked message's due time to its move back to ready."),
			metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(LagBuckets...))
		if err != nil {
			return nil, fmt.Errorf("instrument %s: %w", MetricUnlockLag, err)
		}
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

// Observe registers the callbacks that read the sources at collection time,
// and the per-shard unlock-lag histograms, which report the shards owned
// (listed by shards' EachOwned when it is an OwnedSource, else by
// EachShard). Any source may be nil, which leaves its metrics out. Call it
// once.
func (i *Instruments) Observe(shards ShardSource, global GlobalSource, self SelfSource) error {
	if err := i.registerCallbacks(i.meter, shards, global, self); err != nil {
		i.Unregister()
		return err
	}
	if i.lag != nil {
		i.lag.shards = shards
		i.producers.add(i.lag)
	}
	return nil
}

func (i *Instruments) registerCallbacks(m metric.Meter, shards ShardSource, global GlobalSource, self SelfSource) error {
	if err := i.registerTaskGauges(m); err != nil {
		return err
	}
	if shards != nil {
		if err := i.registerShards(m, shards); err != nil {
			return err
		}
	}
	if global != nil {
		if err := i.registerGlobal(m, global); err != nil {
			return err
		}
	}
	if self != nil {
		if err := i.registerSelf(m, self); err != nil {
			return err
		}
	}
	return nil
}

// Unregister stops the callbacks and the lag producer, for a keeper that
// rebuilds its instruments; the synchronous instruments stay usable.
func (i *Instruments) Unregister() {
	if i == nil {
		return
	}
	for _, r := range i.regs {
		_ = r.Unregister()
	}
	i.regs = nil
	if i.lag != nil && i.producers != nil {
		i.producers.remove(i.lag)
	}
}

func (i *Instruments) registerShards(m metric.Meter, src ShardSource) error {
	var errs []error
	gauge := func(name, unit, desc string) metric.Int64ObservableGauge {
		g, err := m.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return g
	}
	counter := func(name, desc string) metric.Int64ObservableCounter {
		c, err := m.Int64ObservableCounter(name, metric.WithUnit("{message}"), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	messages := gauge(MetricQueueMessages, "{message}", "Messages in a shard by state.")
	age, err := m.Float64ObservableGauge(MetricQueueOldestReadyAge, metric.WithUnit("s"),
		metric.WithDescription("Age of the oldest ready message of a shard; 0 when none is ready."))
	errs = append(errs, err)
	enqueued := counter(MetricQueueEnqueued, "Messages enqueued into a shard since the queue was created.")
	acked := counter(MetricQueueAcked, "Messages acked in a shard since the queue was created.")
	unlocked := counter(MetricQueueUnlocked, "Locked messages moved back to ready.")
	requeued := counter(MetricQueueRequeued, "Messages whose lease expired, moved back to ready.")
	expired := counter(MetricQueueExpired, "Messages dropped because their TTL passed.")
	dead := counter(MetricQueueDeadLettered, "Messages moved to the dead set after too many deliveries.")
	trimmed := counter(MetricQueueTrimmed, "Messages dropped by the queue's size cap.")
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("per-shard instruments: %w", err)
	}

	states := [4]attribute.KeyValue{
		attribute.String(AttrState, StateReady), attribute.String(AttrState, StateInflight),
		attribute.String(AttrState, StateLocked), attribute.String(AttrState, StateDead),
	}
	lockAck, lockNack := attribute.String(AttrLock, LockAck), attribute.String(AttrLock, LockNack)
	reg, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		src.EachShard(func(s ShardSnapshot) {
			q, sh := attribute.String(AttrQueue, s.Queue), attribute.String(AttrShard, s.Shard)
			base := metric.WithAttributeSet(attribute.NewSet(q, sh))
			for k, v := range [4]int64{s.Ready, s.Inflight, s.Locked, s.Dead} {
				if k == 2 && s.SplitLocks {
					o.ObserveInt64(messages, s.LockedAck, metric.WithAttributeSet(attribute.NewSet(q, sh, states[k], lockAck)))
					o.ObserveInt64(messages, s.LockedNack, metric.WithAttributeSet(attribute.NewSet(q, sh, states[k], lockNack)))
					continue
				}
				o.ObserveInt64(messages, v, metric.WithAttributeSet(attribute.NewSet(q, sh, states[k])))
			}
			o.ObserveFloat64(age, max(s.OldestReadyAge, 0).Seconds(), base)
			o.ObserveInt64(enqueued, s.Enqueued, base)
			o.ObserveInt64(acked, s.Acked, base)
			if s.SplitLocks {
				o.ObserveInt64(unlocked, s.UnlockedAck, metric.WithAttributeSet(attribute.NewSet(q, sh, lockAck)))
				o.ObserveInt64(unlocked, s.UnlockedNack, metric.WithAttributeSet(attribute.NewSet(q, sh, lockNack)))
			} else {
				o.ObserveInt64(unlocked, s.Unlocked, base)
			}
			o.ObserveInt64(requeued, s.Requeued, base)
			o.ObserveInt64(expired, s.Expired, base)
			o.ObserveInt64(dead, s.DeadLettered, base)
			o.ObserveInt64(trimmed, s.Trimmed, base)
		})
		return nil
	}, messages, age, enqueued, acked, unlocked, requeued, expired, dead, trimmed)
	if err != nil {
		return fmt.Errorf("per-shard callback: %w", err)
	}
	i.regs = append(i.regs, reg)
	return nil
}

func (i *Instruments) registerGlobal(m metric.Meter, src GlobalSource) error {
	var errs []error
	gauge := func(name, unit, desc string) metric.Int64ObservableGauge {
		g, err := m.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return g
	}
	members := gauge(MetricClusterMembers, "{member}", "Live keepers in the fleet.")
	shards := gauge(MetricClusterShards, "{shard}", "Shards of all queues.")
	unowned := gauge(MetricClusterUnowned, "{shard}", "Shards that no keeper owns right now.")
	qmessages := gauge(MetricClusterQueueMessages, "{message}", "Messages of a queue over all its shards, by state.")
	qshards := gauge(MetricClusterQueueShards, "{shard}", "Shards of a queue.")
	rebalances, err := m.Int64ObservableCounter(MetricClusterRebalances, metric.WithUnit("{rebalance}"),
		metric.WithDescription("Ring changes that moved shard ownership."))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("global instruments: %w", err)
	}
	reg, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		g, ok := src.Global()
		if !ok {
			return nil
		}
		o.ObserveInt64(members, int64(g.Members))
		o.ObserveInt64(shards, int64(g.Shards))
		o.ObserveInt64(unowned, int64(g.UnownedShards))
		o.ObserveInt64(rebalances, g.Rebalances)
		for _, q := range g.Queues {
			qa := attribute.String(AttrQueue, q.Queue)
			o.ObserveInt64(qshards, int64(q.Shards), metric.WithAttributes(qa))
			for state, v := range map[string]int64{StateReady: q.Ready, StateInflight: q.Inflight, StateLocked: q.Locked, StateDead: q.Dead} {
				o.ObserveInt64(qmessages, v, metric.WithAttributes(qa, attribute.String(AttrState, state)))
			}
		}
		return nil
	}, members, shards, unowned, qmessages, qshards, rebalances)
	if err != nil {
		return fmt.Errorf("global callback: %w", err)
	}
	i.regs = append(i.regs, reg)
	return nil
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

// RecordUnlockLag records how late one locked message went back to ready.
// A negative lag (clock noise between Redis TIME readings) counts as 0.
func (i *Instruments) RecordUnlockLag(ctx context.Context, queue, shard string, lag time.Duration) {
	if i == nil {
		return
	}
	v := max(lag, 0).Seconds()
	if i.lag != nil {
		i.lag.record(queue, shard, v)
		return
	}
	i.lagSync.Record(ctx, v, metric.WithAttributes(attribute.String(AttrQueue, queue), attribute.String(AttrShard, shard)))
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
	i.passDuration.Record(ctx, max(d, 0).Seconds(),
		metric.WithAttributes(attribute.String(AttrTask, task), attribute.String(AttrOutcome, outcome)))
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

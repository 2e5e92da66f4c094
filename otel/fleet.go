package otel

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/keeperhq/keeper/queue"
)

// fleetProducer makes the fleet series at each collection: per shard from
// the shards the keeper owns right then (a shard it let go is not in the
// next collection, and was in none after the moment it was let go), global
// while the keeper leads. It is a producer rather than SDK instruments for
// two reasons: the SDK keeps every attribute set an instrument ever saw for
// the life of the process, and it stamps cumulative points with its own
// start time, which differs from keeper to keeper; a new owner must
// continue the old one's series, start time included.
type fleetProducer struct {
	scope  instrumentation.Scope
	shards ShardSource
	global GlobalSource
}

var _ sdkmetric.Producer = (*fleetProducer)(nil)

// unknownStart is the start time of every fleet point: unknown (0 in OTLP).
// The counters count since the queue was created, which keeper does not
// know for queues made before it kept track; a start time that is the same
// for every writer, and that no consumer reads as a reset, is the one that
// says so. Gauges have no start time; it is set for them all the same.
var unknownStart = time.Unix(0, 0)

type gauge[N int64 | float64] struct {
	name, unit, desc string
	points           []metricdata.DataPoint[N]
}

func (g *gauge[N]) add(v N, attrs attribute.Set, now time.Time) {
	g.points = append(g.points, metricdata.DataPoint[N]{Attributes: attrs, StartTime: unknownStart, Time: now, Value: v})
}

func (g *gauge[N]) metric() (metricdata.Metrics, bool) {
	return metricdata.Metrics{Name: g.name, Description: g.desc, Unit: g.unit,
		Data: metricdata.Gauge[N]{DataPoints: g.points}}, len(g.points) > 0
}

// counter is a cumulative, monotonic sum.
type counter struct{ gauge[int64] }

func (c *counter) metric() (metricdata.Metrics, bool) {
	return metricdata.Metrics{Name: c.name, Description: c.desc, Unit: c.unit,
		Data: metricdata.Sum[int64]{Temporality: metricdata.CumulativeTemporality, IsMonotonic: true,
			DataPoints: c.points}}, len(c.points) > 0
}

// Produce implements sdkmetric.Producer.
func (f *fleetProducer) Produce(context.Context) ([]metricdata.ScopeMetrics, error) {
	now := time.Now()
	var out []metricdata.Metrics
	if f.shards != nil {
		out = append(out, f.perShard(now)...)
	}
	if f.global != nil {
		out = append(out, f.globals(now)...)
	}
	if len(out) == 0 {
		return nil, nil
	}
	return []metricdata.ScopeMetrics{{Scope: f.scope, Metrics: out}}, nil
}

func (f *fleetProducer) perShard(now time.Time) []metricdata.Metrics {
	messages := gauge[int64]{name: MetricQueueMessages, unit: "{message}", desc: "Messages in a shard by state."}
	age := gauge[float64]{name: MetricQueueOldestReadyAge, unit: "s",
		desc: "Age of the oldest ready message of a shard; 0 when none is ready."}
	newCounter := func(name, desc string) *counter {
		return &counter{gauge[int64]{name: name, unit: "{message}", desc: desc}}
	}
	counters := []*counter{
		newCounter(MetricQueueEnqueued, "Messages enqueued into a shard since the queue was created."),
		newCounter(MetricQueueAcked, "Messages acked in a shard since the queue was created."),
		newCounter(MetricQueueUnlocked, "Locked messages moved back to ready."),
		newCounter(MetricQueueRequeued, "Messages whose lease expired, moved back to ready."),
		newCounter(MetricQueueExpired, "Messages dropped because their TTL passed."),
		newCounter(MetricQueueDeadLettered, "Messages moved to the dead set after too many deliveries."),
		newCounter(MetricQueueTrimmed, "Messages dropped by the queue's size cap."),
	}
	lag := metricdata.Histogram[float64]{Temporality: metricdata.CumulativeTemporality}
	states := [4]attribute.KeyValue{
		attribute.String(AttrState, StateReady), attribute.String(AttrState, StateInflight),
		attribute.String(AttrState, StateLocked), attribute.String(AttrState, StateDead),
	}
	lockAck, lockNack := attribute.String(AttrLock, LockAck), attribute.String(AttrLock, LockNack)
	f.shards.EachShard(func(s ShardSnapshot) {
		q, sh := attribute.String(AttrQueue, s.Queue), attribute.String(AttrShard, s.Shard)
		base := attribute.NewSet(q, sh)
		for k, v := range [4]int64{s.Ready, s.Inflight, s.Locked, s.Dead} {
			if k == 2 && s.SplitLocks {
				messages.add(s.LockedAck, attribute.NewSet(q, sh, states[k], lockAck), now)
				messages.add(s.LockedNack, attribute.NewSet(q, sh, states[k], lockNack), now)
				continue
			}
			messages.add(v, attribute.NewSet(q, sh, states[k]), now)
		}
		age.add(max(s.OldestReadyAge, 0).Seconds(), base, now)
		for k, v := range [...]int64{s.Enqueued, s.Acked, s.Unlocked, s.Requeued, s.Expired, s.DeadLettered, s.Trimmed} {
			if k == 2 && s.SplitLocks {
				// A layout with two lock pools counts unlocks by pool.
				counters[k].add(s.UnlockedAck, attribute.NewSet(q, sh, lockAck), now)
				counters[k].add(s.UnlockedNack, attribute.NewSet(q, sh, lockNack), now)
				continue
			}
			counters[k].add(v, base, now)
		}
		// A shard that never unlocked anything has no histogram: most
		// shards of most queues never lock a message, and 16 series each
		// would be most of keeper's series.
		if n := s.Lag.Count(); n > 0 {
			buckets := make([]uint64, len(s.Lag.Counts))
			for i, c := range s.Lag.Counts {
				buckets[i] = uint64(max(c, 0))
			}
			lag.DataPoints = append(lag.DataPoints, metricdata.HistogramDataPoint[float64]{
				Attributes: base, StartTime: unknownStart, Time: now,
				Count: uint64(n), Bounds: LagBuckets, BucketCounts: buckets,
				Sum: float64(s.Lag.SumUs) / 1e6,
			})
		}
	})
	var out []metricdata.Metrics
	for _, m := range []func() (metricdata.Metrics, bool){messages.metric, age.metric} {
		if x, ok := m(); ok {
			out = append(out, x)
		}
	}
	for _, c := range counters {
		if x, ok := c.metric(); ok {
			out = append(out, x)
		}
	}
	if len(lag.DataPoints) > 0 {
		out = append(out, metricdata.Metrics{Name: MetricUnlockLag, Unit: "s",
			Description: "Time from a locked message's due time to its move back to ready, per shard, kept in Redis.",
			Data:        lag})
	}
	return out
}

func (f *fleetProducer) globals(now time.Time) []metricdata.Metrics {
	g, ok := f.global.Global()
	if !ok {
		return nil
	}
	none := attribute.NewSet()
	members := gauge[int64]{name: MetricClusterMembers, unit: "{member}", desc: "Live keepers in the fleet."}
	shards := gauge[int64]{name: MetricClusterShards, unit: "{shard}", desc: "Shards of all queues."}
	unowned := gauge[int64]{name: MetricClusterUnowned, unit: "{shard}", desc: "Shards that no keeper owns right now."}
	qmessages := gauge[int64]{name: MetricClusterQueueMessages, unit: "{message}",
		desc: "Messages of a queue over all its shards, by state."}
	qshards := gauge[int64]{name: MetricClusterQueueShards, unit: "{shard}", desc: "Shards of a queue."}
	rebalances := counter{gauge[int64]{name: MetricClusterRebalances, unit: "{rebalance}",
		desc: "Ring changes that moved shard ownership."}}
	members.add(int64(g.Members), none, now)
	shards.add(int64(g.Shards), none, now)
	unowned.add(int64(g.UnownedShards), none, now)
	rebalances.add(g.Rebalances, none, now)
	for _, q := range g.Queues {
		qa := attribute.String(AttrQueue, q.Queue)
		qshards.add(int64(q.Shards), attribute.NewSet(qa), now)
		if !q.Complete {
			continue
		}
		for _, sv := range [...]struct {
			state string
			v     int64
		}{{StateReady, q.Ready}, {StateInflight, q.Inflight}, {StateLocked, q.Locked}, {StateDead, q.Dead}} {
			qmessages.add(sv.v, attribute.NewSet(qa, attribute.String(AttrState, sv.state)), now)
		}
	}
	var out []metricdata.Metrics
	for _, m := range []func() (metricdata.Metrics, bool){members.metric, shards.metric, unowned.metric,
		qmessages.metric, qshards.metric, rebalances.metric} {
		if x, ok := m(); ok {
			out = append(out, x)
		}
	}
	return out
}

// LagBuckets are the unlock-lag histogram's boundaries in seconds, the
// buckets the unlock script counts in Redis (queue.LagBoundsUs).
var LagBuckets = func() []float64 {
	out := make([]float64, len(queue.LagBoundsUs))
	for i, us := range queue.LagBoundsUs {
		out[i] = float64(us) / 1e6
	}
	return out
}()

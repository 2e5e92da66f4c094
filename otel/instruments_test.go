package otel

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/keeperhq/keeper/queue"
)

// shards is a ShardSource whose owned set a test changes, as the ownership
// code will when the ring moves.
type shards struct {
	mu sync.Mutex
	m  map[string]ShardSnapshot
}

func newShards(ss ...ShardSnapshot) *shards {
	s := &shards{m: map[string]ShardSnapshot{}}
	for _, x := range ss {
		s.put(x)
	}
	return s
}

func (s *shards) put(x ShardSnapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[x.Shard] = x
}

func (s *shards) drop(shard string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, shard)
}

func (s *shards) EachShard(f func(ShardSnapshot)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, x := range s.m {
		f(x)
	}
}

func (s *shards) OwnedShards() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

type global struct {
	mu     sync.Mutex
	leader bool
	snap   GlobalSnapshot
}

func (g *global) set(leader bool, snap GlobalSnapshot) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.leader, g.snap = leader, snap
}

func (g *global) Global() (GlobalSnapshot, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.snap, g.leader
}

type self struct {
	s *shards
	g *global
}

func (x self) OwnedShards() int { return x.s.OwnedShards() }
func (x self) IsLeader() bool {
	_, ok := x.g.Global()
	return ok
}

func snapshot(q, shard string, base int64) ShardSnapshot {
	return ShardSnapshot{
		Queue: q, Shard: shard,
		Ready: base + 1, Inflight: base + 2, Locked: base + 3, Dead: base + 4,
		OldestReadyAge: 1500 * time.Millisecond,
		Counters: queue.Counters{Enqueued: base + 10, Acked: base + 11, Unlocked: base + 12, Requeued: base + 13,
			Expired: base + 14, DeadLettered: base + 15, Trimmed: base + 16},
	}
}

// point is one data point flattened for assertions: metric name, sorted
// attributes "k=v,k=v", and value (count for histograms).
type point struct {
	metric string
	attrs  string
	value  float64
}

func attrString(s attribute.Set) string {
	var parts []string
	for _, kv := range s.ToSlice() {
		parts = append(parts, string(kv.Key)+"="+kv.Value.String())
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func flatten(rm metricdata.ResourceMetrics) []point {
	var out []point
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Gauge[int64]:
				for _, dp := range d.DataPoints {
					out = append(out, point{m.Name, attrString(dp.Attributes), float64(dp.Value)})
				}
			case metricdata.Gauge[float64]:
				for _, dp := range d.DataPoints {
					out = append(out, point{m.Name, attrString(dp.Attributes), dp.Value})
				}
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					out = append(out, point{m.Name, attrString(dp.Attributes), float64(dp.Value)})
				}
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					out = append(out, point{m.Name, attrString(dp.Attributes), float64(dp.Count)})
				}
			default:
				panic(fmt.Sprintf("unexpected data %T for %s", m.Data, m.Name))
			}
		}
	}
	return out
}

func collectPoints(t *testing.T, r sdkmetric.Reader) []point {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("collect: %v", err)
	}
	return flatten(rm)
}

func pointsOf(ps []point, metric string) map[string]float64 {
	out := map[string]float64{}
	for _, p := range ps {
		if p.metric == metric {
			out[p.attrs] = p.value
		}
	}
	return out
}

func histogramOf(t *testing.T, r sdkmetric.Reader, metric string) metricdata.Histogram[float64] {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("collect: %v", err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == metric {
				return m.Data.(metricdata.Histogram[float64])
			}
		}
	}
	return metricdata.Histogram[float64]{}
}

// fleetReader collects the fleet series of shards and global the way
// PublishFleet hangs them on the provider's fleet reader.
func fleetReader(shards ShardSource, global GlobalSource) *sdkmetric.ManualReader {
	r := sdkmetric.NewManualReader(sdkmetric.WithProducer(
		&fleetProducer{scope: instrumentation.Scope{Name: ScopeName}, shards: shards, global: global}))
	sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	return r
}

// selfReader is a meter on a ManualReader, for a keeper's own instruments.
func selfReader() (*sdkmetric.ManualReader, metric.Meter) {
	r := sdkmetric.NewManualReader()
	return r, sdkmetric.NewMeterProvider(sdkmetric.WithReader(r)).Meter(ScopeName)
}

// startTimes lists the distinct start times of every cumulative point.
func startTimes(t *testing.T, r sdkmetric.Reader) map[time.Time]bool {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[time.Time]bool{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					out[dp.StartTime] = true
				}
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					out[dp.StartTime] = true
				}
			}
		}
	}
	return out
}

func withLag(s ShardSnapshot, counts map[int]int64, sumUs int64) ShardSnapshot {
	for i, n := range counts {
		s.Lag.Counts[i] = n
	}
	s.Lag.SumUs = sumUs
	return s
}

func TestShardThatLeavesDisappearsAtNextCollection(t *testing.T) {
	src := newShards(withLag(snapshot("q1", "q1#0", 0), map[int]int64{1: 1}, 900),
		withLag(snapshot("q1", "q1#1", 100), map[int]int64{3: 2}, 7000))
	r := fleetReader(src, nil)

	ps := collectPoints(t, r)
	msgs := pointsOf(ps, MetricQueueMessages)
	want := map[string]float64{
		"queue=q1,shard=q1#0,state=ready": 1, "queue=q1,shard=q1#0,state=inflight": 2,
		"queue=q1,shard=q1#0,state=locked": 3, "queue=q1,shard=q1#0,state=dead": 4,
		"queue=q1,shard=q1#1,state=ready": 101, "queue=q1,shard=q1#1,state=inflight": 102,
		"queue=q1,shard=q1#1,state=locked": 103, "queue=q1,shard=q1#1,state=dead": 104,
	}
	if fmt.Sprint(msgs) != fmt.Sprint(want) {
		t.Fatalf("messages:\n got %v\nwant %v", msgs, want)
	}
	if got := pointsOf(ps, MetricQueueOldestReadyAge)["queue=q1,shard=q1#1"]; got != 1.5 {
		t.Errorf("oldest ready age %v, want 1.5", got)
	}
	counters := map[string]float64{
		MetricQueueEnqueued: 110, MetricQueueAcked: 111, MetricQueueUnlocked: 112, MetricQueueRequeued: 113,
		MetricQueueExpired: 114, MetricQueueDeadLettered: 115, MetricQueueTrimmed: 116,
	}
	for name, v := range counters {
		if got := pointsOf(ps, name)["queue=q1,shard=q1#1"]; got != v {
			t.Errorf("%s = %v, want %v", name, got, v)
		}
	}
	if got := pointsOf(ps, MetricUnlockLag); fmt.Sprint(got) != fmt.Sprint(map[string]float64{
		"queue=q1,shard=q1#0": 1, "queue=q1,shard=q1#1": 2}) {
		t.Errorf("unlock lag counts %v", got)
	}

	src.drop("q1#1")
	ps = collectPoints(t, r)
	for _, p := range ps {
		if strings.Contains(p.attrs, "shard=q1#1") {
			t.Errorf("shard q1#1 left but %s still reported: %s", p.metric, p.attrs)
		}
	}
	if n := len(pointsOf(ps, MetricQueueMessages)); n != 4 {
		t.Errorf("messages series after the move: %d, want 4", n)
	}
	if n := len(pointsOf(ps, MetricUnlockLag)); n != 1 {
		t.Errorf("unlock lag series after the move: %d, want 1", n)
	}
}

// A new owner continues the old one's series: the same attributes, the
// counters and the histogram where Redis has them, and the same (unknown)
// start time, so nothing reads the change of writer as a reset.
func TestFleetSeriesContinueOnNewOwner(t *testing.T) {
	a := newShards(withLag(ShardSnapshot{Queue: "q", Shard: "q#0", Counters: queue.Counters{Unlocked: 100}},
		map[int]int64{2: 100}, 150_000))
	b := newShards()
	ra, rb := fleetReader(a, nil), fleetReader(b, nil)
	if got := pointsOf(collectPoints(t, ra), MetricQueueUnlocked)["queue=q,shard=q#0"]; got != 100 {
		t.Fatalf("A reports %v, want 100", got)
	}
	startA := startTimes(t, ra)
	a.drop("q#0")
	b.put(withLag(ShardSnapshot{Queue: "q", Shard: "q#0", Counters: queue.Counters{Unlocked: 130}},
		map[int]int64{2: 110, 5: 20}, 400_000))
	if got := collectPoints(t, ra); len(got) != 0 {
		t.Fatalf("A still reports after the move: %v", got)
	}
	if got := pointsOf(collectPoints(t, rb), MetricQueueUnlocked)["queue=q,shard=q#0"]; got != 130 {
		t.Fatalf("B reports %v, want 130", got)
	}
	h := histogramOf(t, rb, MetricUnlockLag)
	if len(h.DataPoints) != 1 || h.DataPoints[0].Count != 130 || h.DataPoints[0].Sum != 0.4 {
		t.Fatalf("B's histogram %+v, want 130 lags summing to 0.4s", h.DataPoints)
	}
	startB := startTimes(t, rb)
	if len(startA) != 1 || fmt.Sprint(startA) != fmt.Sprint(startB) || !startA[time.Unix(0, 0)] {
		t.Fatalf("start times: A %v, B %v; want both the unknown start, Unix 0", startA, startB)
	}
}

func TestGlobalOnlyWhileLeader(t *testing.T) {
	g := &global{}
	src := newShards(snapshot("q1", "q1#0", 0))
	r := fleetReader(src, g)
	sr, m := selfReader()
	inst, err := NewInstruments(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := inst.Observe(self{src, g}); err != nil {
		t.Fatal(err)
	}
	clusterMetrics := []string{MetricClusterMembers, MetricClusterShards, MetricClusterUnowned,
		MetricClusterRebalances, MetricClusterQueueMessages, MetricClusterQueueShards}
	noGlobal := func(ps []point) {
		t.Helper()
		for _, name := range clusterMetrics {
			if got := pointsOf(ps, name); len(got) != 0 {
				t.Errorf("not leader, but %s reported: %v", name, got)
			}
		}
	}
	noGlobal(collectPoints(t, r))
	own := collectPoints(t, sr)
	if got := pointsOf(own, MetricMemberLeader)[""]; got != 0 {
		t.Errorf("leader gauge %v, want 0", got)
	}
	if got := pointsOf(own, MetricMemberOwnedShards)[""]; got != 1 {
		t.Errorf("owned shards %v, want 1", got)
	}

	g.set(true, GlobalSnapshot{Members: 3, Shards: 8, UnownedShards: 1, Rebalances: 5,
		Queues: []QueueTotals{{Queue: "q1", Shards: 8, Ready: 10, Inflight: 2, Locked: 3, Dead: 1, Complete: true}}})
	ps := collectPoints(t, r)
	for name, want := range map[string]map[string]float64{
		MetricClusterMembers:       {"": 3},
		MetricClusterShards:        {"": 8},
		MetricClusterUnowned:       {"": 1},
		MetricClusterRebalances:    {"": 5},
		MetricClusterQueueShards:   {"queue=q1": 8},
		MetricClusterQueueMessages: {"queue=q1,state=ready": 10, "queue=q1,state=inflight": 2, "queue=q1,state=locked": 3, "queue=q1,state=dead": 1},
	} {
		if got := pointsOf(ps, name); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: got %v, want %v", name, got, want)
		}
	}
	if got := pointsOf(collectPoints(t, sr), MetricMemberLeader)[""]; got != 1 {
		t.Errorf("leader gauge %v, want 1", got)
	}

	g.set(false, GlobalSnapshot{})
	noGlobal(collectPoints(t, r))
}

// The per-shard histogram is the one Redis keeps (queue.LagHistogram),
// exported as is: its buckets, count and sum; a shard that never unlocked
// anything has none.
func TestUnlockLagFromRedisHistogram(t *testing.T) {
	src := newShards(withLag(snapshot("q", "q#0", 0), map[int]int64{0: 1, 1: 2, 6: 1, len(queue.LagBoundsUs): 1}, 60_042_400),
		snapshot("q", "q#1", 0))
	h := histogramOf(t, fleetReader(src, nil), MetricUnlockLag)
	if h.Temporality != metricdata.CumulativeTemporality || len(h.DataPoints) != 1 {
		t.Fatalf("histogram %+v, want one point (q#1 has no lags)", h)
	}
	dp := h.DataPoints[0]
	want := make([]uint64, len(LagBuckets)+1)
	want[0], want[1], want[6], want[len(LagBuckets)] = 1, 2, 1, 1
	if fmt.Sprint(dp.BucketCounts) != fmt.Sprint(want) || dp.Count != 5 || dp.Sum != 60.0424 {
		t.Errorf("buckets %v count %d sum %v, want %v count 5 sum 60.0424", dp.BucketCounts, dp.Count, dp.Sum, want)
	}
	if fmt.Sprint(dp.Bounds) != fmt.Sprint([]float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}) {
		t.Errorf("bounds %v", dp.Bounds)
	}
	if _, ok := dp.Min.Value(); ok {
		t.Error("min set: Redis keeps no minimum")
	}
}

func TestRecordPassErrorRefusalAndLag(t *testing.T) {
	r, m := selfReader()
	inst, err := NewInstruments(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := inst.Observe(nil); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	before := float64(time.Now().Unix())
	inst.RecordPass(ctx, "unlock", 2*time.Millisecond, nil)
	inst.RecordPass(ctx, "unlock", 3*time.Millisecond, nil) // the cached attributes
	inst.RecordPass(ctx, "unlock", 5*time.Millisecond, errors.New("redis down"))
	inst.RecordPass(ctx, "requeue", time.Millisecond, fmt.Errorf("pass: %w", context.Canceled))
	inst.RecordError(ctx, "etcd")
	inst.RecordFenceRefusal(ctx, "q", "q#3")
	inst.RecordFenceRefusal(ctx, "q", "q#3")
	for _, d := range []time.Duration{700 * time.Microsecond, -time.Millisecond, time.Minute} {
		inst.RecordUnlockLag(ctx, "q", "q#0", d)
	}

	ps := collectPoints(t, r)
	if got := pointsOf(ps, MetricTaskPassDuration); fmt.Sprint(got) != fmt.Sprint(map[string]float64{
		"outcome=ok,task=unlock": 2, "outcome=error,task=unlock": 1, "outcome=canceled,task=requeue": 1,
	}) {
		t.Errorf("pass durations: %v", got)
	}
	last := pointsOf(ps, MetricTaskLastSuccess)
	if len(last) != 1 || last["task=unlock"] < before {
		t.Errorf("last success: %v (want task=unlock >= %v)", last, before)
	}
	if got := pointsOf(ps, MetricErrors); fmt.Sprint(got) != fmt.Sprint(map[string]float64{"kind=pass,task=unlock": 1, "kind=etcd": 1}) {
		t.Errorf("errors: %v", got)
	}
	if got := pointsOf(ps, MetricFenceRefusals)["queue=q,shard=q#3"]; got != 2 {
		t.Errorf("fence refusals %v, want 2", got)
	}
	// The keeper's own lag histogram has no queue or shard: those series
	// are the fleet's.
	h := histogramOf(t, r, MetricMemberUnlockLag)
	if len(h.DataPoints) != 1 || h.DataPoints[0].Attributes.Len() != 0 || h.DataPoints[0].Count != 3 {
		t.Fatalf("member unlock lag %+v", h.DataPoints)
	}
	if b := h.DataPoints[0].BucketCounts; b[0] != 1 || b[1] != 1 || b[len(LagBuckets)] != 1 {
		t.Errorf("member unlock lag buckets %v (-1ms counts as 0, a minute above every bound)", b)
	}
}

func TestNilAndNoopInstruments(t *testing.T) {
	var inst *Instruments
	ctx := context.Background()
	inst.RecordUnlockLag(ctx, "q", "q#0", time.Millisecond)
	inst.RecordPass(ctx, "t", time.Millisecond, nil)
	inst.RecordError(ctx, "k")
	inst.RecordFenceRefusal(ctx, "q", "q#0")
	inst.Unregister()

	inst, err := NewInstruments(noop.NewMeterProvider().Meter("x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := inst.Observe(self{newShards(), &global{}}); err != nil {
		t.Fatal(err)
	}
	inst.RecordUnlockLag(ctx, "q", "q#0", time.Millisecond)
	inst.RecordPass(ctx, "t", time.Millisecond, errors.New("x"))
}

// The cost of recording one pass, as the task keeper does for each.
func BenchmarkRecordPass(b *testing.B) {
	_, m := selfReader()
	inst, err := NewInstruments(m)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	tasks := []string{"unlock", "requeue", "expire", "trim", "measure"}
	b.ReportAllocs()
	for n := 0; b.Loop(); n++ {
		inst.RecordPass(ctx, tasks[n%len(tasks)], time.Millisecond, nil)
	}
}

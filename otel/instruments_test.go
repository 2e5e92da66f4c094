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
	"go.opentelemetry.io/otel/metric/noop"
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

// providerMeterForTest wires a ManualReader the way Start wires its readers,
// so the owned-shard lag histogram is exercised without an exporter.
func providerMeterForTest() (*sdkmetric.ManualReader, *providerMeter) {
	ps := &producerSet{}
	r := sdkmetric.NewManualReader(sdkmetric.WithProducer(ps))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	return r, &providerMeter{Meter: mp.Meter("test"), name: "test", producers: ps}
}

func TestShardThatLeavesDisappearsAtNextCollection(t *testing.T) {
	r, m := providerMeterForTest()
	src := newShards(snapshot("q1", "q1#0", 0), snapshot("q1", "q1#1", 100))
	inst, err := RegisterInstruments(m, src, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	inst.RecordUnlockLag(context.Background(), "q1", "q1#0", 3*time.Millisecond)
	inst.RecordUnlockLag(context.Background(), "q1", "q1#1", 3*time.Millisecond)

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
	if n := len(pointsOf(ps, MetricUnlockLag)); n != 2 {
		t.Errorf("unlock lag series: %d, want 2", n)
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

func TestCumulativeCounterContinuesOnNewOwner(t *testing.T) {
	ra, ma := providerMeterForTest()
	rb, mb := providerMeterForTest()
	a := newShards(ShardSnapshot{Queue: "q", Shard: "q#0", Counters: queue.Counters{Unlocked: 100}})
	b := newShards()
	if _, err := RegisterInstruments(ma, a, nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := RegisterInstruments(mb, b, nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := pointsOf(collectPoints(t, ra), MetricQueueUnlocked)["queue=q,shard=q#0"]; got != 100 {
		t.Fatalf("A reports %v, want 100", got)
	}
	a.drop("q#0")
	b.put(ShardSnapshot{Queue: "q", Shard: "q#0", Counters: queue.Counters{Unlocked: 130}})
	if got := pointsOf(collectPoints(t, ra), MetricQueueUnlocked); len(got) != 0 {
		t.Fatalf("A still reports after the move: %v", got)
	}
	if got := pointsOf(collectPoints(t, rb), MetricQueueUnlocked)["queue=q,shard=q#0"]; got != 130 {
		t.Fatalf("B reports %v, want 130", got)
	}
}

func TestGlobalOnlyWhileLeader(t *testing.T) {
	r, m := providerMeterForTest()
	g := &global{}
	src := newShards(snapshot("q1", "q1#0", 0))
	if _, err := RegisterInstruments(m, src, g, self{src, g}); err != nil {
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
	ps := collectPoints(t, r)
	noGlobal(ps)
	if got := pointsOf(ps, MetricMemberLeader)[""]; got != 0 {
		t.Errorf("leader gauge %v, want 0", got)
	}
	if got := pointsOf(ps, MetricMemberOwnedShards)[""]; got != 1 {
		t.Errorf("owned shards %v, want 1", got)
	}

	g.set(true, GlobalSnapshot{Members: 3, Shards: 8, UnownedShards: 1, Rebalances: 5,
		Queues: []QueueTotals{{Queue: "q1", Shards: 8, Ready: 10, Inflight: 2, Locked: 3, Dead: 1}}})
	ps = collectPoints(t, r)
	for name, want := range map[string]map[string]float64{
		MetricClusterMembers:       {"": 3},
		MetricClusterShards:        {"": 8},
		MetricClusterUnowned:       {"": 1},
		MetricClusterRebalances:    {"": 5},
		MetricClusterQueueShards:   {"queue=q1": 8},
		MetricClusterQueueMessages: {"queue=q1,state=ready": 10, "queue=q1,state=inflight": 2, "queue=q1,state=locked": 3, "queue=q1,state=dead": 1},
		MetricMemberLeader:         {"": 1},
	} {
		if got := pointsOf(ps, name); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: got %v, want %v", name, got, want)
		}
	}

	g.set(false, GlobalSnapshot{})
	noGlobal(collectPoints(t, r))
}

func TestUnlockLagBucketsAndRestart(t *testing.T) {
	r, m := providerMeterForTest()
	src := newShards(snapshot("q", "q#0", 0))
	inst, err := RegisterInstruments(m, src, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, d := range []time.Duration{700 * time.Microsecond, time.Millisecond, 40 * time.Millisecond, -time.Millisecond, time.Minute} {
		inst.RecordUnlockLag(ctx, "q", "q#0", d)
	}
	h := histogramOf(t, r, MetricUnlockLag)
	if h.Temporality != metricdata.CumulativeTemporality || len(h.DataPoints) != 1 {
		t.Fatalf("histogram %+v", h)
	}
	dp := h.DataPoints[0]
	want := make([]uint64, len(LagBuckets)+1)
	want[0] = 1               // -1ms clamps to 0
	want[1] = 2               // 0.7ms and 1ms (upper bound inclusive)
	want[6] = 1               // 40ms in (25ms, 50ms]
	want[len(LagBuckets)] = 1 // a minute overflows
	if fmt.Sprint(dp.BucketCounts) != fmt.Sprint(want) || dp.Count != 5 {
		t.Errorf("buckets %v count %d, want %v count 5", dp.BucketCounts, dp.Count, want)
	}
	if mx, _ := dp.Max.Value(); mx != 60 {
		t.Errorf("max %v, want 60", mx)
	}
	if mn, _ := dp.Min.Value(); mn != 0 {
		t.Errorf("min %v, want 0", mn)
	}
	start := dp.StartTime

	// The shard leaves and comes back: the histogram restarts rather than
	// resuming the old series.
	src.drop("q#0")
	if h := histogramOf(t, r, MetricUnlockLag); len(h.DataPoints) != 0 {
		t.Fatalf("left shard still has lag points: %+v", h.DataPoints)
	}
	src.put(snapshot("q", "q#0", 0))
	inst.RecordUnlockLag(ctx, "q", "q#0", time.Millisecond)
	dp = histogramOf(t, r, MetricUnlockLag).DataPoints[0]
	if dp.Count != 1 || dp.StartTime.Before(start) {
		t.Errorf("after return: count %d start %v (old start %v), want a fresh series", dp.Count, dp.StartTime, start)
	}

	inst.Unregister()
	if h := histogramOf(t, r, MetricUnlockLag); len(h.DataPoints) != 0 {
		t.Errorf("unregistered instruments still produce lag: %+v", h.DataPoints)
	}
	if got := pointsOf(collectPoints(t, r), MetricQueueMessages); len(got) != 0 {
		t.Errorf("unregistered instruments still observe shards: %v", got)
	}
}

// With a meter that is not a Provider's, unlock lag falls back to the SDK's
// histogram with the same boundaries.
func TestUnlockLagOnForeignMeter(t *testing.T) {
	r := sdkmetric.NewManualReader()
	m := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r)).Meter("foreign")
	inst, err := RegisterInstruments(m, newShards(snapshot("q", "q#0", 0)), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	inst.RecordUnlockLag(context.Background(), "q", "q#0", 2*time.Millisecond)
	h := histogramOf(t, r, MetricUnlockLag)
	if len(h.DataPoints) != 1 || fmt.Sprint(h.DataPoints[0].Bounds) != fmt.Sprint(LagBuckets) {
		t.Fatalf("histogram %+v", h)
	}
}

func TestRecordPassErrorAndRefusal(t *testing.T) {
	r, m := providerMeterForTest()
	inst, err := RegisterInstruments(m, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	before := float64(time.Now().Unix())
	inst.RecordPass(ctx, "unlock", 2*time.Millisecond, nil)
	inst.RecordPass(ctx, "unlock", 5*time.Millisecond, errors.New("redis down"))
	inst.RecordPass(ctx, "requeue", time.Millisecond, fmt.Errorf("pass: %w", context.Canceled))
	inst.RecordError(ctx, "etcd")
	inst.RecordFenceRefusal(ctx, "q", "q#3")
	inst.RecordFenceRefusal(ctx, "q", "q#3")

	ps := collectPoints(t, r)
	if got := pointsOf(ps, MetricTaskPassDuration); fmt.Sprint(got) != fmt.Sprint(map[string]float64{
		"outcome=ok,task=unlock": 1, "outcome=error,task=unlock": 1, "outcome=canceled,task=requeue": 1,
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
}

func TestNilAndNoopInstruments(t *testing.T) {
	var inst *Instruments
	ctx := context.Background()
	inst.RecordUnlockLag(ctx, "q", "q#0", time.Millisecond)
	inst.RecordPass(ctx, "t", time.Millisecond, nil)
	inst.RecordError(ctx, "k")
	inst.RecordFenceRefusal(ctx, "q", "q#0")
	inst.Unregister()

	inst, err := RegisterInstruments(noop.NewMeterProvider().Meter("x"), newShards(), &global{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	inst.RecordUnlockLag(ctx, "q", "q#0", time.Millisecond)
	inst.RecordPass(ctx, "t", time.Millisecond, errors.New("x"))
}

// ownedShards is a ShardSource whose owned set is wider than its measured
// one, as a keeper's is right after it takes shards over.
type ownedShards struct {
	*shards
	mu    sync.Mutex
	owned map[string]string // shard -> queue
}

func (o *ownedShards) own(queue, shard string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.owned[shard] = queue
}

func (o *ownedShards) disown(shard string) {
	o.mu.Lock()
	delete(o.owned, shard)
	o.mu.Unlock()
	o.drop(shard)
}

func (o *ownedShards) EachOwned(f func(queue, shard string)) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for sh, q := range o.owned {
		f(q, sh)
	}
}

// The unlock lags of a shard just taken over, recorded before its first
// measurement, are exported and kept across collections while it is owned
// (they used to be dropped at the next collection, because only measured
// shards counted as owned), and go when it leaves.
func TestUnlockLagOfShardOwnedButNotMeasuredYet(t *testing.T) {
	r, m := providerMeterForTest()
	src := &ownedShards{shards: newShards(snapshot("q", "q#0", 0)), owned: map[string]string{"q#0": "q"}}
	inst, err := RegisterInstruments(m, src, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	src.own("q", "q#1") // taken over; not measured yet
	for i := 0; i < 3; i++ {
		inst.RecordUnlockLag(ctx, "q", "q#1", 2*time.Second)
	}
	lagCount := func() map[string]float64 { return pointsOf(collectPoints(t, r), MetricUnlockLag) }
	for round := 0; round < 2; round++ {
		if got := lagCount()["queue=q,shard=q#1"]; got != 3 {
			t.Fatalf("collection %d: takeover lags of the unmeasured shard: count %v, want 3", round, got)
		}
	}
	if got := pointsOf(collectPoints(t, r), MetricQueueMessages)["queue=q,shard=q#1,state=ready"]; got != 0 {
		t.Fatalf("an unmeasured shard must have no gauges; ready = %v", got)
	}
	src.put(snapshot("q", "q#1", 0)) // first measurement
	inst.RecordUnlockLag(ctx, "q", "q#1", time.Millisecond)
	if got := lagCount()["queue=q,shard=q#1"]; got != 4 {
		t.Fatalf("after the first measurement: count %v, want 4 (the series continues)", got)
	}
	src.disown("q#1")
	if got, ok := lagCount()["queue=q,shard=q#1"]; ok {
		t.Fatalf("lags of a shard that left still reported: count %v", got)
	}
}

// A shard with two lock pools (Deckard's) reports locked messages and
// unlocks by pool, lock=ack and lock=nack, and no series without the
// attribute; a native shard beside it keeps its single series.
func TestSplitLocks(t *testing.T) {
	r, m := providerMeterForTest()
	dk := snapshot("dk", "dk#0", 0)
	dk.SplitLocks, dk.LockedAck, dk.LockedNack = true, 1, 2
	dk.UnlockedAck, dk.UnlockedNack = 5, 7
	src := newShards(dk, snapshot("n", "n#0", 0))
	if _, err := RegisterInstruments(m, src, nil, nil); err != nil {
		t.Fatal(err)
	}
	ps := collectPoints(t, r)
	msgs := pointsOf(ps, MetricQueueMessages)
	for attrs, want := range map[string]float64{
		"lock=ack,queue=dk,shard=dk#0,state=locked": 1, "lock=nack,queue=dk,shard=dk#0,state=locked": 2,
		"queue=dk,shard=dk#0,state=ready": 1, "queue=n,shard=n#0,state=locked": 3,
	} {
		if got, ok := msgs[attrs]; !ok || got != want {
			t.Errorf("messages{%s} = %v (present %v), want %v", attrs, got, ok, want)
		}
	}
	if _, ok := msgs["queue=dk,shard=dk#0,state=locked"]; ok {
		t.Error("a split shard also reports locked without lock")
	}
	unlocked := pointsOf(ps, MetricQueueUnlocked)
	want := map[string]float64{"lock=ack,queue=dk,shard=dk#0": 5, "lock=nack,queue=dk,shard=dk#0": 7, "queue=n,shard=n#0": 12}
	if fmt.Sprint(unlocked) != fmt.Sprint(want) {
		t.Fatalf("unlocked:\n got %v\nwant %v", unlocked, want)
	}
}

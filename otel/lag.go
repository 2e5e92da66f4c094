package otel

import (
	"context"
	"sort"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// ownedHistograms is a cumulative histogram per (queue, shard) that is only
// reported for shards ShardSource lists at collection time, and forgotten
// when a shard leaves. The SDK's own histograms keep every attribute set
// they ever saw for as long as the process lives, so after a shard moves the
// old owner would keep exporting its frozen series next to the new owner's,
// breaking "one writer per series" (invariant 5). It is exported through the
// readers as an sdkmetric.Producer. If the shard comes back, its histogram
// restarts with a new start time, which Prometheus reads as a counter reset.
// Without a ShardSource every shard that has data is reported. Ownership is
// read from OwnedSource when the ShardSource implements it, so that samples
// of a shard owned but not measured yet are kept.
type ownedHistograms struct {
	scope  instrumentation.Scope
	name   string
	desc   string
	unit   string
	bounds []float64
	// shards is set by Observe, before the histograms join the producers.
	shards ShardSource

	mu      sync.Mutex
	byShard map[shardKey]*histState
}

type shardKey struct{ queue, shard string }

type histState struct {
	attrs    attribute.Set
	start    time.Time
	counts   []uint64
	count    uint64
	sum      float64
	min, max float64
}

var _ sdkmetric.Producer = (*ownedHistograms)(nil)

func newOwnedHistograms(scope instrumentation.Scope, name, desc, unit string, bounds []float64) *ownedHistograms {
	return &ownedHistograms{
		scope: scope, name: name, desc: desc, unit: unit,
		bounds:  append([]float64(nil), bounds...),
		byShard: map[shardKey]*histState{},
	}
}

func (h *ownedHistograms) record(queue, shard string, v float64) {
	k := shardKey{queue, shard}
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.byShard[k]
	if st == nil {
		st = &histState{
			attrs:  attribute.NewSet(attribute.String(AttrQueue, queue), attribute.String(AttrShard, shard)),
			start:  time.Now(),
			counts: make([]uint64, len(h.bounds)+1),
			min:    v, max: v,
		}
		h.byShard[k] = st
	}
	// Buckets are upper-inclusive, (bounds[i-1], bounds[i]], as in the SDK.
	st.counts[sort.SearchFloat64s(h.bounds, v)]++
	st.count++
	st.sum += v
	st.min = min(st.min, v)
	st.max = max(st.max, v)
}

// Produce implements sdkmetric.Producer.
func (h *ownedHistograms) Produce(context.Context) ([]metricdata.ScopeMetrics, error) {
	var owned map[shardKey]bool
	if o, ok := h.shards.(OwnedSource); ok {
		owned = map[shardKey]bool{}
		o.EachOwned(func(queue, shard string) { owned[shardKey{queue, shard}] = true })
	} else if h.shards != nil {
		owned = map[shardKey]bool{}
		h.shards.EachShard(func(s ShardSnapshot) { owned[shardKey{s.Queue, s.Shard}] = true })
	}
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	dps := make([]metricdata.HistogramDataPoint[float64], 0, len(h.byShard))
	for k, st := range h.byShard {
		if owned != nil && !owned[k] {
			delete(h.byShard, k)
			continue
		}
		dps = append(dps, metricdata.HistogramDataPoint[float64]{
			Attributes:   st.attrs,
			StartTime:    st.start,
			Time:         now,
			Count:        st.count,
			Bounds:       append([]float64(nil), h.bounds...),
			BucketCounts: append([]uint64(nil), st.counts...),
			Min:          metricdata.NewExtrema(st.min),
			Max:          metricdata.NewExtrema(st.max),
			Sum:          st.sum,
		})
	}
	if len(dps) == 0 {
		return nil, nil
	}
	return []metricdata.ScopeMetrics{{
		Scope: h.scope,
		Metrics: []metricdata.Metrics{{
			Name:        h.name,
			Description: h.desc,
			Unit:        h.unit,
			Data: metricdata.Histogram[float64]{
				Temporality: metricdata.CumulativeTemporality,
				DataPoints:  dps,
			},
		}},
	}}, nil
}

package chaos

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/keeperhq/keeper/internal/otelcol"
	"github.com/keeperhq/keeper/queue"
)

// writerLabels name the keeper that wrote a series: the collector's
// Prometheus exporter derives instance from service.instance.id, and with
// resource_to_telemetry_conversion the attribute itself becomes a label.
var writerLabels = [...]string{"instance", "service_instance_id"}

// IsFleetSeries reports whether s is a series of the fleet rather than of
// one keeper: per shard (it has a shard label; fence refusals, which count
// one keeper's refused writes, are that keeper's own) or global
// (keeper_cluster_*). A fleet series is identified by its metric and
// attributes, whoever writes it (invariant 5).
func IsFleetSeries(s otelcol.Series) bool {
	if !strings.HasPrefix(s.Name, "keeper_") {
		return false
	}
	return (s.Labels["shard"] != "" && s.Name != "keeper_fence_refusals_total") ||
		strings.HasPrefix(s.Name, "keeper_cluster_")
}

// SeriesKey is a series' identity without the labels that name its writer:
// two series with one key are one series written twice.
func SeriesKey(s otelcol.Series) string {
	parts := make([]string, 0, len(s.Labels))
	for k, v := range s.Labels {
		if isWriterLabel(k) {
			continue
		}
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return s.Name + "{" + strings.Join(parts, ",") + "}"
}

func isWriterLabel(k string) bool {
	for _, w := range writerLabels {
		if k == w {
			return true
		}
	}
	return false
}

// fullKey is a series' identity with every label.
func fullKey(s otelcol.Series) string {
	parts := make([]string, 0, len(s.Labels))
	for k, v := range s.Labels {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return s.Name + "{" + strings.Join(parts, ",") + "}"
}

// isCumulative reports whether a series only rises while its source lives:
// counters, and the buckets, count and sum of histograms (unlock lags and
// pass durations are never negative).
func isCumulative(name string) bool {
	for _, suf := range []string{"_total", "_bucket", "_count", "_sum"} {
		if strings.HasSuffix(name, suf) {
			return true
		}
	}
	return false
}

// SeriesWatch checks scrape after scrape of the collector's Prometheus
// endpoint: within a scrape, no fleet series is written twice and none
// names its writer; across scrapes, no counter goes backwards.
type SeriesWatch struct {
	last map[string]float64 // cumulative series -> last value seen
	// Scrapes counts the scrapes checked; FleetKeys the fleet series of
	// the latest.
	Scrapes, FleetKeys int
}

// NewSeriesWatch returns a watch that has seen nothing yet.
func NewSeriesWatch() *SeriesWatch { return &SeriesWatch{last: map[string]float64{}} }

// Check returns the problems of one scrape.
func (w *SeriesWatch) Check(series []otelcol.Series) []string {
	w.Scrapes++
	var problems []string
	writers := map[string][]string{}
	for _, s := range series {
		if !strings.HasPrefix(s.Name, "keeper_") {
			continue
		}
		fleet := IsFleetSeries(s)
		if fleet {
			key := SeriesKey(s)
			writers[key] = append(writers[key], s.Labels["service_instance_id"]+"/"+s.Labels["instance"])
			for _, l := range writerLabels {
				if v, ok := s.Labels[l]; ok {
					problems = append(problems, fmt.Sprintf("%s names its writer: %s=%q", key, l, v))
				}
			}
		}
		if !isCumulative(s.Name) {
			continue
		}
		// A fleet counter is one series whoever writes it; a keeper's own
		// is that keeper's.
		key := fullKey(s)
		if fleet {
			key = SeriesKey(s)
		}
		if prev, ok := w.last[key]; ok && s.Value < prev {
			problems = append(problems, fmt.Sprintf("%s went backwards: %v -> %v", key, prev, s.Value))
		}
		w.last[key] = max(w.last[key], s.Value)
	}
	w.FleetKeys = len(writers)
	for key, ws := range writers {
		if len(ws) != 1 {
			sort.Strings(ws)
			problems = append(problems, fmt.Sprintf("%s has %d series (writers %v)", key, len(ws), ws))
		}
	}
	sort.Strings(problems)
	return problems
}

// ReadyByQueue is `sum by (queue) (keeper_queue_messages{state="ready"})`
// over a scrape, and the shards that have a ready series.
func ReadyByQueue(series []otelcol.Series) (sums map[string]float64, shards map[string]bool) {
	sums, shards = map[string]float64{}, map[string]bool{}
	for _, s := range series {
		if s.Name == "keeper_queue_messages" && s.Labels["state"] == "ready" {
			sums[s.Labels["queue"]] += s.Value
			shards[s.Labels["shard"]] = true
		}
	}
	return sums, shards
}

// MetricProblems scrapes the collector once, settled: every violation of
// "one series per fleet key, naming no writer", every shard without its
// gauges, and every per-queue total (summed from the shards, and the
// aggregator's) that does not match Redis.
func MetricProblems(ctx context.Context, c *Cluster, col *otelcol.Collector, queues []string, shards []queue.Shard) []string {
	series, err := col.Scrape(ctx)
	if err != nil {
		return []string{err.Error()}
	}
	problems := NewSeriesWatch().Check(series)
	perShard := map[string]float64{} // queue|state -> sum of per-shard gauges
	global := map[string]float64{}
	seenShard := map[string]bool{}
	for _, s := range series {
		switch s.Name {
		case "keeper_queue_messages":
			perShard[s.Labels["queue"]+"|"+s.Labels["state"]] += s.Value
			seenShard[s.Labels["shard"]] = true
		case "keeper_cluster_queue_messages":
			global[s.Labels["queue"]+"|"+s.Labels["state"]] += s.Value
		}
	}
	for _, s := range shards {
		if !seenShard[s.String()] {
			problems = append(problems, fmt.Sprintf("no keeper_queue_messages for %s", s))
		}
	}
	client := queue.NewClient(c.RDB, queue.ClientOptions{})
	for _, q := range queues {
		st, err := client.Stats(ctx, q)
		if err != nil {
			return append(problems, err.Error())
		}
		for state, want := range map[string]int64{"ready": st.Ready, "inflight": st.Inflight, "locked": st.Locked, "dead": st.Dead} {
			k := q + "|" + state
			if perShard[k] != float64(want) {
				problems = append(problems, fmt.Sprintf("sum of shard gauges %s = %v, redis has %d", k, perShard[k], want))
			}
			if global[k] != float64(want) {
				problems = append(problems, fmt.Sprintf("global total %s = %v, redis has %d", k, global[k], want))
			}
		}
	}
	sort.Strings(problems)
	return problems
}

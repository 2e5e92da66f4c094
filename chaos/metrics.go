package chaos

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/keeperhq/keeper/internal/otelcol"
	"github.com/keeperhq/keeper/queue"
)

// MetricProblems scrapes the collector once and lists every violation of
// "one writer per series" and every total that does not add up.
func MetricProblems(ctx context.Context, c *Cluster, col *otelcol.Collector, queues []string, shards []queue.Shard) []string {
	series, err := col.Scrape(ctx)
	if err != nil {
		return []string{err.Error()}
	}
	own, err := Ownerships(ctx, c.Keepers())
	if err != nil {
		return []string{err.Error()}
	}
	leader := ""
	for _, k := range c.Keepers() {
		if st, err := k.Status(ctx); err == nil && st.Leader {
			leader = st.Member
		}
	}
	var problems []string
	byKey := map[string][]string{}
	perShard := map[string]float64{} // queue|state -> sum of per-shard gauges
	global := map[string]float64{}
	seenShard := map[string]bool{}
	for _, s := range series {
		if !strings.HasPrefix(s.Name, "keeper_") || s.Name == "keeper_fence_refusals_total" {
			continue
		}
		inst := s.Labels["service_instance_id"]
		key := seriesKey(s)
		switch {
		case s.Labels["shard"] != "":
			byKey[key] = append(byKey[key], inst)
			if owners := own.Owners[s.Labels["shard"]]; len(owners) == 1 && owners[0] != inst {
				problems = append(problems, fmt.Sprintf("%s written by %s, owner is %s", key, inst, owners[0]))
			}
			if s.Name == "keeper_queue_messages" {
				perShard[s.Labels["queue"]+"|"+s.Labels["state"]] += s.Value
				seenShard[s.Labels["shard"]] = true
			}
		case strings.HasPrefix(s.Name, "keeper_cluster_"):
			byKey[key] = append(byKey[key], inst)
			if inst != leader {
				problems = append(problems, fmt.Sprintf("%s written by %s, leader is %q", key, inst, leader))
			}
			if s.Name == "keeper_cluster_queue_messages" {
				global[s.Labels["queue"]+"|"+s.Labels["state"]] = s.Value
			}
		}
	}
	for key, insts := range byKey {
		if len(insts) != 1 {
			problems = append(problems, fmt.Sprintf("%s has %d writers %v", key, len(insts), insts))
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

// seriesKey is a series' identity without who wrote it.
func seriesKey(s otelcol.Series) string {
	var parts []string
	for k, v := range s.Labels {
		switch {
		case k == "instance", k == "service_instance_id", k == "job", k == "service_name",
			strings.HasPrefix(k, "telemetry_"), strings.HasPrefix(k, "otel_scope_"):
			continue
		}
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return s.Name + "{" + strings.Join(parts, ",") + "}"
}

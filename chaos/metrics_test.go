package chaos

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/otelcol"
	"github.com/keeperhq/keeper/queue"
)

// TestMetricsOneWriterPerSeries is the metrics issue's end-to-end test:
// three keeper processes export over OTLP to a real OpenTelemetry Collector,
// and the test scrapes the collector's Prometheus endpoint. Every per-shard
// series must come from exactly one instance, the shard's owner; every
// global series from exactly one instance, the aggregator leader; totals
// must match the shards and Redis. Then the leader is killed, and a shard
// owner is killed while a keeper joins: the series must come back, each from
// exactly one (new) writer.
func TestMetricsOneWriterPerSeries(t *testing.T) {
	if testing.Short() {
		t.Skip("starts keeper and collector processes; run without -short")
	}
	ctx := context.Background()
	const (
		interval = 500 * time.Millisecond
		expiry   = 2 * time.Second
		ttl      = 3 * time.Second
	)
	col := otelcol.StartTB(t, otelcol.Config{MetricExpiration: expiry})
	c, err := Start(ctx, Config{SessionTTL: ttl, NoHistory: true,
		Env: []string{
			"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + col.OTLPEndpoint(),
			"OTEL_EXPORTER_OTLP_INSECURE=true",
			fmt.Sprintf("OTEL_METRIC_EXPORT_INTERVAL=%d", interval.Milliseconds()),
		},
		Args: []string{"--tasks.measure_interval", "300ms"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	queues, shards := createQueues(t, c, 4, 6) // 24 shards
	client := queue.NewClient(c.RDB, queue.ClientOptions{})
	for i := 0; i < 200; i++ {
		q := queues[i%len(queues)]
		m := queue.Message{ID: fmt.Sprint("m", i)}
		if i%5 == 0 {
			m.Delay = time.Hour // locked
		}
		if _, err := client.Enqueue(ctx, q, m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client.Pull(ctx, queues[0], 7, time.Hour); err != nil { // in flight
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		if _, err := c.AddKeeper(ctx, fmt.Sprintf("m%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := WaitOneOwner(ctx, c.Keepers(), shards, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	check := func(step string, limit time.Duration) {
		t.Helper()
		start := time.Now()
		var problems []string
		for time.Since(start) < limit {
			problems = metricProblems(ctx, t, c, col, queues, shards)
			if len(problems) == 0 {
				t.Logf("%s: one writer per series after %s", step, time.Since(start).Round(time.Millisecond))
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("%s: after %s: %d problems, e.g.\n%s", step, limit, len(problems), strings.Join(problems[:min(8, len(problems))], "\n"))
	}
	check("settled", 30*time.Second)

	leader := leaderOf(ctx, t, c)
	killed := time.Now()
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	c.Remove(leader)
	// A new leader within TTL + 1s, its first export within one interval;
	// the dead leader's series linger until the collector expires them.
	check("aggregator killed", 3*(ttl+time.Second+interval+expiry))
	t.Logf("global series from exactly one new instance %s after kill -9 of %s", time.Since(killed).Round(time.Millisecond), leader.ID)

	ks := c.Keepers()
	if err := ks[0].Kill(); err != nil {
		t.Fatal(err)
	}
	c.Remove(ks[0])
	if _, err := c.AddKeeper(ctx, "m4"); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitOneOwner(ctx, c.Keepers(), shards, 3*(ttl+time.Second)); err != nil {
		t.Fatal(err)
	}
	check("owner killed and keeper added", 2*interval+expiry+10*time.Second)
}

// metricProblems scrapes the collector once and lists every violation of
// "one writer per series" and every total that does not add up.
func metricProblems(ctx context.Context, t *testing.T, c *Cluster, col *otelcol.Collector, queues []string, shards []queue.Shard) []string {
	t.Helper()
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

func leaderOf(ctx context.Context, t *testing.T, c *Cluster) *Keeper {
	t.Helper()
	for _, k := range c.Keepers() {
		if st, err := k.Status(ctx); err == nil && st.Leader {
			return k
		}
	}
	t.Fatal("no leader")
	return nil
}

package chaos

import (
	"context"
	"fmt"
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
			problems = MetricProblems(ctx, c, col, queues, shards)
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

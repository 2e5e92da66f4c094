package chaos

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/otelcol"
	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/promexpr"
	"github.com/keeperhq/keeper/queue"
)

// TestShippedQueriesMatchTheScrape holds every query keeper ships — the
// Grafana dashboard, the Prometheus alerting rules, the KEDA and HPA
// examples — to a real scrape of the collector's Prometheus exporter: each
// metric a query selects must be served, with the labels the query matches
// and groups on. A keeper exporting to a real collector runs a workload
// that makes every series appear (unlocks, requeues, expiries, dead
// letters, trims, acks, a failing pass and a fence refusal), so a renamed
// metric or label fails here instead of blanking a panel or silencing an
// alert.
func TestShippedQueriesMatchTheScrape(t *testing.T) {
	if testing.Short() {
		t.Skip("starts keeper and collector processes; run without -short")
	}
	shipped, err := promexpr.Shipped("..") // the repository root; tests run in chaos/
	if err != nil {
		t.Fatal(err)
	}
	type need struct {
		source, metric string
		labels         []string
	}
	var needs []need
	for _, q := range shipped {
		sel, err := promexpr.Select(promexpr.Expand(q.Expr))
		if err != nil {
			t.Fatalf("%s: %v", q.Source, err)
		}
		for _, s := range sel.Selectors {
			needs = append(needs, need{q.Source, s.Metric, s.Labels})
		}
		// Grouping labels, and a variable's label, must be on the query's
		// metrics (on at least one of them: `on`/`by` may name a label of
		// one side only).
		for _, l := range append(sel.Grouping, q.Labels...) {
			needs = append(needs, need{q.Source, strings.Join(sel.Metrics(), "|"), []string{l}})
		}
	}

	ctx := context.Background()
	col := otelcol.StartTB(t, otelcol.Config{MetricExpiration: time.Minute})
	c, err := Start(ctx, Config{NoHistory: true,
		Env: []string{
			"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + col.OTLPEndpoint(),
			"OTEL_METRIC_EXPORT_INTERVAL=500",
		},
		Args: []string{"--tasks.measure_interval", "300ms"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	reg := queue.NewRegistry(c.RDB, "")
	for name, cfg := range map[string]queue.Config{
		"orders":  {Partitions: 2, MaxDeliveries: 5},
		"letters": {MaxDeliveries: 1},
		"capped":  {MaxSize: 2},
		"fenced":  {},
		"broken":  {},
	} {
		if err := reg.Create(ctx, name, cfg); err != nil {
			t.Fatal(err)
		}
	}
	// A wrong-typed key makes every pass over broken#0 fail (errors and
	// failed passes); a fence far above any etcd revision refuses the
	// owner's writes to fenced#0 (fence refusals). The key names are the
	// native layout's (queue/keys.go).
	if err := c.RDB.Set(ctx, "keeper:{broken#0}:locked", "not a zset", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.RDB.Set(ctx, "keeper:{fenced#0}:fence", 1<<50, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddKeeper(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	client := queue.NewClient(c.RDB, queue.ClientOptions{})
	enqueue := func(q string, m queue.Message) {
		t.Helper()
		if _, err := client.Enqueue(ctx, q, m); err != nil {
			t.Fatalf("enqueue %s: %v", q, err)
		}
	}
	for i := 0; i < 20; i++ {
		enqueue("orders", queue.Message{ID: fmt.Sprint("d", i), Delay: 100 * time.Millisecond}) // unlocked, unlock lag
		enqueue("orders", queue.Message{ID: fmt.Sprint("t", i), TTL: 200 * time.Millisecond})   // expired
		enqueue("orders", queue.Message{ID: fmt.Sprint("r", i)})                                // ready, oldest age
		enqueue("letters", queue.Message{ID: fmt.Sprint("l", i)})
		enqueue("capped", queue.Message{ID: fmt.Sprint("c", i)}) // trimmed
	}
	enqueue("fenced", queue.Message{ID: "f", Delay: 100 * time.Millisecond})
	ds, err := client.Pull(ctx, "orders", 10, 100*time.Millisecond) // requeued
	if err != nil || len(ds) == 0 {
		t.Fatalf("pull: %d %v", len(ds), err)
	}
	if err := client.Ack(ctx, ds[0]); err != nil { // acked
		t.Fatal(err)
	}
	if _, err := client.Pull(ctx, "letters", 5, 100*time.Millisecond); err != nil { // dead-lettered
		t.Fatal(err)
	}

	// Wait until the scrape serves everything the queries need.
	var missing []string
	var served map[string][]map[string]string
	waitCtx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	_, err = poll.Until(waitCtx, 250*time.Millisecond, func() (bool, string) {
		series, err := col.Scrape(ctx)
		if err != nil {
			return false, err.Error()
		}
		served = map[string][]map[string]string{}
		for _, s := range series {
			served[s.Name] = append(served[s.Name], s.Labels)
		}
		missing = missing[:0]
		seen := map[string]bool{}
		for _, n := range needs {
			if !hasLabels(served, strings.Split(n.metric, "|"), n.labels) {
				m := fmt.Sprintf("%s%v (%s)", n.metric, n.labels, filepath.Base(n.source))
				if !seen[m] {
					seen[m] = true
					missing = append(missing, m)
				}
			}
		}
		return len(missing) == 0, strings.Join(missing, "; ")
	})
	var names []string
	for n := range served {
		if strings.HasPrefix(n, "keeper_") {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	t.Logf("the collector serves %d keeper metrics: %s", len(names), strings.Join(names, " "))
	if err != nil {
		sort.Strings(missing)
		t.Fatalf("shipped queries read what the scrape does not serve (metric[labels] (file)):\n%s", strings.Join(missing, "\n"))
	}
	t.Logf("%d shipped queries, %d selectors and labels: all served", len(shipped), len(needs))
}

// hasLabels reports whether one series of one of the metrics carries every
// label.
func hasLabels(served map[string][]map[string]string, metrics, labels []string) bool {
	for _, m := range metrics {
	series:
		for _, ls := range served[m] {
			for _, l := range labels {
				if _, ok := ls[l]; !ok {
					continue series
				}
			}
			return true
		}
	}
	return false
}

package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/otelcol"
	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/queue"
)

// TestMetricsOneSeriesAcrossMoves is issue 12's end-to-end test: keeper
// processes export over OTLP to a real OpenTelemetry Collector whose
// pipeline has two Prometheus exporters, keeper's own config
// (configs/otelcol) and one with every setting at its default, and the test
// scrapes both every second while the fleet goes through aggregator loss
// (kill -9 of the leader), scale-out, an owner's kill -9, a graceful handoff
// (SIGTERM of the leader) and scale-out again, with traffic on one queue
// throughout. At every scrape of each exporter:
//
//   - no per-shard or global key (metric and attributes, without the labels
//     that name a writer) has two series, and none names its writer;
//   - no counter (histogram buckets, counts and sums included) went
//     backwards since the previous scrape;
//   - for each still queue, `sum by (queue)` of the ready gauge, and the
//     aggregator's total, equal Redis's ready count as it was at some
//     moment within the last (measure interval + export interval + the
//     batch processor's 200ms), i.e. within one export interval of the
//     owner's measurement, and no shard is missing.
//
// The busy queue's ready count changes all the time, so its sum is compared
// with Redis once its traffic stops; its counters and unlock-lag histogram
// are what moves during the faults.
func TestMetricsOneSeriesAcrossMoves(t *testing.T) {
	if testing.Short() {
		t.Skip("starts keeper and collector processes; run without -short")
	}
	ctx := context.Background()
	const (
		interval = 500 * time.Millisecond
		measure  = 300 * time.Millisecond
		ttl      = 3 * time.Second
		batch    = 200 * time.Millisecond // the batch processor's timeout
		// window is how old the Redis state a scrape shows may be.
		window = measure + interval + batch + 300*time.Millisecond
	)
	// The collector as shipped: metric_expiration 30s.
	col := otelcol.StartTB(t, otelcol.Config{DefaultExporter: true})
	c, err := Start(ctx, Config{SessionTTL: ttl, NoHistory: true,
		Env: []string{
			"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + col.OTLPEndpoint(),
			"OTEL_EXPORTER_OTLP_INSECURE=true",
			fmt.Sprintf("OTEL_METRIC_EXPORT_INTERVAL=%d", interval.Milliseconds()),
		},
		Args: []string{"--tasks.measure_interval", measure.String()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	still, shards := createQueues(t, c, 3, 8) // 24 shards whose counts change only when the test says
	if err := queue.NewRegistry(c.RDB, "").Create(ctx, "busy", queue.Config{Partitions: 4, MaxDeliveries: 3}); err != nil {
		t.Fatal(err)
	}
	for p := 0; p < 4; p++ {
		shards = append(shards, queue.Shard{Queue: "busy", Partition: p})
	}
	all := append(append([]string(nil), still...), "busy")
	client := queue.NewClient(c.RDB, queue.ClientOptions{})
	for i := 0; i < 300; i++ {
		m := queue.Message{ID: fmt.Sprint("m", i)}
		if i%10 == 0 {
			m.Delay = time.Hour // locked
		}
		if _, err := client.Enqueue(ctx, still[i%len(still)], m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client.Pull(ctx, still[0], 7, time.Hour); err != nil { // in flight
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

	// The still queues' ready counts, as Redis had them from each moment.
	type totals struct {
		at    time.Time
		ready map[string]int64
	}
	var (
		mu      sync.Mutex
		history []totals
		phase   = "settle"
		found   = map[string]map[string]int{}    // phase -> problem kind -> scrapes with it
		worst   = map[string]map[string]int{}    // phase -> problem kind -> most in one scrape
		samples = map[string]map[string]string{} // phase -> problem kind -> first seen
		scrapes = map[string]int{}
		phases  []string
	)
	readStill := func() map[string]int64 {
		out := map[string]int64{}
		for _, q := range still {
			st, err := client.Stats(ctx, q)
			if err != nil {
				t.Errorf("stats %s: %v", q, err)
				continue
			}
			out[q] = st.Ready
		}
		return out
	}
	history = append(history, totals{time.Now(), readStill()})
	// allowed lists the ready counts of q that Redis had at some moment in
	// [at-window, at].
	allowed := func(q string, at time.Time) []int64 {
		mu.Lock()
		defer mu.Unlock()
		var out []int64
		for i, h := range history {
			if i+1 < len(history) && history[i+1].at.Before(at.Add(-window)) {
				continue
			}
			out = append(out, h.ready[q])
		}
		return out
	}
	stillSet := map[string]bool{}
	for _, q := range still {
		stillSet[q] = true
	}

	// check is one scrape of one exporter.
	watches := map[string]*SeriesWatch{"configs/otelcol": NewSeriesWatch(), "defaults": NewSeriesWatch()}
	check := func(exporter string, series []otelcol.Series, at time.Time) []string {
		problems := watches[exporter].Check(series)
		sums, seen := ReadyByQueue(series)
		for _, s := range shards {
			if !seen[s.String()] {
				problems = append(problems, fmt.Sprintf("missing shard: no ready series for %s", s))
			}
		}
		global := map[string]float64{}
		for _, s := range series {
			if s.Name == "keeper_cluster_queue_messages" && s.Labels["state"] == "ready" {
				global[s.Labels["queue"]] += s.Value
			}
		}
		for _, q := range still {
			ok := allowed(q, at)
			if !contains(ok, sums[q]) {
				problems = append(problems, fmt.Sprintf("ready sum: sum by (queue) of %s is %v, redis had %v", q, sums[q], ok))
			}
			// The aggregator's totals lag one more export: keepers
			// publish their summaries once per interval.
			okGlobal := allowed(q, at.Add(-interval))
			if !contains(okGlobal, global[q]) && !contains(ok, global[q]) {
				problems = append(problems, fmt.Sprintf("global total: %s is %v, redis had %v", q, global[q], okGlobal))
			}
		}
		return problems
	}
	kinds := []string{"series (writers", "names its writer", "went backwards", "ready sum", "global total", "missing shard", "scrape"}
	kindOf := func(p string) string {
		for _, k := range kinds {
			if strings.Contains(p, k) {
				return k
			}
		}
		return "other"
	}
	var scrapeMu sync.Mutex // the ticker and a burst after a resume both scrape
	scrapeOnce := func() (clean bool) {
		scrapeMu.Lock()
		defer scrapeMu.Unlock()
		at := time.Now()
		clean = true
		for exporter, scrape := range map[string]func(context.Context) ([]otelcol.Series, error){
			"configs/otelcol": col.Scrape, "defaults": col.ScrapeDefault} {
			series, err := scrape(ctx)
			var problems []string
			if err != nil {
				problems = []string{"scrape: " + err.Error()}
			} else {
				problems = check(exporter, series, at)
			}
			mu.Lock()
			scrapes[phase]++
			if found[phase] == nil {
				found[phase], worst[phase], samples[phase] = map[string]int{}, map[string]int{}, map[string]string{}
			}
			n := map[string]int{}
			for _, p := range problems {
				k := kindOf(p)
				n[k]++
				if samples[phase][k] == "" {
					samples[phase][k] = exporter + ": " + p
				}
			}
			for k, v := range n {
				found[phase][k]++
				worst[phase][k] = max(worst[phase][k], v)
			}
			mu.Unlock()
			clean = clean && len(problems) == 0
		}
		return clean
	}

	// Settle: every shard measured and exported, the aggregator elected
	// (what the series are like is counted from the next phase on).
	poll.For(t, 60*time.Second, "every shard and total in the scrape", func() (bool, string) {
		series, err := col.Scrape(ctx)
		if err != nil {
			return false, err.Error()
		}
		var p []string
		for _, x := range check("configs/otelcol", series, time.Now()) {
			if k := kindOf(x); k == "ready sum" || k == "global total" || k == "missing shard" {
				p = append(p, x)
			}
		}
		return len(p) == 0, strings.Join(p[:min(5, len(p))], "; ")
	})
	watches["configs/otelcol"] = NewSeriesWatch()

	// Traffic on busy: delayed messages (unlocked, with their lags), pulls
	// acked, nacked with a lock, or left to expire (requeued, and
	// dead-lettered after three deliveries).
	trafficCtx, stopTraffic := context.WithCancel(ctx)
	var traffic sync.WaitGroup
	traffic.Add(2)
	go func() {
		defer traffic.Done()
		for i := 0; trafficCtx.Err() == nil; i++ {
			_, _ = client.Enqueue(trafficCtx, "busy", queue.Message{ID: fmt.Sprint("b", i),
				Delay: time.Duration(rand.IntN(150)) * time.Millisecond})
			sleepCtx(trafficCtx, 25*time.Millisecond)
		}
	}()
	go func() {
		defer traffic.Done()
		for trafficCtx.Err() == nil {
			ds, _ := client.Pull(trafficCtx, "busy", 5, 300*time.Millisecond)
			for _, d := range ds {
				switch r := rand.IntN(10); {
				case r < 7:
					_ = client.Ack(trafficCtx, d)
				case r < 9:
					_, _ = client.Nack(trafficCtx, d, queue.NackOptions{LockFor: 100 * time.Millisecond})
				}
			}
			sleepCtx(trafficCtx, 50*time.Millisecond)
		}
	}()

	// The scraper: every second, until the end.
	scrapeCtx, stopScraping := context.WithCancel(ctx)
	scraperDone := make(chan struct{})
	go func() {
		defer close(scraperDone)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			scrapeOnce()
			select {
			case <-scrapeCtx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	// The report runs even when a step fails the test: the counts per
	// phase are the point.
	t.Cleanup(func() {
		stopScraping()
		<-scraperDone
		stopTraffic()
		traffic.Wait()
		mu.Lock()
		defer mu.Unlock()
		failed := false
		for _, p := range phases {
			t.Logf("%-22s %3d scrapes (both exporters)", p, scrapes[p])
			for k, n := range found[p] {
				failed = failed || n > 0
				t.Logf("    %-16s in %3d scrapes, up to %4d in one; e.g. %s", k, n, worst[p][k], samples[p][k])
			}
		}
		for name, w := range watches {
			t.Logf("%s: %d scrapes checked, %d fleet series in the last", name, w.Scrapes, w.FleetKeys)
		}
		if failed {
			t.Error("metric series problems (above)")
		}
	})
	setPhase := func(p string) {
		mu.Lock()
		phase = p
		phases = append(phases, p)
		mu.Unlock()
		t.Logf("phase %s", p)
	}
	// settle ends a phase: one owner per shard, then a change of one still
	// shard that both exporters must show, then a few more scrapes.
	steps := 0
	settle := func(what string) {
		t.Helper()
		took, err := WaitOneOwner(ctx, c.Keepers(), shards, 3*(ttl+time.Second))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		steps++
		q := still[steps%len(still)]
		if _, err := client.Enqueue(ctx, q, queue.Message{ID: fmt.Sprint("step", steps)}); err != nil {
			t.Fatal(err)
		}
		stepped := time.Now()
		mu.Lock()
		history = append(history, totals{stepped, readStill()})
		want := history[len(history)-1].ready[q]
		mu.Unlock()
		// Not fatal: the remaining phases still count their problems.
		shown, err := poll.Within(30*time.Second, 100*time.Millisecond, func() (bool, string) {
			var got []float64
			for _, scrape := range []func(context.Context) ([]otelcol.Series, error){col.Scrape, col.ScrapeDefault} {
				series, err := scrape(ctx)
				if err != nil {
					return false, err.Error()
				}
				sums, _ := ReadyByQueue(series)
				got = append(got, sums[q])
			}
			return got[0] == float64(want) && got[1] == float64(want), fmt.Sprintf("%s ready %v, want %d", q, got, want)
		})
		if err != nil {
			t.Errorf("%s: the step never showed in both exporters: %v", what, err)
		}
		t.Logf("%s: one owner per shard after %s; a step of %s shown by both exporters after %s",
			what, took.Round(time.Millisecond), q, shown.Round(time.Millisecond))
		mu.Lock()
		n := scrapes[phase]
		mu.Unlock()
		poll.For(t, 30*time.Second, "more scrapes", func() (bool, string) {
			mu.Lock()
			defer mu.Unlock()
			return scrapes[phase] >= n+20, fmt.Sprint(scrapes[phase])
		})
	}

	setPhase("steady")
	settle("steady")

	setPhase("aggregator kill -9")
	leader := leaderOf(ctx, t, c)
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	c.Remove(leader)
	poll.For(t, 3*(ttl+time.Second), "a new aggregator", func() (bool, string) {
		for _, k := range c.Keepers() {
			if st, err := k.Status(ctx); err == nil && st.Leader {
				return true, ""
			}
		}
		return false, "no leader"
	})
	settle("aggregator " + leader.ID + " killed")

	setPhase("scale-out to 4")
	for _, id := range []string{"m4", "m5"} {
		if _, err := c.AddKeeper(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	settle("m4 and m5 added")

	setPhase("owner kill -9")
	var owner *Keeper
	for _, k := range c.Keepers() {
		if st, err := k.Status(ctx); err == nil && !st.Leader && len(st.Owned) > 0 {
			owner = k
			break
		}
	}
	if owner == nil {
		t.Fatal("no keeper that owns shards without leading")
	}
	if err := owner.Kill(); err != nil {
		t.Fatal(err)
	}
	c.Remove(owner)
	settle("owner " + owner.ID + " killed")

	setPhase("graceful handoff")
	leader = leaderOf(ctx, t, c)
	if err := leader.Term(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	c.Remove(leader)
	settle("leader " + leader.ID + " stopped with SIGTERM")

	// A keeper frozen past its TTL loses its shards; when it resumes, its
	// exporter may run before it has noticed: its points, older values
	// under a newer timestamp, must not reach the collector. Scraped every
	// 100ms for a few seconds after the resume.
	setPhase("owner paused past its TTL")
	// One that owns a busy shard, whose counters move while it is frozen.
	var frozen *Keeper
	for _, k := range c.Keepers() {
		st, err := k.Status(ctx)
		if err != nil || st.Leader {
			continue
		}
		for sh := range st.Owned {
			if strings.HasPrefix(sh, "busy#") {
				frozen = k
			}
		}
		if frozen == nil && len(st.Owned) > 0 {
			frozen = k
		}
	}
	if frozen == nil {
		t.Fatal("no keeper that owns shards without leading")
	}
	if err := frozen.Pause(); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitOneOwner(ctx, c.Keepers(), shards, 3*(ttl+time.Second)); err != nil {
		t.Fatalf("while %s is paused: %v", frozen.ID, err)
	}
	// Its successors measure and export what changed meanwhile.
	sleepCtx(ctx, measure+2*interval)
	if err := frozen.Resume(); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		scrapeOnce()
		sleepCtx(ctx, 100*time.Millisecond)
	}
	settle(frozen.ID + " paused and resumed")

	setPhase("scale-out to 4 again")
	if _, err := c.AddKeeper(ctx, "m6"); err != nil {
		t.Fatal(err)
	}
	settle("m6 added")

	setPhase("traffic stopped")
	stopTraffic()
	traffic.Wait()
	poll.For(t, 60*time.Second, "every queue's totals in the scrape, busy included", func() (bool, string) {
		p := MetricProblems(ctx, c, col, all, shards)
		return len(p) == 0, strings.Join(p[:min(5, len(p))], "; ")
	})
	stopScraping()
	<-scraperDone
}

func contains(vs []int64, f float64) bool {
	for _, v := range vs {
		if float64(v) == f {
			return true
		}
	}
	return false
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
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

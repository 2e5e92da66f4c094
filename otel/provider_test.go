package otel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric/noop"

	"github.com/keeperhq/keeper/internal/otelcol"
	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/service"
	"github.com/keeperhq/keeper/internal/service/servicetest"
	"github.com/keeperhq/keeper/internal/testpki"
)

// clearOTelEnv keeps a developer's or CI's OTEL_* settings out of tests that
// pin their own (an empty value counts as unset for the SDK and for Start).
func clearOTelEnv(t *testing.T) {
	t.Helper()
	for _, k := range []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
		"OTEL_EXPORTER_OTLP_INSECURE", "OTEL_EXPORTER_OTLP_METRICS_INSECURE",
		"OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
		"OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
		"OTEL_EXPORTER_OTLP_COMPRESSION", "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
		"OTEL_METRIC_EXPORT_INTERVAL", "OTEL_METRIC_EXPORT_TIMEOUT",
		"OTEL_RESOURCE_ATTRIBUTES", "OTEL_SERVICE_NAME",
		"OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
		"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
		"OTEL_EXPORTER_OTLP_CLIENT_KEY", "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
		"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
		"OTEL_SDK_DISABLED", "OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_PROMETHEUS_HOST", "OTEL_EXPORTER_PROMETHEUS_PORT",
	} {
		t.Setenv(k, "")
	}
}

// logBuffer is a concurrency-safe slog sink for asserting on log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// observe wires a keeper's metrics the way cmd/keeper does: its own
// instruments on the provider's meter, the fleet series from src and g.
func observe(t *testing.T, p *Provider, src *shards, g *global) *Instruments {
	t.Helper()
	inst, err := NewInstruments(p.Meter(ScopeName))
	if err != nil {
		t.Fatal(err)
	}
	if g == nil {
		g = &global{}
	}
	if err := inst.Observe(self{src, g}); err != nil {
		t.Fatal(err)
	}
	p.PublishFleet(src, g)
	return inst
}

// startProvider is NewProvider and Start.
func startProvider(ctx context.Context, cfg Config) (*Provider, error) {
	p := NewProvider(cfg)
	return p, p.Start(ctx)
}

func shutdownAtCleanup(t *testing.T, p *Provider) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Stop(ctx)
	})
}

func TestDisabledIsNoop(t *testing.T) {
	p, err := startProvider(context.Background(), Config{Disabled: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.MeterProvider().(noop.MeterProvider); !ok {
		t.Errorf("disabled provider is %T", p.MeterProvider())
	}
	inst := observe(t, p, newShards(snapshot("q", "q#0", 0)), nil)
	inst.RecordUnlockLag(context.Background(), "q", "q#0", time.Millisecond)
	if err := p.ForceFlush(context.Background()); err != nil {
		t.Error(err)
	}
	if err := p.Stop(context.Background()); err != nil {
		t.Error(err)
	}
}

// An unreachable collector must cost a log line, not a crash or an error
// from the periodic export; ForceFlush still tells the caller.
func TestUnreachableCollectorIsLoggedOnce(t *testing.T) {
	clearOTelEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "300")
	var out logBuffer
	p, err := startProvider(context.Background(), Config{
		MemberID:       "m1",
		Endpoint:       "http://" + closedPort(t),
		ExportInterval: time.Hour, // only the flushes below export
		Logger:         slog.New(slog.NewTextHandler(&out, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	shutdownAtCleanup(t, p)
	observe(t, p, newShards(snapshot("q", "q#0", 0)), nil)
	for i := 0; i < 3; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := p.ForceFlush(ctx)
		cancel()
		if err == nil {
			t.Fatal("ForceFlush to a closed port succeeded")
		}
	}
	if n := strings.Count(out.String(), "metrics export failed"); n != 1 {
		t.Fatalf("%d failure lines, want 1:\n%s", n, out.String())
	}
}

// Without any endpoint the exporter still exists (default localhost:4317)
// and Start says so; exports are not awaited.
func TestNoEndpointConfiguredStillStarts(t *testing.T) {
	clearOTelEnv(t)
	var out logBuffer
	p, err := startProvider(context.Background(), Config{MemberID: "m1", ExportInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(&out, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = p.Stop(ctx) // may fail to deliver the final export; must return
	if !strings.Contains(out.String(), "no endpoint configured") || p.ExportInterval() != time.Hour || p.MemberID() != "m1" {
		t.Errorf("start log:\n%s", out.String())
	}
}

func TestPrometheusPullEndpoint(t *testing.T) {
	clearOTelEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "300")
	p, err := startProvider(context.Background(), Config{
		MemberID:       "m1",
		Endpoint:       "http://" + closedPort(t),
		ExportInterval: time.Hour,
		PrometheusAddr: "127.0.0.1:0",
		Logger:         slog.New(slog.NewTextHandler(&logBuffer{}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	shutdownAtCleanup(t, p)
	src := newShards(withLag(snapshot("q", "q#0", 0), map[int]int64{3: 1}, 3000))
	inst := observe(t, p, src, nil)
	inst.RecordUnlockLag(context.Background(), "q", "q#0", 2*time.Millisecond)

	url := "http://" + p.PrometheusAddr() + "/metrics"
	ss := scrapeProvider(t, p)
	if m := otelcol.Select(ss, "keeper_queue_messages", map[string]string{"shard": "q#0", "state": "ready"}); len(m) != 1 || m[0].Value != 1 {
		t.Errorf("keeper_queue_messages: %v", m)
	}
	if m := otelcol.Select(ss, "keeper_unlock_lag_seconds_count", map[string]string{"shard": "q#0"}); len(m) != 1 || m[0].Value != 1 {
		t.Errorf("keeper_unlock_lag_seconds_count: %v", m)
	}
	if m := otelcol.Select(ss, "keeper_member_unlock_lag_seconds_count", nil); len(m) != 1 || m[0].Value != 1 {
		t.Errorf("keeper_member_unlock_lag_seconds_count: %v", m)
	}
	if m := otelcol.Select(ss, "target_info", map[string]string{"service_instance_id": "m1", "service_name": "keeper"}); len(m) != 1 {
		t.Errorf("target_info: %v", otelcol.Select(ss, "target_info", nil))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.Stop(ctx)
	if _, err := http.Get(url); err == nil {
		t.Errorf("%s still serves after Shutdown", url)
	}
}

// TestEndToEndThroughCollector runs two keepers' providers against a real
// collector (as shipped: metric_expiration 30s) and reads what Prometheus
// would scrape: names, labels and values. Then a shard and the aggregator
// role move from A to B: at every scrape from then on, each fleet series
// is one series, without an instance label, and B's values replace A's in
// it within an export; the keepers' own series keep their instance.
func TestEndToEndThroughCollector(t *testing.T) {
	clearOTelEnv(t)
	const interval = 200 * time.Millisecond
	col := otelcol.StartTB(t, otelcol.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	type keeper struct {
		p    *Provider
		inst *Instruments
		src  *shards
		glob *global
	}
	start := func(member string, src *shards) keeper {
		p, err := startProvider(ctx, Config{
			MemberID:       member,
			Endpoint:       "http://" + col.OTLPEndpoint(),
			ExportInterval: interval,
			Logger:         slog.New(slog.NewTextHandler(&logBuffer{}, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		shutdownAtCleanup(t, p)
		g := &global{}
		return keeper{p, observe(t, p, src, g), src, g}
	}
	a := start("keeper-a", newShards(snapshot("orders", "orders#0", 0),
		withLag(snapshot("orders", "orders#1", 100), map[int]int64{3: 1}, 3000)))
	b := start("keeper-b", newShards(snapshot("emails", "emails#0", 200)))
	a.glob.set(true, GlobalSnapshot{Members: 2, Shards: 3, Rebalances: 4,
		Queues: []QueueTotals{{Queue: "orders", Shards: 2, Ready: 102, Complete: true}, {Queue: "emails", Shards: 1, Ready: 201, Complete: true}}})
	a.inst.RecordPass(ctx, "unlock", 2*time.Millisecond, nil)
	b.inst.RecordFenceRefusal(ctx, "orders", "orders#9")

	// one returns the single series of name matching labels, or why not.
	one := func(ss []otelcol.Series, name string, labels map[string]string) (otelcol.Series, error) {
		m := otelcol.Select(ss, name, labels)
		if len(m) != 1 {
			return otelcol.Series{}, fmt.Errorf("%s%v: %d series %v", name, labels, len(m), m)
		}
		return m[0], nil
	}
	// expect wants one series of name and labels with value; instance ""
	// means a fleet series, which must name no keeper.
	expect := func(ss []otelcol.Series, name string, labels map[string]string, instance string, value float64) error {
		s, err := one(ss, name, labels)
		if err != nil {
			return err
		}
		if s.Labels["instance"] != instance || s.Labels["service_instance_id"] != instance || s.Value != value {
			return fmt.Errorf("%v: want instance=%q value=%v", s, instance, value)
		}
		return nil
	}
	wait := func(what string, check func([]otelcol.Series) error) []otelcol.Series {
		t.Helper()
		var last error
		for {
			ss, err := col.Scrape(ctx)
			if err == nil {
				if err = check(ss); err == nil {
					return ss
				}
			}
			last = err
			select {
			case <-ctx.Done():
				t.Fatalf("%s: %v (last: %v)", what, ctx.Err(), last)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}

	shard := func(s string) map[string]string {
		return map[string]string{"queue": strings.Split(s, "#")[0], "shard": s}
	}
	with := func(m map[string]string, k, v string) map[string]string {
		out := map[string]string{k: v}
		for x, y := range m {
			out[x] = y
		}
		return out
	}
	o1 := shard("orders#1")
	ss := wait("series from both keepers", func(ss []otelcol.Series) error {
		return errors.Join(
			expect(ss, "keeper_queue_messages", with(o1, "state", "ready"), "", 101),
			expect(ss, "keeper_queue_messages", with(o1, "state", "dead"), "", 104),
			expect(ss, "keeper_queue_messages", with(shard("emails#0"), "state", "ready"), "", 201),
			expect(ss, "keeper_queue_oldest_ready_age_seconds", o1, "", 1.5),
			expect(ss, "keeper_queue_unlocked_total", o1, "", 112),
			expect(ss, "keeper_queue_trimmed_total", o1, "", 116),
			expect(ss, "keeper_unlock_lag_seconds_count", o1, "", 1),
			expect(ss, "keeper_unlock_lag_seconds_bucket", with(o1, "le", "0.005"), "", 1),
			expect(ss, "keeper_unlock_lag_seconds_bucket", with(o1, "le", "0.0025"), "", 0),
			expect(ss, "keeper_cluster_members", nil, "", 2),
			expect(ss, "keeper_cluster_rebalances_total", nil, "", 4),
			expect(ss, "keeper_cluster_queue_messages", map[string]string{"queue": "orders", "state": "ready"}, "", 102),
			expect(ss, "keeper_member_leader", map[string]string{"instance": "keeper-a"}, "keeper-a", 1),
			expect(ss, "keeper_member_leader", map[string]string{"instance": "keeper-b"}, "keeper-b", 0),
			expect(ss, "keeper_member_shards_owned", map[string]string{"instance": "keeper-a"}, "keeper-a", 2),
			expect(ss, "keeper_task_pass_duration_seconds_count", map[string]string{"task": "unlock", "outcome": "ok"}, "keeper-a", 1),
			expect(ss, "keeper_fence_refusals_total", shard("orders#9"), "keeper-b", 1),
		)
	})
	s, _ := one(ss, "keeper_queue_messages", with(o1, "state", "ready"))
	if s.Labels["job"] != "keeper" || s.Labels["service_name"] != "keeper" {
		t.Errorf("fleet series without job=keeper service_name=keeper: %v", s)
	}
	for l := range s.Labels {
		if strings.HasPrefix(l, "telemetry_") {
			t.Errorf("fleet series carries %s, which differs between keeper versions: %v", l, s)
		}
	}
	if _, err := one(ss, "keeper_task_last_success_timestamp_seconds", map[string]string{"task": "unlock"}); err != nil {
		t.Error(err)
	}
	var names []string
	seen := map[string]bool{}
	for _, x := range ss {
		if strings.HasPrefix(x.Name, "keeper_") && !seen[x.Name] {
			seen[x.Name] = true
			names = append(names, x.Name)
		}
	}
	sort.Strings(names)
	t.Logf("metric names: %s", strings.Join(names, " "))
	t.Logf("sample fleet series: %v", s)

	// The ring moves orders#1 to B, which reads the shard's cumulative
	// counters and lag histogram from Redis (here: 130 unlocked, a second
	// lag), and B becomes the aggregator.
	a.src.drop("orders#1")
	next := withLag(snapshot("orders", "orders#1", 100), map[int]int64{3: 1, 6: 1}, 43000)
	next.Unlocked = 130
	b.src.put(next)
	a.glob.set(false, GlobalSnapshot{})
	b.glob.set(true, GlobalSnapshot{Members: 2, Shards: 3, Rebalances: 5,
		Queues: []QueueTotals{{Queue: "orders", Shards: 2, Ready: 102, Complete: true}, {Queue: "emails", Shards: 1, Ready: 201, Complete: true}}})
	moved := time.Now()

	// At every scrape, the moved shard's and the global series are one
	// series each, whose counters never go back.
	last := map[string]float64{}
	single := func(ss []otelcol.Series) {
		t.Helper()
		n := map[string]int{}
		for _, x := range ss {
			if x.Labels["shard"] == "orders#1" || strings.HasPrefix(x.Name, "keeper_cluster_") {
				key := x.String()[:strings.LastIndex(x.String(), " ")]
				n[key]++
				if x.Labels["instance"] != "" {
					t.Errorf("fleet series with an instance: %v", x)
				}
				if strings.HasSuffix(x.Name, "_total") || strings.HasSuffix(x.Name, "_count") {
					if x.Value < last[key] {
						t.Errorf("%s went back from %v to %v", key, last[key], x.Value)
					}
					last[key] = x.Value
				}
			}
		}
		for k, c := range n {
			if c != 1 {
				t.Errorf("%s: %d series", k, c)
			}
		}
	}
	wait("B's values in the same series", func(ss []otelcol.Series) error {
		single(ss)
		return errors.Join(
			expect(ss, "keeper_queue_messages", with(o1, "state", "ready"), "", 101),
			expect(ss, "keeper_queue_unlocked_total", o1, "", 130),
			expect(ss, "keeper_unlock_lag_seconds_count", o1, "", 2),
			expect(ss, "keeper_unlock_lag_seconds_bucket", with(o1, "le", "0.025"), "", 1),
			expect(ss, "keeper_unlock_lag_seconds_bucket", with(o1, "le", "0.05"), "", 2),
			expect(ss, "keeper_queue_messages", with(shard("orders#0"), "state", "ready"), "", 1),
			expect(ss, "keeper_cluster_rebalances_total", nil, "", 5),
			expect(ss, "keeper_cluster_queue_messages", map[string]string{"queue": "orders", "state": "ready"}, "", 102),
			expect(ss, "keeper_member_leader", map[string]string{"instance": "keeper-a"}, "keeper-a", 0),
			expect(ss, "keeper_member_shards_owned", map[string]string{"instance": "keeper-b"}, "keeper-b", 2),
		)
	})
	t.Logf("the moved shard's series carries B's values %s after the move, with no second series",
		time.Since(moved).Round(time.Millisecond))
	// A few more exports: still one series each (A's last points are
	// older than B's and A sends no more).
	for end := time.Now().Add(5 * interval); time.Now().Before(end); time.Sleep(interval / 2) {
		ss, err := col.Scrape(ctx)
		if err != nil {
			t.Fatal(err)
		}
		single(ss)
	}
}

// TestStandardEnvironment configures a keeper only through OTEL_* variables
// (endpoint, insecure, headers, compression, interval, resource) and checks
// that its series reach the real collector with the resource labels.
func TestStandardEnvironment(t *testing.T) {
	clearOTelEnv(t)
	col := otelcol.StartTB(t, otelcol.Config{})
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+col.OTLPEndpoint())
	t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
	t.Setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-keeper-test=1")
	t.Setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
	t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "5000")
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=keeper-0,deployment.environment=test")

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out logBuffer
	p, err := startProvider(ctx, Config{
		MemberID: "keeper-0",
		Endpoint: "http://" + closedPort(t), // must lose to the environment
		Logger:   slog.New(slog.NewTextHandler(&out, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	shutdownAtCleanup(t, p)
	if p.ExportInterval() != 200*time.Millisecond {
		t.Fatalf("export interval %v, want OTEL_METRIC_EXPORT_INTERVAL's 200ms", p.ExportInterval())
	}
	observe(t, p, newShards(snapshot("q", "q#0", 0)), nil)
	for {
		ss, err := col.Scrape(ctx)
		if err == nil {
			// The keeper's own series carry every resource attribute; the
			// fleet's only the fleet-wide ones.
			own := otelcol.Select(ss, "keeper_member_shards_owned", map[string]string{
				"instance": "keeper-0", "k8s_pod_name": "keeper-0", "deployment_environment": "test"})
			fleet := otelcol.Select(ss, "keeper_queue_messages", map[string]string{"shard": "q#0", "state": "ready",
				"deployment_environment": "test", "job": "keeper"})
			if len(own) == 1 && own[0].Value == 1 && len(fleet) == 1 && fleet[0].Value == 1 {
				for _, l := range []string{"instance", "service_instance_id", "k8s_pod_name", "telemetry_sdk_version"} {
					if v, ok := fleet[0].Labels[l]; ok {
						t.Errorf("fleet series names its keeper: %s=%q in %v", l, v, fleet[0])
					}
				}
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("series never arrived through the env-configured exporter (scrape err %v); keeper log:\n%s", err, out.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// A collector whose OTLP receiver requires mutual TLS gets the keeper's
// series when the standard variables name the CA and a client certificate
// (OTEL_EXPORTER_OTLP_CERTIFICATE, _CLIENT_CERTIFICATE, _CLIENT_KEY); a
// keeper without the client certificate is refused, and says so in its log.
func TestOTLPOverMutualTLS(t *testing.T) {
	clearOTelEnv(t)
	pki := testpki.NewTB(t)
	overlay := filepath.Join(t.TempDir(), "tls.yaml")
	if err := os.WriteFile(overlay, []byte(fmt.Sprintf(`receivers:
  otlp:
    protocols:
      grpc:
        tls:
          cert_file: %s
          key_file: %s
          client_ca_file: %s
`, pki.ServerCert, pki.ServerKey, pki.CAFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	col := otelcol.StartTB(t, otelcol.Config{Overlays: []string{overlay}})
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "https://"+col.OTLPEndpoint())
	t.Setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.CAFile)
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")
	// A refused handshake surfaces as an export timeout: keep it short.
	t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Without a client certificate the handshake fails; the exporter's
	// error reaches the keeper's log.
	var refused logBuffer
	bad, err := startProvider(ctx, Config{MemberID: "keeper-nocert", Logger: slog.New(slog.NewTextHandler(&refused, nil))})
	if err != nil {
		t.Fatal(err)
	}
	observe(t, bad, newShards(snapshot("nocert", "nocert#0", 0)), nil)
	poll.For(t, 30*time.Second, "the refused export in the keeper's log", func() (bool, string) {
		out := refused.String()
		return strings.Contains(out, "metrics export failed"), out
	})
	t.Logf("without a client certificate: %s", refused.String()[strings.Index(refused.String(), "metrics export failed"):])
	shutdownCtx, stop := context.WithTimeout(ctx, 2*time.Second)
	_ = bad.Stop(shutdownCtx)
	stop()

	t.Setenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", pki.ClientCert)
	t.Setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", pki.ClientKey)
	var out logBuffer
	p, err := startProvider(ctx, Config{MemberID: "keeper-tls", Logger: slog.New(slog.NewTextHandler(&out, nil))})
	if err != nil {
		t.Fatal(err)
	}
	shutdownAtCleanup(t, p)
	observe(t, p, newShards(snapshot("q", "q#0", 0)), nil)
	poll.For(t, 30*time.Second, "the series through the mutual-TLS receiver", func() (bool, string) {
		ss, err := col.Scrape(ctx)
		if err != nil {
			return false, err.Error()
		}
		m := otelcol.Select(ss, "keeper_member_shards_owned", map[string]string{"instance": "keeper-tls"})
		f := otelcol.Select(ss, "keeper_queue_messages", map[string]string{"shard": "q#0", "state": "ready"})
		return len(m) == 1 && m[0].Value == 1 && len(f) == 1, fmt.Sprintf("%d own and %d fleet series; keeper log: %s", len(m), len(f), out.String())
	})
	// Nothing the refused keeper sent got through.
	ss, err := col.Scrape(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m := otelcol.Select(ss, "keeper_member_shards_owned", map[string]string{"instance": "keeper-nocert"}); len(m) != 0 {
		t.Fatalf("%d series from the keeper without a client certificate", len(m))
	}
	if m := otelcol.Select(ss, "keeper_queue_messages", map[string]string{"queue": "nocert"}); len(m) != 0 {
		t.Fatalf("%d fleet series from the keeper without a client certificate", len(m))
	}
}

// The provider keeps the lifecycle rules (internal/service), exporting to a
// collector that is not there, and with a scrape endpoint that must be
// released by every Stop.
func TestProviderStartStop(t *testing.T) {
	clearOTelEnv(t)
	servicetest.Stress(t, 10, func(*testing.T) service.Service {
		return NewProvider(Config{MemberID: "stress", Endpoint: "http://" + closedPort(t), ExportInterval: 50 * time.Millisecond,
			PrometheusAddr: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	})
}

// scrapeProvider reads p's Prometheus endpoint.
func scrapeProvider(t *testing.T, p *Provider) []otelcol.Series {
	t.Helper()
	resp, err := http.Get("http://" + p.PrometheusAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	ss, err := otelcol.ParseText(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return ss
}

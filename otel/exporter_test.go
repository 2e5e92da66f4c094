package otel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/otelcol"
	"github.com/keeperhq/keeper/internal/poll"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/metric"
)

func TestOTLPConfigured(t *testing.T) {
	clearOTelEnv(t)
	if OTLPConfigured("") || OTLPConfigured("  ") {
		t.Error("no endpoint anywhere counts as configured")
	}
	if !OTLPConfigured("http://collector:4317") {
		t.Error("an endpoint given is not configured")
	}
	for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"} {
		t.Run(k, func(t *testing.T) {
			clearOTelEnv(t)
			t.Setenv(k, "http://collector:4317")
			if !OTLPConfigured("") {
				t.Errorf("%s does not count", k)
			}
		})
	}
}

// counter adds n to a counter of p's and returns its name as Prometheus
// writes it.
func addCounter(t *testing.T, p *Provider, n int64) string {
	t.Helper()
	c, err := p.Meter("github.com/keeperhq/keeper/otel-test").Int64Counter("keeper.test.things", metric.WithUnit("1"))
	if err != nil {
		t.Fatal(err)
	}
	c.Add(context.Background(), n)
	return "keeper_test_things_total"
}

// With OTLPOnlyIfConfigured and no endpoint anywhere, the provider makes no
// OTLP exporter (nothing dials localhost:4317 and fails every interval), says
// so at start, and the metrics are read on the Prometheus endpoint. Without
// the option the old behaviour stays: an OTLP exporter on the default
// endpoint.
func TestNoOTLPExporterUnlessConfigured(t *testing.T) {
	clearOTelEnv(t)
	var out logBuffer
	p, err := startProvider(context.Background(), Config{MemberID: "m1", ExportInterval: 50 * time.Millisecond,
		OTLPOnlyIfConfigured: true, PrometheusAddr: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(&out, nil))})
	if err != nil {
		t.Fatal(err)
	}
	shutdownAtCleanup(t, p)
	if _, ok := p.exporter.Exporter.(discardExporter); !ok {
		t.Fatalf("exporter %T, want none", p.exporter.Exporter)
	}
	if !strings.Contains(out.String(), "otlp_endpoint=\"none (no endpoint configured)\"") {
		t.Errorf("start log:\n%s", out.String())
	}
	name := addCounter(t, p, 3)
	if err := p.ForceFlush(context.Background()); err != nil {
		t.Errorf("flush without an exporter: %v", err)
	}
	ss := scrapeProvider(t, p)
	if m := otelcol.Select(ss, name, nil); len(m) != 1 || m[0].Value != 3 {
		t.Errorf("%s on the Prometheus endpoint: %v", name, m)
	}
	if strings.Contains(out.String(), "export failed") {
		t.Errorf("an export failed:\n%s", out.String())
	}

	old, err := startProvider(context.Background(), Config{MemberID: "m1", ExportInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(&logBuffer{}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := old.exporter.Exporter.(*otlpmetricgrpc.Exporter); !ok {
		t.Errorf("without OTLPOnlyIfConfigured: exporter %T, want the OTLP one", old.exporter.Exporter)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = old.Stop(ctx) // its last export has nowhere to go; Stop must return
}

// An endpoint from the environment alone is configured: the metrics reach a
// real collector.
func TestOTLPOnlyIfConfiguredExportsToTheEnvironment(t *testing.T) {
	clearOTelEnv(t)
	col := otelcol.StartTB(t, otelcol.Config{})
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+col.OTLPEndpoint())
	p, err := startProvider(context.Background(), Config{MemberID: "m1", ExportInterval: time.Hour,
		OTLPOnlyIfConfigured: true, Logger: slog.New(slog.NewTextHandler(&logBuffer{}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	shutdownAtCleanup(t, p)
	name := addCounter(t, p, 5)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.ForceFlush(ctx); err != nil {
		t.Fatal(err)
	}
	poll.For(t, 30*time.Second, name+" in the collector's scrape", func() (bool, string) {
		ss, err := col.Scrape(ctx)
		if err != nil {
			return false, err.Error()
		}
		m := otelcol.Select(ss, name, nil)
		return len(m) == 1 && m[0].Value == 5, fmt.Sprint(m)
	})
}

func TestExportInterval(t *testing.T) {
	clearOTelEnv(t)
	if d, err := exportInterval(0); d != ExportIntervalDefault || err != nil {
		t.Errorf("default: %v %v", d, err)
	}
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "2500")
	if d, err := exportInterval(0); d != 2500*time.Millisecond || err != nil {
		t.Errorf("from env: %v %v", d, err)
	}
	if d, _ := exportInterval(time.Second); d != time.Second {
		t.Errorf("config must win over env: %v", d)
	}
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "10s")
	if d, err := exportInterval(0); d != ExportIntervalDefault || err == nil {
		t.Errorf("bad env: %v %v, want default and an error", d, err)
	}
}

func TestEndpointFromEnvWins(t *testing.T) {
	clearOTelEnv(t)
	if opts, target := exporterOptions(""); len(opts) != 0 || !strings.Contains(target, "localhost:4317") {
		t.Errorf("nothing configured: %d options, target %q", len(opts), target)
	}
	if opts, target := exporterOptions("http://127.0.0.1:1"); len(opts) != 1 || target != "http://127.0.0.1:1" {
		t.Errorf("config endpoint: %d options, target %q", len(opts), target)
	}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
	if opts, target := exporterOptions("http://127.0.0.1:1"); len(opts) != 0 || !strings.Contains(target, "collector:4317") {
		t.Errorf("env endpoint must win: %d options, target %q", len(opts), target)
	}
	t.Setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://metrics:4317")
	if _, target := exporterOptions(""); !strings.Contains(target, "metrics:4317") {
		t.Errorf("signal-specific env must win: %q", target)
	}
}

func TestRateLimitedLog(t *testing.T) {
	var out logBuffer
	l := newRateLimitedLog(slog.New(slog.NewTextHandler(&out, nil)), time.Minute, "x:1")
	now := time.Unix(1000, 0)
	l.now = func() time.Time { return now }
	boom := errors.New("boom")
	for i := 0; i < 5; i++ {
		l.failed(boom)
		now = now.Add(10 * time.Second)
	}
	if n := strings.Count(out.String(), "metrics export failed"); n != 1 {
		t.Fatalf("%d failure lines within a minute, want 1:\n%s", n, out.String())
	}
	now = now.Add(time.Minute)
	l.failed(boom)
	if n := strings.Count(out.String(), "metrics export failed"); n != 2 || !strings.Contains(out.String(), "suppressed_since_last_log=4") {
		t.Fatalf("want a second line with the suppressed count:\n%s", out.String())
	}
	l.succeeded()
	l.succeeded()
	if n := strings.Count(out.String(), "metrics export recovered"); n != 1 || !strings.Contains(out.String(), "failed_exports=6") {
		t.Fatalf("want one recovery line:\n%s", out.String())
	}
	l.failed(boom)
	if n := strings.Count(out.String(), "metrics export failed"); n != 3 {
		t.Fatalf("a new outage must be logged at once:\n%s", out.String())
	}
}

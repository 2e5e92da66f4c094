package otel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/loopback"
	"github.com/keeperhq/keeper/internal/otelcol"
	"github.com/keeperhq/keeper/internal/poll"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
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
	target := func(endpoint string) exportTarget {
		t.Helper()
		tg, err := exportTargetOf(endpoint)
		if err != nil {
			t.Fatal(err)
		}
		return tg
	}
	if tg := target(""); tg.endpoint != "" || !strings.Contains(tg.describe, "localhost:4317") || len(tg.grpcOptions()) != 0 {
		t.Errorf("nothing configured: %+v", tg)
	}
	if tg := target("http://127.0.0.1:1"); tg.endpoint != "http://127.0.0.1:1" || tg.describe != "http://127.0.0.1:1" || len(tg.grpcOptions()) != 1 {
		t.Errorf("config endpoint: %+v", tg)
	}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
	if tg := target("http://127.0.0.1:1"); tg.endpoint != "" || !strings.Contains(tg.describe, "collector:4317") {
		t.Errorf("env endpoint must win: %+v", tg)
	}
	t.Setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://metrics:4317")
	if tg := target(""); !strings.Contains(tg.describe, "metrics:4317") {
		t.Errorf("signal-specific env must win: %+v", tg)
	}
}

// OTEL_EXPORTER_OTLP_PROTOCOL and its metrics-specific variable choose the
// transport; what keeper cannot send is refused with the variable named,
// not exported over something else.
func TestExportProtocol(t *testing.T) {
	for _, c := range []struct {
		general, metrics string
		want             string // "" = an error naming the variable set
	}{
		{"", "", protocolGRPC},
		{"grpc", "", protocolGRPC},
		{"http/protobuf", "", protocolHTTP},
		{" http/protobuf ", "", protocolHTTP},
		{"grpc", "http/protobuf", protocolHTTP},
		{"http/protobuf", "grpc", protocolGRPC},
		{"http/json", "", ""},
		{"", "HTTP", ""},
	} {
		clearOTelEnv(t)
		t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", c.general)
		t.Setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", c.metrics)
		got, err := exportProtocol()
		switch {
		case c.want != "" && (got != c.want || err != nil):
			t.Errorf("%q/%q: %q, %v; want %q", c.general, c.metrics, got, err, c.want)
		case c.want == "" && (err == nil || !strings.Contains(err.Error(), "OTEL_EXPORTER_OTLP_")):
			t.Errorf("%q/%q: %q, %v; want an error naming the variable", c.general, c.metrics, got, err)
		}
	}
	clearOTelEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
	if _, err := startProvider(context.Background(), Config{MemberID: "m1",
		Logger: slog.New(slog.NewTextHandler(&logBuffer{}, nil))}); err == nil || !strings.Contains(err.Error(), "http/json") {
		t.Errorf("a provider with an unsupported protocol started: %v", err)
	}
}

// With http/protobuf the series reach a real collector's OTLP/HTTP
// receiver, from the environment's base URL and from Config.Endpoint's
// (to which /v1/metrics is added, as to the environment's). That port
// speaks HTTP/1 only: series exported over gRPC would never arrive there.
func TestOTLPOverHTTP(t *testing.T) {
	clearOTelEnv(t)
	port, err := loopback.Port()
	if err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(t.TempDir(), "http.yaml")
	if err := os.WriteFile(overlay, []byte(fmt.Sprintf(`receivers:
  otlp:
    protocols:
      http:
        endpoint: %s
`, loopback.Addr(port))), 0o600); err != nil {
		t.Fatal(err)
	}
	col := otelcol.StartTB(t, otelcol.Config{Overlays: []string{overlay}})
	base := "http://" + loopback.Addr(port)
	for _, c := range []struct {
		member   string
		env      map[string]string
		endpoint string
	}{
		{"from-env", map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": protocolHTTP, "OTEL_EXPORTER_OTLP_ENDPOINT": base}, ""},
		{"from-config", map[string]string{"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": protocolHTTP}, base},
	} {
		t.Run(c.member, func(t *testing.T) {
			clearOTelEnv(t)
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			var out logBuffer
			p, err := startProvider(context.Background(), Config{MemberID: c.member, ExportInterval: 200 * time.Millisecond,
				Endpoint: c.endpoint, Logger: slog.New(slog.NewTextHandler(&out, nil))})
			if err != nil {
				t.Fatal(err)
			}
			shutdownAtCleanup(t, p)
			if _, ok := p.exporter.Exporter.(*otlpmetrichttp.Exporter); !ok {
				t.Fatalf("exporter %T, want otlpmetrichttp's", p.exporter.Exporter)
			}
			name := addCounter(t, p, 7)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			poll.For(t, 30*time.Second, name+" from "+c.member+" in the collector's scrape", func() (bool, string) {
				ss, err := col.Scrape(ctx)
				if err != nil {
					return false, err.Error()
				}
				m := otelcol.Select(ss, name, map[string]string{"instance": c.member})
				return len(m) == 1 && m[0].Value == 7, fmt.Sprint(m, "\nkeeper log:\n", out.String())
			})
			if !strings.Contains(out.String(), "over http/protobuf") {
				t.Errorf("the start log does not say the protocol:\n%s", out.String())
			}
		})
	}
}

func TestMetricsExportersFromEnv(t *testing.T) {
	for _, c := range []struct {
		v    string
		want exporterChoice
		bad  bool
	}{
		{"", exporterChoice{otlp: true}, false},
		{"otlp", exporterChoice{otlp: true}, false},
		{"none", exporterChoice{}, false},
		{"prometheus", exporterChoice{prometheus: true}, false},
		{" OTLP , prometheus ", exporterChoice{otlp: true, prometheus: true}, false},
		{"console", exporterChoice{}, true},
		{"otlp,logging", exporterChoice{}, true},
	} {
		t.Setenv("OTEL_METRICS_EXPORTER", c.v)
		got, err := metricsExporters()
		if c.bad != (err != nil) || (!c.bad && got != c.want) || (c.bad && !strings.Contains(err.Error(), "OTEL_METRICS_EXPORTER")) {
			t.Errorf("%q: %+v, %v; want %+v (error: %v)", c.v, got, err, c.want, c.bad)
		}
	}
}

// OTEL_SDK_DISABLED and OTEL_METRICS_EXPORTER decide what a provider
// exports, as the specification has them: disabled is metrics.disabled;
// prometheus serves the pull endpoint at OTEL_EXPORTER_PROMETHEUS_HOST and
// _PORT; a list without otlp pushes nothing, endpoint or not; what keeper
// cannot export stops the start.
func TestExporterSelectionFromEnv(t *testing.T) {
	start := func(t *testing.T, cfg Config) (*Provider, *logBuffer, error) {
		t.Helper()
		var out logBuffer
		cfg.MemberID, cfg.ExportInterval, cfg.Logger = "sel", time.Hour, slog.New(slog.NewTextHandler(&out, nil))
		p, err := startProvider(context.Background(), cfg)
		if err == nil {
			shutdownAtCleanup(t, p)
		}
		return p, &out, err
	}
	t.Run("sdk disabled", func(t *testing.T) {
		clearOTelEnv(t)
		t.Setenv("OTEL_SDK_DISABLED", "TRUE")
		p, out, err := start(t, Config{PrometheusAddr: "127.0.0.1:0", Endpoint: "http://" + closedPort(t)})
		if err != nil {
			t.Fatal(err)
		}
		if p.mp != nil || p.PrometheusAddr() != "" || !strings.Contains(out.String(), "by=OTEL_SDK_DISABLED") {
			t.Errorf("OTEL_SDK_DISABLED=TRUE left metrics on (pull endpoint %q):\n%s", p.PrometheusAddr(), out.String())
		}
	})
	t.Run("sdk not disabled", func(t *testing.T) {
		clearOTelEnv(t)
		t.Setenv("OTEL_SDK_DISABLED", "yes") // only "true" disables
		p, _, err := start(t, Config{OTLPOnlyIfConfigured: true})
		if err != nil || p.mp == nil {
			t.Fatalf("metrics off with OTEL_SDK_DISABLED=yes: %v", err)
		}
	})
	t.Run("prometheus only", func(t *testing.T) {
		clearOTelEnv(t)
		port, err := loopback.Port()
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv("OTEL_METRICS_EXPORTER", "prometheus")
		t.Setenv("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1")
		t.Setenv("OTEL_EXPORTER_PROMETHEUS_PORT", fmt.Sprint(port))
		t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+closedPort(t))
		p, out, err := start(t, Config{})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := p.exporter.Exporter.(discardExporter); !ok {
			t.Errorf("exporter %T with OTEL_METRICS_EXPORTER=prometheus, want none", p.exporter.Exporter)
		}
		if p.PrometheusAddr() != loopback.Addr(port) {
			t.Fatalf("pull endpoint %q, want %s", p.PrometheusAddr(), loopback.Addr(port))
		}
		name := addCounter(t, p, 4)
		if m := otelcol.Select(scrapeProvider(t, p), name, nil); len(m) != 1 || m[0].Value != 4 {
			t.Errorf("%s on the pull endpoint: %v", name, m)
		}
		if !strings.Contains(out.String(), "OTEL_METRICS_EXPORTER=prometheus") {
			t.Errorf("the start log does not say why nothing is pushed:\n%s", out.String())
		}
	})
	t.Run("otlp and prometheus", func(t *testing.T) {
		clearOTelEnv(t)
		t.Setenv("OTEL_METRICS_EXPORTER", "otlp,prometheus")
		t.Setenv("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1")
		t.Setenv("OTEL_EXPORTER_PROMETHEUS_PORT", "0")
		p, _, err := start(t, Config{Endpoint: "http://" + closedPort(t)})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := p.exporter.Exporter.(*otlpmetricgrpc.Exporter); !ok || p.PrometheusAddr() == "" {
			t.Errorf("exporter %T, pull endpoint %q; want both", p.exporter.Exporter, p.PrometheusAddr())
		}
	})
	t.Run("unsupported", func(t *testing.T) {
		clearOTelEnv(t)
		t.Setenv("OTEL_METRICS_EXPORTER", "console")
		if _, _, err := start(t, Config{}); err == nil || !strings.Contains(err.Error(), "OTEL_METRICS_EXPORTER") {
			t.Errorf("start with OTEL_METRICS_EXPORTER=console: %v", err)
		}
	})
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

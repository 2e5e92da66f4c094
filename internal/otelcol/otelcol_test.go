package otelcol

import (
	"context"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
)

func TestParseText(t *testing.T) {
	in := `# HELP keeper_queue_messages Messages by state.
# TYPE keeper_queue_messages gauge
keeper_queue_messages{queue="q1",shard="q1#0",state="ready"} 5
keeper_queue_messages{queue="q\"x\\y\nz",shard="a,b}",state="dead"} 1.5e+06 1700000000000

up 1
lag_bucket{le="+Inf",queue="q1"} 7
weird{ a = "1" , b="2",} -Inf
nan_value NaN
`
	got, err := ParseText(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 6 {
		t.Fatalf("got %d series, want 6: %v", len(got), got)
	}
	if got[0].Name != "keeper_queue_messages" || got[0].Value != 5 || got[0].Labels["shard"] != "q1#0" || got[0].Labels["state"] != "ready" {
		t.Errorf("first series: %v", got[0])
	}
	if l := got[1].Labels; l["queue"] != "q\"x\\y\nz" || l["shard"] != "a,b}" || got[1].Value != 1.5e6 {
		t.Errorf("escaped series: %#v", got[1])
	}
	if got[2].Name != "up" || len(got[2].Labels) != 0 || got[2].Value != 1 {
		t.Errorf("bare series: %v", got[2])
	}
	if got[3].Labels["le"] != "+Inf" || got[3].Value != 7 {
		t.Errorf("bucket series: %v", got[3])
	}
	if got[4].Labels["a"] != "1" || got[4].Labels["b"] != "2" || !math.IsInf(got[4].Value, -1) {
		t.Errorf("spaced labels: %v", got[4])
	}
	if !math.IsNaN(got[5].Value) {
		t.Errorf("NaN: %v", got[5])
	}
	if n := len(Select(got, "keeper_queue_messages", map[string]string{"state": "ready"})); n != 1 {
		t.Errorf("Select matched %d, want 1", n)
	}

	for _, bad := range []string{`x{a="1" 2`, `x{a=1} 2`, `x`, `x{a="1"} notanumber`, `x 1 2 3`} {
		if _, err := ParseText(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseText(%q) accepted malformed input", bad)
		}
	}
}

func TestMissingBinarySaysMakeCollector(t *testing.T) {
	_, err := Start(context.Background(), Config{Binary: "/nonexistent/otelcol-keeper"})
	if err == nil || !strings.Contains(err.Error(), "make collector") {
		t.Fatalf("Start with a missing binary: %v, want an error telling to run `make collector`", err)
	}
}

func TestRepoRootSkipsOtherModules(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, DefaultConfigFile)); err != nil {
		t.Fatalf("repo root %s: %v", root, err)
	}
	// A go.mod of another module (like the builder's under bin/) is not the
	// root; outside the repo there is none.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module otelcol-keeper\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	if got, err := repoRoot(); err == nil {
		t.Fatalf("repoRoot from %s = %s, want an error", dir, got)
	}
	if !declaresModule("// c\nmodule   github.com/keeperhq/keeper // x\n", module) {
		t.Fatal("declaresModule misreads a module line with a comment")
	}
}

// Two collectors side by side prove that every listener, the collector's own
// telemetry included, is on its own free loopback port.
func TestTwoCollectorsSideBySide(t *testing.T) {
	a := StartTB(t, Config{})
	// A relative config path is resolved against the test's directory even
	// though the collector runs in a temporary one.
	b := StartTB(t, Config{ConfigFile: filepath.Join("..", "..", DefaultConfigFile)})
	for _, c := range []*Collector{a, b} {
		for _, addr := range []string{c.otlpAddr, c.promAddr, c.telemetryAddr} {
			host, _, err := net.SplitHostPort(addr)
			if err != nil || host != "127.0.0.1" {
				t.Errorf("listener %q is not on 127.0.0.1", addr)
			}
		}
		if _, err := c.Scrape(context.Background()); err != nil {
			t.Errorf("scrape: %v", err)
		}
	}
	if a.telemetryAddr == b.telemetryAddr {
		t.Fatal("both collectors share a telemetry port")
	}
	// The collector's own metrics must be served on the pinned loopback port.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	own := &Collector{promAddr: a.telemetryAddr, client: a.client}
	if _, err := poll.Until(ctx, 50*time.Millisecond, func() (bool, string) {
		ss, err := own.Scrape(ctx)
		if err != nil {
			return false, err.Error()
		}
		for _, s := range ss {
			if strings.HasPrefix(s.Name, "otelcol_") {
				return true, ""
			}
		}
		return false, "no otelcol_ series"
	}); err != nil {
		t.Fatalf("collector telemetry on %s: %v", a.telemetryAddr, err)
	}
}

// TestRoundTrip sends one gauge over OTLP and reads it back from the
// Prometheus endpoint: names, labels (the resource's service.instance.id
// included) and value; then checks that metric_expiration removes a series
// that stops being exported, and that Stop ends the process and frees the
// ports.
func TestRoundTrip(t *testing.T) {
	c := StartTB(t, Config{MetricExpiration: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	exp, err := otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithEndpoint(c.OTLPEndpoint()), otlpmetricgrpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	res := resource.NewSchemaless(
		attribute.String("service.name", "keeper"),
		attribute.String("service.instance.id", "member-1"),
	)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader), sdkmetric.WithResource(res))
	g, err := mp.Meter("roundtrip").Int64Gauge("test.roundtrip.messages", metric.WithUnit("{message}"))
	if err != nil {
		t.Fatal(err)
	}
	g.Record(ctx, 42, metric.WithAttributes(attribute.String("queue", "q1"), attribute.String("shard", "q1#0")))
	push := func() {
		rm := collect(t, ctx, reader)
		if err := exp.Export(ctx, &rm); err != nil {
			t.Fatalf("export: %v", err)
		}
	}
	push()

	var got Series
	if _, err := poll.Until(ctx, 50*time.Millisecond, func() (bool, string) {
		ss, err := c.Scrape(ctx)
		if err != nil {
			return false, err.Error()
		}
		m := Select(ss, "test_roundtrip_messages", map[string]string{"queue": "q1", "shard": "q1#0"})
		if len(m) != 1 {
			return false, "series not there yet"
		}
		got = m[0]
		return true, ""
	}); err != nil {
		t.Fatal(err)
	}
	if got.Value != 42 {
		t.Errorf("value %v, want 42", got.Value)
	}
	for k, want := range map[string]string{"instance": "member-1", "job": "keeper", "service_instance_id": "member-1"} {
		if got.Labels[k] != want {
			t.Errorf("label %s=%q, want %q (series %v)", k, got.Labels[k], want, got)
		}
	}
	t.Logf("series as scraped: %v", got)

	// No more exports: the series must disappear once it is older than the
	// expiration.
	if _, err := poll.Until(ctx, 50*time.Millisecond, func() (bool, string) {
		ss, err := c.Scrape(ctx)
		if err != nil {
			return false, err.Error()
		}
		if n := len(Select(ss, "test_roundtrip_messages", nil)); n != 0 {
			return false, "series still exposed"
		}
		return true, ""
	}); err != nil {
		t.Fatal(err)
	}
	_ = exp.Shutdown(ctx)

	pid := c.Pid()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatalf("collector pid %d still alive after Stop", pid)
	}
	for _, addr := range []string{c.otlpAddr, c.promAddr, c.telemetryAddr} {
		if conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			_ = conn.Close()
			t.Errorf("%s still accepts connections after Stop", addr)
		}
	}
}

func collect(t *testing.T, ctx context.Context, r *sdkmetric.ManualReader) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(ctx, &rm); err != nil {
		t.Fatalf("collect: %v", err)
	}
	return rm
}

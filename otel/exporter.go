package otel

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
)

// OTLPConfigured reports whether an OTLP endpoint was asked for: endpoint
// (Config.Endpoint) or one of the environment's
// OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_METRICS_ENDPOINT.
func OTLPConfigured(endpoint string) bool {
	if strings.TrimSpace(endpoint) != "" {
		return true
	}
	for _, k := range []string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		if strings.TrimSpace(os.Getenv(k)) != "" {
			return true
		}
	}
	return false
}

// newExporter is the OTLP exporter of cfg and, for log messages, where it
// sends. With Config.OTLPOnlyIfConfigured and no endpoint configured it is
// one that drops every export: no connection is made and nothing fails
// every interval for want of a collector nobody asked for (the metrics are
// still read through Config.PrometheusAddr, when set).
func newExporter(ctx context.Context, cfg Config) (sdkmetric.Exporter, string, error) {
	if cfg.OTLPOnlyIfConfigured && !OTLPConfigured(cfg.Endpoint) {
		return discardExporter{}, "none (no endpoint configured)", nil
	}
	opts, target := exporterOptions(cfg.Endpoint)
	exp, err := otlpmetricgrpc.New(ctx, opts...)
	if err != nil {
		return nil, target, fmt.Errorf("otlp metric exporter: %w", err)
	}
	return exp, target, nil
}

// discardExporter takes every export and keeps nothing.
type discardExporter struct{}

func (discardExporter) Temporality(k sdkmetric.InstrumentKind) metricdata.Temporality {
	return sdkmetric.DefaultTemporalitySelector(k)
}

func (discardExporter) Aggregation(k sdkmetric.InstrumentKind) sdkmetric.Aggregation {
	return sdkmetric.DefaultAggregationSelector(k)
}

func (discardExporter) Export(context.Context, *metricdata.ResourceMetrics) error { return nil }
func (discardExporter) ForceFlush(context.Context) error                          { return nil }
func (discardExporter) Shutdown(context.Context) error                            { return nil }

// exportInterval applies Config, then OTEL_METRIC_EXPORT_INTERVAL, then the
// default. The SDK would read the variable itself, but silently falls back to
// its 60s default on a bad value; parsing it here makes a typo visible.
func exportInterval(cfg time.Duration) (time.Duration, error) {
	if cfg > 0 {
		return cfg, nil
	}
	v := strings.TrimSpace(os.Getenv("OTEL_METRIC_EXPORT_INTERVAL"))
	if v == "" {
		return ExportIntervalDefault, nil
	}
	ms, err := strconv.Atoi(v)
	if err != nil || ms <= 0 {
		return ExportIntervalDefault, fmt.Errorf("OTEL_METRIC_EXPORT_INTERVAL=%q is not a positive number of milliseconds", v)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// exporterOptions returns the OTLP options and, for log messages, where the
// exporter will send. Options override the environment inside otlpmetricgrpc,
// so Config.Endpoint is only passed when the environment names no endpoint.
func exporterOptions(endpoint string) ([]otlpmetricgrpc.Option, string) {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		if v := strings.TrimSpace(os.Getenv(k)); v != "" {
			return nil, v + " (" + k + ")"
		}
	}
	switch {
	case endpoint == "":
		return nil, "localhost:4317 (default: no endpoint configured)"
	case strings.Contains(endpoint, "://"):
		return []otlpmetricgrpc.Option{otlpmetricgrpc.WithEndpointURL(endpoint)}, endpoint
	default:
		return []otlpmetricgrpc.Option{otlpmetricgrpc.WithEndpoint(endpoint)}, endpoint
	}
}

// loggingExporter keeps export failures away from the SDK's global error
// handler, which would print every one of them, and logs them rate-limited
// instead. A failed export loses one interval of cumulative data points,
// which the next successful export makes up for.
type loggingExporter struct {
	sdkmetric.Exporter
	errs    *rateLimitedLog
	lastErr atomic.Pointer[error]
	// resource, when set, replaces the provider's.
	resource *resource.Resource
}

func (e *loggingExporter) Export(ctx context.Context, rm *metricdata.ResourceMetrics) error {
	if e.resource != nil {
		rm = &metricdata.ResourceMetrics{Resource: e.resource, ScopeMetrics: rm.ScopeMetrics}
	}
	if err := e.Exporter.Export(ctx, rm); err != nil {
		e.lastErr.Store(&err)
		e.errs.failed(err)
		return nil
	}
	e.errs.succeeded()
	return nil
}

// rateLimitedLog logs the first export failure at once, then at most one
// summary per period while failures continue, and one line on recovery.
type rateLimitedLog struct {
	log    *slog.Logger
	every  time.Duration
	target string
	now    func() time.Time

	mu         sync.Mutex
	failing    bool
	lastLogged time.Time
	suppressed int
	failures   int
}

func newRateLimitedLog(log *slog.Logger, every time.Duration, target string) *rateLimitedLog {
	return &rateLimitedLog{log: log, every: every, target: target, now: time.Now}
}

func (l *rateLimitedLog) failed(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.failures++
	if l.failing && now.Sub(l.lastLogged) < l.every {
		l.suppressed++
		return
	}
	l.log.Warn("metrics export failed", "endpoint", l.target, "err", err,
		"failures", l.failures, "suppressed_since_last_log", l.suppressed)
	l.failing = true
	l.lastLogged = now
	l.suppressed = 0
}

func (l *rateLimitedLog) succeeded() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.failing {
		return
	}
	l.log.Info("metrics export recovered", "endpoint", l.target, "failed_exports", l.failures)
	l.failing = false
	l.failures = 0
	l.suppressed = 0
}

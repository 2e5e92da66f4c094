package otel

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
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
// still read through Config.PrometheusAddr, when set). It is one too when
// otlp is false: OTEL_METRICS_EXPORTER leaves OTLP out.
func newExporter(ctx context.Context, cfg Config, otlp bool) (sdkmetric.Exporter, string, error) {
	if !otlp {
		return discardExporter{}, "none (OTEL_METRICS_EXPORTER=" + os.Getenv("OTEL_METRICS_EXPORTER") + ")", nil
	}
	if cfg.OTLPOnlyIfConfigured && !OTLPConfigured(cfg.Endpoint) {
		return discardExporter{}, "none (no endpoint configured)", nil
	}
	t, err := exportTargetOf(cfg.Endpoint)
	if err != nil {
		return nil, "", err
	}
	var exp sdkmetric.Exporter
	if t.protocol == protocolHTTP {
		exp, err = otlpmetrichttp.New(ctx, t.httpOptions()...)
	} else {
		exp, err = otlpmetricgrpc.New(ctx, t.grpcOptions()...)
	}
	if err != nil {
		return nil, t.describe, fmt.Errorf("otlp metric exporter (%s): %w", t.protocol, err)
	}
	return exp, t.describe, nil
}

// The OTLP transports keeper speaks, by their OTEL_EXPORTER_OTLP_PROTOCOL
// names.
const (
	protocolGRPC = "grpc"
	protocolHTTP = "http/protobuf"
)

// exportProtocol is OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, else
// OTEL_EXPORTER_OTLP_PROTOCOL, else grpc: keeper has always exported over
// gRPC to port 4317, so that stays its default, where the specification's
// is http/protobuf. http/json, which the OpenTelemetry Go exporters do not
// send, and any other value are refused rather than exported over
// something else than asked.
func exportProtocol() (string, error) {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		switch v := strings.TrimSpace(os.Getenv(k)); v {
		case "":
		case protocolGRPC, protocolHTTP:
			return v, nil
		default:
			return "", fmt.Errorf("%s=%q: keeper exports OTLP over %s or %s", k, v, protocolGRPC, protocolHTTP)
		}
	}
	return protocolGRPC, nil
}

// exportTarget is how and where the exporter sends.
type exportTarget struct {
	protocol string
	// endpoint is Config.Endpoint when the environment names no endpoint:
	// options override the environment inside the exporters, so it is
	// passed only then.
	endpoint string
	// describe is where the exports go, for log messages.
	describe string
}

func exportTargetOf(endpoint string) (exportTarget, error) {
	proto, err := exportProtocol()
	if err != nil {
		return exportTarget{}, err
	}
	t := exportTarget{protocol: proto}
	via := ""
	if proto != protocolGRPC {
		via = " over " + proto
	}
	for _, k := range []string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		if v := strings.TrimSpace(os.Getenv(k)); v != "" {
			t.describe = v + " (" + k + ")" + via
			return t, nil
		}
	}
	if endpoint == "" {
		def := "localhost:4317"
		if proto == protocolHTTP {
			def = "localhost:4318"
		}
		t.describe = def + " (default: no endpoint configured)" + via
		return t, nil
	}
	t.endpoint, t.describe = endpoint, endpoint+via
	return t, nil
}

func (t exportTarget) grpcOptions() []otlpmetricgrpc.Option {
	switch {
	case t.endpoint == "":
		return nil
	case strings.Contains(t.endpoint, "://"):
		return []otlpmetricgrpc.Option{otlpmetricgrpc.WithEndpointURL(t.endpoint)}
	default:
		return []otlpmetricgrpc.Option{otlpmetricgrpc.WithEndpoint(t.endpoint)}
	}
}

// httpOptions read Config.Endpoint as OTEL_EXPORTER_OTLP_ENDPOINT is read:
// a URL without a path is the receiver's base, and /v1/metrics is added
// (otlpmetrichttp.WithEndpointURL would post to "/"); a URL with a path is
// used as it is, like OTEL_EXPORTER_OTLP_METRICS_ENDPOINT; host:port alone
// is sent to over TLS, as by the gRPC exporter.
func (t exportTarget) httpOptions() []otlpmetrichttp.Option {
	if t.endpoint == "" {
		return nil
	}
	u, err := url.Parse(t.endpoint)
	if err != nil || !strings.Contains(t.endpoint, "://") {
		return []otlpmetrichttp.Option{otlpmetrichttp.WithEndpoint(t.endpoint)}
	}
	opts := []otlpmetrichttp.Option{otlpmetrichttp.WithEndpoint(u.Host)}
	if u.Scheme == "http" {
		opts = append(opts, otlpmetrichttp.WithInsecure())
	}
	if u.Path != "" && u.Path != "/" {
		opts = append(opts, otlpmetrichttp.WithURLPath(u.Path))
	}
	return opts
}

// SDKDisabled reports OTEL_SDK_DISABLED=true (in any case): then keeper's
// metrics are off as with metrics.disabled. Any other value leaves them
// on, as the specification says.
func SDKDisabled() bool {
	return strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true")
}

// exporterChoice is what OTEL_METRICS_EXPORTER asks for.
type exporterChoice struct{ otlp, prometheus bool }

// metricsExporters reads OTEL_METRICS_EXPORTER, a comma-separated list of
// otlp (the default), prometheus and none. prometheus serves the pull
// endpoint at OTEL_EXPORTER_PROMETHEUS_HOST:_PORT unless
// metrics.prometheus_addr names one; console and logging, which keeper
// does not provide, are refused rather than ignored.
func metricsExporters() (exporterChoice, error) {
	v := strings.TrimSpace(os.Getenv("OTEL_METRICS_EXPORTER"))
	if v == "" {
		return exporterChoice{otlp: true}, nil
	}
	var c exporterChoice
	for _, e := range strings.Split(v, ",") {
		switch strings.ToLower(strings.TrimSpace(e)) {
		case "otlp":
			c.otlp = true
		case "prometheus":
			c.prometheus = true
		case "none":
		default:
			return exporterChoice{}, fmt.Errorf("OTEL_METRICS_EXPORTER=%q: keeper exports otlp, prometheus or none", v)
		}
	}
	return c, nil
}

// prometheusAddrFromEnv is where the specification puts the Prometheus
// exporter: OTEL_EXPORTER_PROMETHEUS_HOST (default localhost) and
// OTEL_EXPORTER_PROMETHEUS_PORT (default 9464).
func prometheusAddrFromEnv() string {
	host, port := strings.TrimSpace(os.Getenv("OTEL_EXPORTER_PROMETHEUS_HOST")), strings.TrimSpace(os.Getenv("OTEL_EXPORTER_PROMETHEUS_PORT"))
	if host == "" {
		host = "localhost"
	}
	if port == "" {
		port = "9464"
	}
	return net.JoinHostPort(host, port)
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

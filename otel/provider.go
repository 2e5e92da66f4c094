// Package otel owns keeper's metrics: the meter provider that exports them
// over OTLP (and, optionally, serves them for a Prometheus scrape), and the
// instruments the housekeeping tasks and the aggregator report through (see
// instruments.go).
//
// Every series leaves with the resource attributes service.name (default
// "keeper") and service.instance.id (the member id), which the collector's
// Prometheus exporter turns into the job and instance labels. The standard
// OTEL_* environment variables work: OTEL_EXPORTER_OTLP_* (endpoint,
// headers, TLS/insecure, timeout, compression) are read by the OTLP exporter
// itself, OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME by the resource, and
// OTEL_METRIC_EXPORT_INTERVAL when Config.ExportInterval is zero.
//
// Temporality stays cumulative (the SDK default) because Prometheus, the
// main consumer, needs cumulative counters and histograms.
package otel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keeperhq/keeper/internal/memberid"
	"github.com/keeperhq/keeper/internal/service"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
)

const (
	// ServiceNameDefault is service.name unless Config or OTEL_SERVICE_NAME
	// says otherwise.
	ServiceNameDefault = "keeper"
	// ExportIntervalDefault is how often metrics are pushed when neither
	// Config.ExportInterval nor OTEL_METRIC_EXPORT_INTERVAL is set. The SDK's
	// own default (60s) is too coarse for queue depth and unlock lag, and the
	// collector's metric_expiration (configs/otelcol) is sized as a multiple
	// of this value.
	ExportIntervalDefault = 10 * time.Second

	// exportErrorLogEvery bounds how often a failing export is logged: a
	// collector that is down for an hour must not produce 360 identical
	// warnings per keeper.
	exportErrorLogEvery = time.Minute
)

// Config describes the provider. Zero values take the documented defaults.
type Config struct {
	// MemberID becomes service.instance.id, i.e. the `instance` label every
	// series carries, so two keepers never write the same series. Default:
	// service.instance.id from OTEL_RESOURCE_ATTRIBUTES, else a random id
	// (logged), which is only right for one-off processes.
	MemberID string
	// ServiceName becomes service.name; default "keeper". OTEL_SERVICE_NAME,
	// when set, wins, as the OpenTelemetry specification requires.
	ServiceName string
	// Endpoint is the OTLP/gRPC endpoint to use when the environment names
	// none (OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_METRICS_ENDPOINT
	// unset); the environment always wins so that operators can redirect
	// keeper without touching its config. "http://host:port" is plaintext,
	// "https://host:port" is TLS, a bare "host:port" keeps the exporter's
	// default (TLS unless OTEL_EXPORTER_OTLP_INSECURE=true). When everything
	// is empty the exporter still targets its default, localhost:4317, and
	// failed exports are only logged.
	Endpoint string
	// ExportInterval is the push period; default OTEL_METRIC_EXPORT_INTERVAL
	// (milliseconds) when set, else 10s.
	ExportInterval time.Duration
	// Disabled turns every instrument into a no-op: nothing is exported and
	// no connection is made.
	Disabled bool
	// PrometheusAddr, when set, additionally serves the metrics for a
	// Prometheus scrape at http://<addr>/metrics, for operators without a
	// collector. Off by default. Use a loopback or pod address; ":0" style
	// ports are resolved (see (*Provider).PrometheusAddr).
	PrometheusAddr string
	// Logger receives export failures (rate-limited) and lifecycle messages;
	// default slog.Default().
	Logger *slog.Logger
}

// Provider is keeper's meter provider. It is a long-running part with the
// lifecycle of package service: NewProvider, then Start builds and starts
// the exporters (Meter is usable from then on), and Stop exports what is
// left and stops them.
type Provider struct {
	base      service.Base
	cfg       Config
	log       *slog.Logger
	mp        *sdkmetric.MeterProvider // nil when disabled
	meters    metric.MeterProvider
	producers *producerSet
	exporter  *loggingExporter
	interval  time.Duration
	memberID  string

	promSrv  *http.Server
	promAddr string
	promDone chan struct{}
}

// NewProvider returns a provider of cfg; Start starts it.
func NewProvider(cfg Config) *Provider {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Provider{cfg: cfg, log: log.With("component", "otel"), producers: &producerSet{}}
}

// Start builds the exporters and the meter provider. It does not wait for
// the collector: the first export happens one interval later, and an
// unreachable collector is logged, never fatal. ctx bounds the start only.
func (p *Provider) Start(ctx context.Context) error {
	startCtx, err := p.base.StartInit(ctx)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	return p.base.StartDone(p.start(startCtx))
}

func (p *Provider) start(ctx context.Context) error {
	cfg, log := p.cfg, p.log
	if cfg.Disabled {
		p.meters = noop.NewMeterProvider()
		log.Info("metrics disabled")
		return nil
	}

	memberID := cfg.MemberID
	if memberID == "" {
		memberID = instanceIDFromEnv()
	}
	if memberID == "" {
		memberID = memberid.New()
		log.Warn("no member id for service.instance.id; using a random one", "service.instance.id", memberID)
	}
	p.memberID = memberID
	res, err := newResource(ctx, cfg.ServiceName, memberID)
	if err != nil {
		return err
	}

	p.interval, err = exportInterval(cfg.ExportInterval)
	if err != nil {
		log.Warn("ignoring OTEL_METRIC_EXPORT_INTERVAL", "err", err, "interval", p.interval)
	}

	opts, target := exporterOptions(cfg.Endpoint)
	exp, err := otlpmetricgrpc.New(ctx, opts...)
	if err != nil {
		return fmt.Errorf("otlp metric exporter: %w", err)
	}
	p.exporter = &loggingExporter{Exporter: exp, errs: newRateLimitedLog(log, exportErrorLogEvery, target)}
	readers := []sdkmetric.Option{
		sdkmetric.WithResource(res),
		sdkmetric.WithReader(sdkmetric.NewPeriodicReader(p.exporter,
			sdkmetric.WithInterval(p.interval),
			sdkmetric.WithProducer(p.producers))),
	}

	if cfg.PrometheusAddr != "" {
		reg := prometheus.NewRegistry()
		promReader, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithProducer(p.producers))
		if err != nil {
			_ = exp.Shutdown(ctx)
			return fmt.Errorf("prometheus exporter: %w", err)
		}
		readers = append(readers, sdkmetric.WithReader(promReader))
		if err := p.servePrometheus(cfg.PrometheusAddr, reg); err != nil {
			_ = exp.Shutdown(ctx)
			return err
		}
	}

	p.mp = sdkmetric.NewMeterProvider(readers...)
	p.meters = p.mp
	log.Info("metrics export started", "otlp_endpoint", target, "interval", p.interval,
		"service.instance.id", memberID, "prometheus", p.promAddr)
	return nil
}

// Meter returns a meter of this provider, once started. Pass it to
// NewInstruments.
func (p *Provider) Meter(name string) metric.Meter {
	m := p.meters.Meter(name)
	if p.mp == nil {
		return m
	}
	return &providerMeter{Meter: m, name: name, producers: p.producers}
}

// providerMeter marks a meter as coming from a Provider, so that
// RegisterInstruments can hang the per-shard unlock-lag histogram on the
// provider's readers as a producer (see ownedHistograms).
type providerMeter struct {
	metric.Meter
	name      string
	producers *producerSet
}

// producerSet is handed to the readers when they are built, before any
// instrument exists; instruments registered later join it.
type producerSet struct {
	mu sync.Mutex
	ps []sdkmetric.Producer
}

func (s *producerSet) add(p sdkmetric.Producer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ps = append(s.ps, p)
}

func (s *producerSet) remove(p sdkmetric.Producer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, q := range s.ps {
		if q == p {
			s.ps = append(s.ps[:k], s.ps[k+1:]...)
			return
		}
	}
}

func (s *producerSet) Produce(ctx context.Context) ([]metricdata.ScopeMetrics, error) {
	s.mu.Lock()
	ps := append([]sdkmetric.Producer(nil), s.ps...)
	s.mu.Unlock()
	var out []metricdata.ScopeMetrics
	var errs []error
	for _, p := range ps {
		sm, err := p.Produce(ctx)
		if err != nil {
			errs = append(errs, err)
		}
		out = append(out, sm...)
	}
	return out, errors.Join(errs...)
}

// MeterProvider is the underlying provider, for libraries that take one
// (the daemon may also install it with otel.SetMeterProvider).
func (p *Provider) MeterProvider() metric.MeterProvider { return p.meters }

// ExportInterval is the effective push period (zero when disabled).
func (p *Provider) ExportInterval() time.Duration { return p.interval }

// MemberID is the service.instance.id the provider exports with.
func (p *Provider) MemberID() string { return p.memberID }

// PrometheusAddr is the bound address of the optional scrape endpoint, or ""
// when it is off.
func (p *Provider) PrometheusAddr() string { return p.promAddr }

// ForceFlush collects and exports now. It returns the export error, if any,
// although the periodic exports only log theirs.
func (p *Provider) ForceFlush(ctx context.Context) error {
	if p.mp == nil {
		return nil
	}
	p.exporter.lastErr.Store(nil)
	if err := p.mp.ForceFlush(ctx); err != nil {
		return fmt.Errorf("flush metrics: %w", err)
	}
	if e := p.exporter.lastErr.Load(); e != nil {
		return fmt.Errorf("flush metrics: %w", *e)
	}
	return nil
}

// Stop exports what is left, then stops the exporters and the scrape
// endpoint, within ctx. Later calls return the first call's result.
func (p *Provider) Stop(ctx context.Context) error {
	return p.base.Halt(ctx, func(ctx context.Context) error {
		var errs []error
		if p.mp != nil {
			if err := p.mp.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("shutdown meter provider: %w", err))
			}
		}
		if p.promSrv != nil {
			if err := p.promSrv.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("shutdown prometheus endpoint: %w", err))
			}
			select {
			case <-p.promDone:
			case <-ctx.Done():
				errs = append(errs, fmt.Errorf("prometheus endpoint: %w", ctx.Err()))
			}
		}
		return errors.Join(errs...)
	})
}

func (p *Provider) servePrometheus(addr string, reg *prometheus.Registry) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("prometheus endpoint %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	p.promSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	p.promAddr = ln.Addr().String()
	p.promDone = make(chan struct{})
	go func() {
		defer close(p.promDone)
		if err := p.promSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.log.Error("prometheus endpoint stopped", "addr", p.promAddr, "err", err)
		}
	}()
	return nil
}

// newResource puts the member id last so that nothing from the environment
// can make two keepers share service.instance.id (invariant 5), while
// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES still override the default
// service name and add attributes such as the pod or node.
func newResource(ctx context.Context, serviceName, memberID string) (*resource.Resource, error) {
	if serviceName == "" {
		serviceName = ServiceNameDefault
	}
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithAttributes(attribute.String("service.name", serviceName)),
		resource.WithFromEnv(),
		resource.WithAttributes(attribute.String("service.instance.id", memberID)),
	)
	if err != nil {
		// A malformed OTEL_RESOURCE_ATTRIBUTES yields a partial resource and
		// an error; refusing to start is the operator-visible choice.
		return nil, fmt.Errorf("metrics resource: %w", err)
	}
	return res, nil
}

func instanceIDFromEnv() string {
	for _, kv := range strings.Split(os.Getenv("OTEL_RESOURCE_ATTRIBUTES"), ",") {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.TrimSpace(k) == "service.instance.id" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

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
}

func (e *loggingExporter) Export(ctx context.Context, rm *metricdata.ResourceMetrics) error {
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

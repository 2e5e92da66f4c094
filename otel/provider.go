// Package otel owns keeper's metrics: the meter provider that exports them
// over OTLP (exporter.go) and, optionally, serves them for a Prometheus
// scrape, the resources that identify them (resource.go), the instruments
// of the keeper itself (instruments.go), and the series of the fleet, per
// shard and global (fleet.go).
//
// Two kinds of series leave keeper, under two resources:
//
//   - A keeper's own series (keeper.member.*, keeper.task.*, errors, fence
//     refusals) describe that keeper. They carry service.name (default
//     "keeper") and service.instance.id (the member id), which the
//     collector's Prometheus exporter turns into the job and instance
//     labels, plus whatever OTEL_RESOURCE_ATTRIBUTES adds (the pod, the
//     node).
//   - The fleet's series (per shard: keeper.queue.*, keeper.unlock.lag; global:
//     keeper.cluster.*) describe Redis and etcd, not the keeper that happens
//     to write them. They carry service.name and service.namespace and the
//     fleet-wide attributes of FleetResourceKeys, never anything that names a
//     keeper (no instance id, no pod, not even the SDK version, which differs
//     between keepers during an upgrade), so when a shard moves, its new owner
//     continues the very same series, and so does a new aggregator.
//
// Each kind has its own SDK meter provider and OTLP exporter (the resource
// belongs to the provider). The fleet series are not SDK instruments but a
// producer that reads the owned shards and the aggregator's snapshot at
// each collection, so a shard the keeper let go is not exported again from
// that moment, and the start time of every fleet counter is left unknown
// (0): the counters are read from Redis, whose totals survive every change
// of owner, and a start time that changed with the writer would make a
// consumer that honours start times (Prometheus's created-timestamp
// ingestion, its OTLP receiver) invent a reset.
//
// The standard OTEL_* environment variables work: OTEL_EXPORTER_OTLP_*
// (endpoint, headers, TLS/insecure, timeout, compression) are read by the
// OTLP exporters themselves, OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
// by the resources, and OTEL_METRIC_EXPORT_INTERVAL when
// Config.ExportInterval is zero.
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
	"sync"
	"time"

	"github.com/keeperhq/keeper/internal/memberid"
	"github.com/keeperhq/keeper/internal/service"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
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
	// MemberID becomes service.instance.id of the keeper's own series,
	// i.e. their `instance` label, so two keepers never write the same one.
	// Default: service.instance.id from OTEL_RESOURCE_ATTRIBUTES, else a
	// random id (logged), which is only right for one-off processes.
	MemberID string
	// ServiceName becomes service.name; default "keeper". OTEL_SERVICE_NAME,
	// when set, wins, as the OpenTelemetry specification requires.
	ServiceName string
	// Endpoint is the OTLP endpoint to use when the environment names
	// none (OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_METRICS_ENDPOINT
	// unset); the environment always wins so that operators can redirect
	// keeper without touching its config. "http://host:port" is plaintext,
	// "https://host:port" is TLS, a bare "host:port" keeps the exporter's
	// default (TLS unless OTEL_EXPORTER_OTLP_INSECURE=true). It is a gRPC
	// endpoint, or with OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf an HTTP
	// receiver's base URL (see exportTarget.httpOptions). When everything
	// is empty the exporter still targets its default, localhost:4317
	// (4318 over HTTP), and failed exports are only logged; unless
	// OTLPOnlyIfConfigured.
	Endpoint string
	// OTLPOnlyIfConfigured drops the OTLP export when neither Endpoint nor
	// the environment names an endpoint, instead of sending to
	// localhost:4317 (see OTLPConfigured).
	OTLPOnlyIfConfigured bool
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
	base     service.Base
	cfg      Config
	log      *slog.Logger
	mp       *sdkmetric.MeterProvider // the keeper's own series; nil when disabled
	fleetMP  *sdkmetric.MeterProvider // the fleet's series; nil when disabled
	meters   metric.MeterProvider
	fleet    *producerSet
	exporter *loggingExporter
	fleetExp *loggingExporter
	interval time.Duration
	memberID string

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
	return &Provider{cfg: cfg, log: log.With("component", "otel"), fleet: &producerSet{}}
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
	if cfg.Disabled || SDKDisabled() {
		p.meters = noop.NewMeterProvider()
		by := "config"
		if !cfg.Disabled {
			by = "OTEL_SDK_DISABLED"
		}
		log.Info("metrics disabled", "by", by)
		return nil
	}
	choice, err := metricsExporters()
	if err != nil {
		return err
	}
	if choice.prometheus && cfg.PrometheusAddr == "" {
		cfg.PrometheusAddr = prometheusAddrFromEnv()
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
	fleetRes, err := fleetResource(ctx, cfg.ServiceName)
	if err != nil {
		return err
	}

	p.interval, err = exportInterval(cfg.ExportInterval)
	if err != nil {
		log.Warn("ignoring OTEL_METRIC_EXPORT_INTERVAL", "err", err, "interval", p.interval)
	}

	// One exporter per provider (an exporter serves one reader); both log
	// their failures through one rate limit, as they fail together.
	exp, target, err := newExporter(ctx, cfg, choice.otlp)
	errs := newRateLimitedLog(log, exportErrorLogEvery, target)
	if err != nil {
		return err
	}
	fleetExp, _, err := newExporter(ctx, cfg, choice.otlp)
	if err != nil {
		_ = exp.Shutdown(ctx)
		return err
	}
	p.exporter = &loggingExporter{Exporter: exp, errs: errs}
	// The SDK merges the environment's attributes (the pod, ...) into any
	// provider's resource; the fleet's exporter puts the fleet resource
	// back.
	p.fleetExp = &loggingExporter{Exporter: fleetExp, errs: errs, resource: fleetRes}
	shutdown := func() {
		_ = exp.Shutdown(ctx)
		_ = fleetExp.Shutdown(ctx)
	}
	readers := []sdkmetric.Option{
		sdkmetric.WithResource(res),
		sdkmetric.WithReader(sdkmetric.NewPeriodicReader(p.exporter, sdkmetric.WithInterval(p.interval))),
	}

	if cfg.PrometheusAddr != "" {
		// A scrape of one keeper shows both kinds: Prometheus labels every
		// series with the target it scraped anyway.
		reg := prometheus.NewRegistry()
		promReader, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithProducer(p.fleet))
		if err != nil {
			shutdown()
			return fmt.Errorf("prometheus exporter: %w", err)
		}
		readers = append(readers, sdkmetric.WithReader(promReader))
		if err := p.servePrometheus(cfg.PrometheusAddr, reg); err != nil {
			shutdown()
			return err
		}
	}

	p.mp = sdkmetric.NewMeterProvider(readers...)
	p.fleetMP = sdkmetric.NewMeterProvider(
		sdkmetric.WithReader(sdkmetric.NewPeriodicReader(p.fleetExp,
			sdkmetric.WithInterval(p.interval), sdkmetric.WithProducer(p.fleet))))
	p.meters = p.mp
	log.Info("metrics export started", "otlp_endpoint", target, "interval", p.interval,
		"service.instance.id", memberID, "prometheus", p.promAddr)
	return nil
}

// Meter returns a meter for the keeper's own series, once started. Pass it
// to NewInstruments.
func (p *Provider) Meter(name string) metric.Meter { return p.meters.Meter(name) }

// PublishFleet exports the fleet series: per shard from shards (the shards
// this keeper owns, at each collection), global from global (while this
// keeper leads). Either may be nil. It may be called once the provider is
// built; a disabled provider exports nothing.
func (p *Provider) PublishFleet(shards ShardSource, global GlobalSource) {
	p.fleet.add(&fleetProducer{scope: instrumentation.Scope{Name: ScopeName}, shards: shards, global: global})
}

// producerSet is handed to the readers when they are built, before the
// fleet's sources exist; PublishFleet adds them later.
type producerSet struct {
	mu sync.Mutex
	ps []sdkmetric.Producer
}

func (s *producerSet) add(p sdkmetric.Producer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ps = append(s.ps, p)
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

// MeterProvider is the provider of the keeper's own series, for libraries
// that take one (the daemon may also install it with otel.SetMeterProvider).
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
	var errs []error
	for _, x := range []struct {
		mp  *sdkmetric.MeterProvider
		exp *loggingExporter
	}{{p.mp, p.exporter}, {p.fleetMP, p.fleetExp}} {
		x.exp.lastErr.Store(nil)
		if err := x.mp.ForceFlush(ctx); err != nil {
			errs = append(errs, err)
		} else if e := x.exp.lastErr.Load(); e != nil {
			errs = append(errs, *e)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("flush metrics: %w", err)
	}
	return nil
}

// Stop exports what is left, then stops the exporters and the scrape
// endpoint, within ctx. Later calls return the first call's result.
func (p *Provider) Stop(ctx context.Context) error {
	return p.base.Halt(ctx, func(ctx context.Context) error {
		var errs []error
		for _, mp := range []*sdkmetric.MeterProvider{p.mp, p.fleetMP} {
			if mp == nil {
				continue
			}
			if err := mp.Shutdown(ctx); err != nil {
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

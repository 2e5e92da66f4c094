package main

import (
	"io"
	"log/slog"
	"os"

	"github.com/go-logr/logr"
	kotel "github.com/keeperhq/keeper/otel"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
	"golang.org/x/term"
)

// newFormatLogger logs at level on stderr, as text or JSON lines (format
// "text", "json", or "auto": text when stderr is a terminal, where a person
// reads it, JSON otherwise, where a log pipeline parses it).
func newFormatLogger(level, format string) *slog.Logger {
	log := slog.New(logHandler(os.Stderr, level, format, term.IsTerminal(int(os.Stderr.Fd()))))
	installLogger(log)
	return log
}

// installLogger makes log the one way out for the libraries' own messages
// too, so that every line keeper prints is in one format: go-redis's, the
// standard log package's (which the OpenTelemetry SDK's default error
// handler uses: a bare "context canceled" line broke a JSON log at
// shutdown), and the OpenTelemetry SDK's errors and internal logger.
func installLogger(log *slog.Logger) {
	redis.SetLogger(redisLogger{log.With("component", "redis-client")})
	slog.SetDefault(log)
	otelLog := log.With("component", "opentelemetry")
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { otelLog.Warn("opentelemetry error", "err", err) }))
	otel.SetLogger(logr.FromSlogHandler(otelLog.Handler()))
}

// logHandler writes to w in format; tty says whether w is a terminal.
func logHandler(w io.Writer, level, format string, tty bool) slog.Handler {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: l}
	if format == "text" || (format == "auto" && tty) {
		return slog.NewTextHandler(w, opts)
	}
	return slog.NewJSONHandler(w, opts)
}

// sayWhereMetricsAre tells, once at start, where this keeper's metrics can
// be read when no OTLP endpoint was configured: then none is pushed (no
// exporter retries a collector nobody asked for), and an operator running
// keeper by hand should not have to guess.
func (d *daemon) sayWhereMetricsAre() {
	m := d.cfg.Metrics
	if m.Disabled || kotel.SDKDisabled() || kotel.OTLPConfigured(m.Endpoint) {
		return // the provider logged where they go
	}
	if addr := d.metrics.PrometheusAddr(); addr != "" {
		d.log.Info("metrics: no OTLP endpoint configured, none pushed; read them at http://"+addr+"/metrics",
			"url", "http://"+addr+"/metrics")
		return
	}
	d.log.Info("metrics: no endpoint configured, so none are exported; set metrics.endpoint or OTEL_EXPORTER_OTLP_ENDPOINT to push them over OTLP, or metrics.prometheus_addr to serve them on /metrics")
}

package otel

import (
	"context"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
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

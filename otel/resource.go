package otel

import (
	"context"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"
)

// FleetResourceKeys are the resource attributes the fleet series keep from
// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES: the ones that name the
// fleet (which service, namespace, environment, cluster), the same on every
// keeper of it. Any other attribute could differ between two keepers, split
// a shard's series in two when it moves, and stays on the keeper's own
// series only. Two fleets exporting to one collector must differ in one of
// these (service.namespace, typically), or their queues' series collide.
var FleetResourceKeys = []attribute.Key{"service.name", "service.namespace",
	"deployment.environment.name", "deployment.environment", "k8s.cluster.name", "k8s.namespace.name"}

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

// fleetResource is the resource of the fleet series: the service name
// (default, then OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES as for the
// keeper's own series) and the other FleetResourceKeys the environment
// sets; nothing that could tell two keepers apart.
func fleetResource(ctx context.Context, serviceName string) (*resource.Resource, error) {
	if serviceName == "" {
		serviceName = ServiceNameDefault
	}
	env, err := resource.New(ctx, resource.WithFromEnv())
	if err != nil {
		return nil, fmt.Errorf("metrics resource: %w", err)
	}
	attrs := []attribute.KeyValue{attribute.String("service.name", serviceName)}
	for _, k := range FleetResourceKeys {
		if v, ok := env.Set().Value(k); ok {
			attrs = append(attrs, attribute.KeyValue{Key: k, Value: v})
		}
	}
	// NewSchemaless keeps the last of duplicate keys: the environment's
	// service.name wins over the default.
	return resource.NewSchemaless(attrs...), nil
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

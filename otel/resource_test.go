package otel

import (
	"context"
	"fmt"
	"testing"
)

// The fleet resource keeps what names the fleet and drops what names a
// keeper: the instance id, the pod, the SDK version.
func TestFleetResourceNamesNoKeeper(t *testing.T) {
	clearOTelEnv(t)
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=shared,k8s.pod.name=pod-1,service.namespace=eu,"+
		"deployment.environment.name=prod,k8s.namespace.name=queues,host.name=node-3")
	t.Setenv("OTEL_SERVICE_NAME", "keeper-eu")
	res, err := fleetResource(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, kv := range res.Attributes() {
		got[string(kv.Key)] = kv.Value.String()
	}
	want := map[string]string{"service.name": "keeper-eu", "service.namespace": "eu",
		"deployment.environment.name": "prod", "k8s.namespace.name": "queues"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("fleet resource %v, want %v", got, want)
	}
	clearOTelEnv(t)
	res, err = fleetResource(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Attributes(); len(got) != 1 || got[0].Value.AsString() != ServiceNameDefault {
		t.Errorf("fleet resource without environment: %v", got)
	}
}

func TestResourceKeepsMemberIDOverEnv(t *testing.T) {
	clearOTelEnv(t)
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=shared,k8s.pod.name=pod-1")
	t.Setenv("OTEL_SERVICE_NAME", "keeper-eu")
	res, err := newResource(context.Background(), "", "member-7")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, kv := range res.Attributes() {
		got[string(kv.Key)] = kv.Value.String()
	}
	for k, want := range map[string]string{"service.instance.id": "member-7", "service.name": "keeper-eu", "k8s.pod.name": "pod-1", "telemetry.sdk.language": "go"} {
		if got[k] != want {
			t.Errorf("%s=%q, want %q (resource %v)", k, got[k], want, got)
		}
	}
	if id := instanceIDFromEnv(); id != "shared" {
		t.Errorf("instanceIDFromEnv %q", id)
	}
}

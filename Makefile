# keeper — build, run and test. `make run` and `make test` work on a fresh
# machine that has Go and Debian's redis-server (see .ci/run).
GO          ?= go
BIN         := bin
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
OTELCOL_BUILDER := go.opentelemetry.io/collector/cmd/builder@v0.150.0
HELM_PKG     := helm.sh/helm/v3/cmd/helm@v3.22.0
PROMTOOL_PKG := github.com/prometheus/prometheus/cmd/promtool@v0.316.0
# promtool without the service-discovery plugins (cloud SDKs) it does not
# need to check and test rules: half the build.
PROMTOOL_TAGS := remove_all_sd
# `keeper version` reports these (cmd/keeper/version.go). VERSION is the tag
# when HEAD has one (v* only), else empty and the binary says (devel).
VERSION     ?= $(shell git describe --tags --match 'v*' --dirty 2>/dev/null)
REVISION    ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS     := -X main.version=$(VERSION) -X main.revision=$(REVISION)
# The container image: `make image IMAGE=registry/keeper:tag`. CONTAINER is
# the first of podman, buildah, docker found on PATH.
IMAGE       ?= localhost/keeper:$(or $(VERSION),dev)
CONTAINER   ?= $(firstword $(shell command -v podman buildah docker 2>/dev/null))
CA_BUNDLE   ?= /etc/ssl/certs/ca-certificates.crt
# Packages that coordinate goroutines or processes run under the race detector.
RACE_PKGS   := ./shard/... ./election/... ./tasks/... ./internal/...
MODULE      := github.com/keeperhq/keeper
# The tests find the built binaries through these.
TEST_ENV     = KEEPER_BIN=$(CURDIR)/$(BIN)/keeper OTELCOL_BIN=$(CURDIR)/$(BIN)/otelcol-keeper ETCD_BIN=$(CURDIR)/$(BIN)/etcd \
	HELM_BIN=$(CURDIR)/$(BIN)/helm PROMTOOL_BIN=$(CURDIR)/$(BIN)/promtool

.PHONY: all build run test test-unit test-race lint collector tools image manifests bench chaos clean

all: build

# Static (CGO off), so that the same binary runs on the image's empty base.
build:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/keeper ./cmd/keeper

# The daemon on embedded defaults: an embedded single-member etcd and a local
# redis-server started on a free loopback port, its metrics served for a
# Prometheus scrape on loopback (METRICS_ADDR) rather than pushed to a
# collector that is not there.
METRICS_ADDR ?= 127.0.0.1:9464
run: build
	$(BIN)/keeper run --metrics.prometheus_addr $(METRICS_ADDR)

# The whole suite: every package (end-to-end tests against real redis-server,
# etcd and an OpenTelemetry Collector included), the queue package again on a
# three-node Redis Cluster, then the coordination packages again under the
# race detector. The two fleet-scale packages run each alone, after the rest:
# chaos/ (a short chaos run with every fault kind once) and bench/ (20
# keepers and an etcd in one process over 100,000 shards) measure a fleet
# whose leases last 3 s, and sharing two cores with other packages' servers
# starves that etcd past its renewals (converge went from 5 s alone to over
# 5 minutes beside chaos/ on a 2-core CI machine).
# configs/ checks the chart with helm, the rules with promtool and builds the
# image with podman (when installed).
test: build collector tools $(BIN)/etcd
	$(TEST_ENV) $(GO) test -count=1 -timeout 30m $$($(GO) list ./... | grep -v -x -e '$(MODULE)/bench' -e '$(MODULE)/chaos')
	$(TEST_ENV) $(GO) test -count=1 -timeout 20m ./chaos/
	$(TEST_ENV) $(GO) test -count=1 -timeout 20m ./bench/
	KEEPER_TEST_REDIS_CLUSTER=3 $(GO) test -count=1 -timeout 10m ./queue/
	ETCD_BIN=$(CURDIR)/$(BIN)/etcd $(GO) test -count=1 -race -timeout 30m $(RACE_PKGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# The scripts fuzzed against their reference model (queue/fuzz_test.go,
# queue/model_test.go): `make fuzz` for FUZZTIME; `make test` for FUZZ_SHORT
# too (its seed corpus also runs in every plain `go test ./queue/`). A
# failing input is saved under queue/testdata/fuzz/FuzzScripts and replays in
# every later `go test`. Minimizing is capped at 10 s per input: an input can
# take seconds.
.PHONY: fuzz fuzz-short
FUZZTIME   ?= 5m
FUZZ_SHORT ?= 30s
FUZZ        = $(GO) test -run='^$$' -fuzz='^FuzzScripts$$' -fuzzminimizetime=10s -timeout 0
fuzz:
	$(FUZZ) -fuzztime=$(FUZZTIME) ./queue/
fuzz-short:
	$(FUZZ) -fuzztime=$(FUZZ_SHORT) ./queue/
test: fuzz-short

# A real OpenTelemetry Collector (otlp receiver, batch, debug and prometheus
# exporters) built from configs/otelcol/builder.yaml.
collector: $(BIN)/otelcol-keeper

$(BIN)/otelcol-keeper: configs/otelcol/builder.yaml
	$(GO) run $(OTELCOL_BUILDER) --config configs/otelcol/builder.yaml

# helm and promtool, each built once (a few minutes the first time, seconds
# after): the configs/ tests run the chart and the alerting rules through them.
tools: $(BIN)/helm $(BIN)/promtool

$(BIN)/helm:
	GOBIN=$(CURDIR)/$(BIN) $(GO) install $(HELM_PKG)

$(BIN)/promtool:
	GOBIN=$(CURDIR)/$(BIN) $(GO) install -tags $(PROMTOOL_TAGS) $(PROMTOOL_PKG)

# configs/kubernetes/ is the chart's output for the default values of each
# mode (and the TLS example); TestHelmChart keeps them equal.
define render-manifest
	{ printf '# Rendered from configs/helm/keeper by `make manifests`: helm template keeper configs/helm/keeper%s\n# Do not edit; change the chart (a test keeps the two equal).\n' '$(if $(2), $(2))'; \
	  $(BIN)/helm template keeper configs/helm/keeper $(2); } > configs/kubernetes/$(1)
endef

manifests: $(BIN)/helm
	$(call render-manifest,keeper-deployment.yaml,)
	$(call render-manifest,keeper-daemonset.yaml,--set mode=daemonset)
	$(call render-manifest,keeper-sidecar.yaml,--set mode=sidecar)
	$(call render-manifest,keeper-deployment-tls.yaml,-f configs/helm/keeper/examples/values-tls.yaml)
	$(call render-manifest,keeper-deployment-sentinel.yaml,-f configs/helm/keeper/examples/values-sentinel.yaml)

# The container image (Containerfile): the static bin/keeper, the host's CA
# bundle and a passwd entry for the unprivileged user, on an empty base.
image: build
	@test -n "$(CONTAINER)" || { echo "make image: needs podman, buildah or docker"; exit 1; }
	rm -rf $(BIN)/image && mkdir -p $(BIN)/image
	cp $(BIN)/keeper $(BIN)/image/keeper
	cp $(CA_BUNDLE) $(BIN)/image/ca-certificates.crt
	printf 'root:x:0:0:root:/root:/sbin/nologin\nkeeper:x:65532:65532:keeper:/nonexistent:/sbin/nologin\n' > $(BIN)/image/passwd
	printf 'root:x:0:\nkeeper:x:65532:\n' > $(BIN)/image/group
	$(CONTAINER) build -f Containerfile --build-arg VERSION=$(or $(VERSION),dev) \
		--build-arg REVISION=$(or $(REVISION),unknown) -t $(IMAGE) $(BIN)/image

bench: build $(BIN)/etcd
	ETCD_BIN=$(CURDIR)/$(BIN)/etcd $(BIN)/keeper bench all --json

# The etcd server of the module's etcd version, for the three-member etcd
# clusters of the chaos harness (`go install` of the server module fails on
# its replace directives, so it is built from internal/etcdserver/cmd/etcd).
$(BIN)/etcd: go.mod go.sum
	$(GO) build -o $(BIN)/etcd ./internal/etcdserver/cmd/etcd

# The long chaos run: every fault kind drawn from the seed for 20 minutes and
# at least 100 faults, keepers exporting to a real collector. The report goes
# to bin/chaos.json, the picture to bin/chaos.svg; progress to stderr when
# it is a terminal. Set
# CHAOS_SEED to replay a run.
CHAOS_SEED ?= 0
chaos: build collector $(BIN)/etcd
	ETCD_BIN=$(CURDIR)/$(BIN)/etcd OTELCOL_BIN=$(CURDIR)/$(BIN)/otelcol-keeper \
		$(BIN)/keeper chaos --duration 20m --min-faults 100 --otel --seed $(CHAOS_SEED) \
		--json --svg $(BIN)/chaos.svg > $(BIN)/chaos.json

clean:
	rm -rf $(BIN)

# keeper — build, run and test. `make run` and `make test` work on a fresh
# machine that has Go and Debian's redis-server (see .ci/run).
GO          ?= go
BIN         := bin
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
OTELCOL_BUILDER := go.opentelemetry.io/collector/cmd/builder@v0.150.0
# Packages that coordinate goroutines or processes run under the race detector.
RACE_PKGS   := ./shard/... ./election/... ./tasks/... ./internal/...

.PHONY: all build run test test-unit test-race lint collector bench chaos clean

all: build

build:
	$(GO) build -o $(BIN)/keeper ./cmd/keeper

# The daemon on embedded defaults: an embedded single-member etcd and a local
# redis-server started on a free loopback port.
run: build
	$(BIN)/keeper run

# The whole suite: every package (end-to-end tests against real redis-server,
# etcd and an OpenTelemetry Collector included; chaos/ runs a short chaos run
# with every fault kind once), the queue package again on a three-node Redis
# Cluster, then the coordination packages again under the race detector.
test: build collector $(BIN)/etcd
	KEEPER_BIN=$(CURDIR)/$(BIN)/keeper OTELCOL_BIN=$(CURDIR)/$(BIN)/otelcol-keeper ETCD_BIN=$(CURDIR)/$(BIN)/etcd \
		$(GO) test -count=1 -timeout 30m ./...
	KEEPER_TEST_REDIS_CLUSTER=3 $(GO) test -count=1 -timeout 10m ./queue/
	ETCD_BIN=$(CURDIR)/$(BIN)/etcd $(GO) test -count=1 -race -timeout 30m $(RACE_PKGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# A real OpenTelemetry Collector (otlp receiver, batch, debug and prometheus
# exporters) built from configs/otelcol/builder.yaml.
collector: $(BIN)/otelcol-keeper

$(BIN)/otelcol-keeper: configs/otelcol/builder.yaml
	$(GO) run $(OTELCOL_BUILDER) --config configs/otelcol/builder.yaml

bench: build
	$(BIN)/keeper bench all --json

# The etcd server of the module's etcd version, for the three-member etcd
# clusters of the chaos harness (`go install` of the server module fails on
# its replace directives, so it is built from internal/etcdserver/cmd/etcd).
$(BIN)/etcd: go.mod go.sum
	$(GO) build -o $(BIN)/etcd ./internal/etcdserver/cmd/etcd

# The long chaos run: every fault kind drawn from the seed for 20 minutes and
# at least 100 faults, keepers exporting to a real collector. The report goes
# to bin/chaos.json, the picture to bin/chaos.svg; progress to stderr. Set
# CHAOS_SEED to replay a run.
CHAOS_SEED ?= 0
chaos: build collector $(BIN)/etcd
	ETCD_BIN=$(CURDIR)/$(BIN)/etcd OTELCOL_BIN=$(CURDIR)/$(BIN)/otelcol-keeper \
		$(BIN)/keeper chaos --duration 20m --min-faults 100 --otel --seed $(CHAOS_SEED) \
		--json --svg $(BIN)/chaos.svg > $(BIN)/chaos.json

clean:
	rm -rf $(BIN)

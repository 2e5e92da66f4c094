# keeper — build, run and test. `make run` and `make test` work on a fresh
# machine that has Go and Debian's redis-server (see .ci/run).
GO          ?= go
BIN         := bin
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
OTELCOL_BUILDER := go.opentelemetry.io/collector/cmd/builder@v0.150.0
# Packages that coordinate goroutines or processes run under the race detector.
RACE_PKGS   := ./shard/... ./election/... ./tasks/... ./internal/...

.PHONY: all build run test test-unit test-race lint collector bench clean

all: build

build:
	$(GO) build -o $(BIN)/keeper ./cmd/keeper

# The daemon on embedded defaults: an embedded single-member etcd and a local
# redis-server started on a free loopback port.
run: build
	$(BIN)/keeper run

# The whole suite: every package (end-to-end tests against real redis-server,
# etcd and an OpenTelemetry Collector included), the queue package again on a
# three-node Redis Cluster, then the coordination packages again under the
# race detector.
test: build collector
	KEEPER_BIN=$(CURDIR)/$(BIN)/keeper OTELCOL_BIN=$(CURDIR)/$(BIN)/otelcol-keeper \
		$(GO) test -count=1 -timeout 30m ./...
	KEEPER_TEST_REDIS_CLUSTER=3 $(GO) test -count=1 -timeout 10m ./queue/
	$(GO) test -count=1 -race -timeout 30m $(RACE_PKGS)

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

bench: build
	$(BIN)/keeper bench all --json

clean:
	rm -rf $(BIN)

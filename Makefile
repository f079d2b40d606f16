# peerd build entry points. Everything here works on a fresh machine with Go;
# `make proto` additionally needs protoc (Debian protobuf-compiler).

GO        ?= go
BIN       ?= bin
PROTOC    ?= protoc
GOBIN     := $(shell $(GO) env GOPATH)/bin
PROTO_SRC := proto/istio/workload/workload.proto proto/istio/security/authorization.proto proto/peerd/federation/v1/federation.proto
RACE      ?= -race
HELM      ?= $(GOBIN)/helm
CHART     := deploy/peerd

.PHONY: build test test-unit test-istio lint chart proto run demo bench bench-e2e bench-peering tools fuzz-short

build:
	$(GO) build -o $(BIN)/peerd ./cmd/peerd

run: build
	$(BIN)/peerd serve --cluster-name cluster1 --config-dir examples/cluster1 \
		--plaintext-listen 127.0.0.1:15010 --listen "" --monitoring-listen 127.0.0.1:15014

# Three linked clusters on loopback (examples/multicluster): what a ztunnel in
# cluster1 sees, failover when cluster1's endpoints become unready, fail-back.
# Stops by itself and leaves nothing running (test/demo).
demo: build
	$(GO) run ./test/demo --peerd $(BIN)/peerd --examples examples/multicluster $(DEMO_FLAGS)

test: build
	$(GO) test $(RACE) -count=1 ./...
	$(MAKE) test-istio

# test/istio is its own module: it imports Istio's generated types and ambient
# index, which must stay out of peerd's own module.
test-istio:
	cd test/istio && GOLANG_PROTOBUF_REGISTRATION_CONFLICT=warn $(GO) test -count=1 ./...

# Figures and how to read them: docs/benchmarks.md.
bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x ./internal/xds/ ./internal/ambient/

# The black-box benchmark: the real binary and the go-control-plane baseline
# (test/bench) behind the same manifest-change path. A few minutes on 2 cores;
# other loads with e.g. BENCH_E2E_FLAGS="--pods 10000 --clients 1,1000".
bench-e2e: build
	$(GO) build -o $(BIN)/peerd-bench-baseline ./test/bench/cmd/baseline
	$(GO) run ./test/bench/cmd/loadgen --peerd $(BIN)/peerd --baseline $(BIN)/peerd-bench-baseline $(BENCH_E2E_FLAGS)

# Cross-cluster convergence of the real binary (test/bench/cmd/peering): 10
# linked peerds of 10,000 pods and 1,000 global Services each on loopback,
# then two-cluster meshes importing 1,000 and 10,000 Services. About 4 minutes
# on 2 cores; e.g. BENCH_PEERING_FLAGS="--clusters 4 --scale ''" for less.
bench-peering: build
	$(GO) run ./test/bench/cmd/peering --peerd $(BIN)/peerd $(BENCH_PEERING_FLAGS)

# A short run of every fuzz target in the module, one at a time (go test
# -fuzz takes one target per run); docs/fuzzing.md records the long runs.
FUZZTIME ?= 20s
fuzz-short:
	@set -e; $(GO) list -f '{{.ImportPath}} {{.Dir}}' ./... | while read -r pkg dir; do \
		for fn in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/^func //'); do \
			echo "== $$pkg $$fn"; \
			$(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); if [ -n "$$out" ]; then echo "gofmt: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GOBIN)/staticcheck ./...

# The Helm chart: lint (values.schema.json included) and render with each CI
# values set (deploy/peerd/ci: the defaults, and every value changed with
# three replicas), and the defaults with three replicas. test/deploy applies
# the rendered objects to a real API server.
chart:
	@set -e; for f in $(CHART)/ci/*.yaml; do \
		echo "== $$f"; \
		$(HELM) lint --strict $(CHART) --namespace istio-system --values $$f; \
		$(HELM) template peerd $(CHART) --namespace istio-system --values $$f >/dev/null; \
	done
	$(HELM) template peerd $(CHART) --namespace istio-system --values $(CHART)/ci/default-values.yaml --set replicas=3 >/dev/null

tools:
	$(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2
	$(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4
	$(GO) install helm.sh/helm/v4/cmd/helm@v4.3.2

proto:
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	$(PROTOC) -I proto --plugin=protoc-gen-go=$(GOBIN)/protoc-gen-go \
		--go_out=. --go_opt=module=github.com/peerd-mesh/peerd $(PROTO_SRC)

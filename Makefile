# pregate — the targets people expect. `make test` is what CI runs (see .ci/run).
GO      ?= go
PKGS    ?= ./...
BIN     ?= bin/pregate

.PHONY: build demo test test-short test-race bench bench-decode lint verify deps clean

build: deps
	$(GO) build -o $(BIN) ./cmd/pregate

# The main job for now: greedy decoding of the Switch fixture and of a synthetic Mixtral on the CPU.
demo: build
	$(BIN) generate --model testdata/switch-tiny --prompt-ids "335 150 293 221 369 468 288 197 334 123 40 241" --max-new-tokens 10 -o json
	$(BIN) synth --arch mixtral --preset mixtral-8x7b --layers 2 --d-model 256 --d-ff 512 --out /tmp/pregate-demo-mixtral
	$(BIN) generate --model /tmp/pregate-demo-mixtral --prompt-ids "1 95 138 5" --max-new-tokens 16 --ignore-eos

test: deps
	$(GO) test -count=1 $(PKGS)

test-short:
	$(GO) test -short -count=1 $(PKGS)

test-race:
	$(GO) test -race -short -count=1 $(PKGS)

# Go benchmarks (GEMM GFLOP/s table). Decode tokens/s: see docs/BENCHMARKS.md and scripts/bench-decode.sh.
bench:
	$(GO) test -run XXX -bench . -benchtime 2s ./compute/

# Decode tokens/s on synthetic checkpoints (docs/BENCHMARKS.md).
bench-decode: build
	./scripts/bench-decode.sh

lint:
	$(GO) vet $(PKGS)
	CGO_ENABLED=0 $(GO) vet $(PKGS)

verify: lint test
	CGO_ENABLED=0 $(GO) test -short -count=1 ./compute/ ./model/... ./routing/ ./engine/

# System packages the default (cgo + OpenBLAS) build needs.
deps:
	@./scripts/install-deps.sh

clean:
	rm -rf bin

# pregate — the targets people expect. `make test` is what CI runs (see .ci/run).
GO      ?= go
PKGS    ?= ./...
BIN     ?= bin/pregate
# Everything the targets write goes under bin/ (ignored): the binary, tools, the demos' data.
DATA    ?= bin/data
STATICCHECK_VERSION ?= v0.8.2

# Pinned code generators for `make proto` (protoc itself: Debian's protobuf-compiler 3.21).
PROTOC_GEN_GO_VERSION      ?= v1.36.12
PROTOC_GEN_GO_GRPC_VERSION ?= v1.6.2
TOOLS := $(CURDIR)/bin/tools

.PHONY: build build-cuda ptx gpu-bundle ci-cuda demo demo-generate proto test test-short test-race test-race-ci test-e2e fuzz bench bench-decode bench-bf16 lint verify deps clean docker helm-lint helm-test

build: deps
	$(GO) build -o $(BIN) ./cmd/pregate

# The CUDA build (issue 14; docs/BENCHMARKS.md "GPU"). scripts/cuda-toolchain.sh fetches nvcc, ptxas,
# cuda.h and the stub libcuda.so from Debian's non-free packages into ~/.cache/pregate-cuda once
# (~40 s) and prints the environment. The binary needs no CUDA library at build time beyond cuda.h,
# and loads the driver (libcuda.so.1) when a device is opened.
CUDA_ENV   = eval "$$(./scripts/cuda-toolchain.sh)" &&
CUDA_BIN  ?= bin/pregate-cuda
CUDA_TAGS ?= cuda
# The kernels: each cuda/kernels/NAME.cu becomes cuda/ptx/NAME_sm80.ptx and NAME_sm90.ptx
# (committed, embedded, loaded with cuModuleLoadData; cuda/kernels/README.md). PTX_DIR lets CI
# regenerate elsewhere and compare.
PTX_DIR   ?= cuda/ptx
PTX_ARCHS ?= 80 90
KERNELS   := $(wildcard cuda/kernels/*.cu)
# The GPU machine's bundle (scripts/gpu-check.sh runs it): stripped binaries built without OpenBLAS
# (purego: that machine has no libopenblas), so they need only glibc and the driver.
GPU_BUNDLE ?= bin/gpu
GPU_TAGS   ?= cuda purego

build-cuda: deps
	$(CUDA_ENV) $(GO) build -tags '$(CUDA_TAGS)' -o $(CUDA_BIN) ./cmd/pregate

ptx:
	@$(CUDA_ENV) set -e; mkdir -p $(PTX_DIR); for k in $(KERNELS); do n=$$(basename $$k .cu); \
		for a in $(PTX_ARCHS); do echo "nvcc $$k -> $(PTX_DIR)/$${n}_sm$$a.ptx"; \
			nvcc $$PREGATE_NVCC_FLAGS -ptx -O3 -arch=compute_$$a -o $(PTX_DIR)/$${n}_sm$$a.ptx $$k; done; done

gpu-bundle:
	$(CUDA_ENV) GPU_TAGS='$(GPU_TAGS)' ./scripts/gpu-bundle.sh $(GPU_BUNDLE)

# What .ci/run runs for the cuda path: vet, link, ptxas on every committed PTX, `make ptx` without a
# diff, the default build free of CUDA, gpu-check.sh's dry run.
ci-cuda:
	./scripts/ci-cuda.sh

# The main job: a whole cluster in one process (embedded etcd, coordinator, 3 stores, a worker in
# speculative mode) serving a synthesised model on http://127.0.0.1:8000 until Ctrl-C.
demo: build
	$(BIN) up --demo --tokenizer model/tokenizer/testdata/mistral --data-dir $(DATA)/up

# Greedy decoding of the Switch fixture and of a synthetic Mixtral (with Mistral's tokenizer: text in,
# text out) straight from local checkpoints.
demo-generate: build
	$(BIN) generate --model testdata/switch-tiny --prompt-ids "335 150 293 221 369 468 288 197 334 123 40 241" --max-new-tokens 10 -o json
	$(BIN) synth --arch mixtral --preset mixtral-8x7b --layers 2 --d-model 256 --d-ff 512 --tokenizer model/tokenizer/testdata/mistral --out $(DATA)/demo-mixtral
	$(BIN) generate --model $(DATA)/demo-mixtral --prompt "The capital of France is" --max-new-tokens 16 --ignore-eos

test: deps
	$(GO) test -count=1 $(PKGS)
	cd deploy/charttest && $(GO) test -count=1 ./...

test-short:
	$(GO) test -short -count=1 $(PKGS)

test-race:
	$(GO) test -race -short -count=1 $(PKGS)

# The race detector over the packages with concurrency of their own (what .ci/run runs).
RACE_PKGS ?= ./compute/ ./engine/ ./worker/... ./expertstore/... ./coordinator/
test-race-ci:
	$(GO) test -race -short -count=1 $(RACE_PKGS)

# The multi-host fault suite (e2e/): the built binary as separate processes, each daemon in its own
# network namespace on a bridge, faults from the host. Needs root; skips with one line without it.
# The results table is printed and written to bin/e2e-results.md (docs/RELIABILITY.md keeps one).
test-e2e: deps
	mkdir -p bin
	PREGATE_E2E_RESULTS=$(CURDIR)/bin/e2e-results.md $(GO) test -tags e2e -count=1 -v -timeout 20m ./e2e/

# Every fuzz target, a bounded run each (CI runs this): by default a number of inputs per target
# sized to a few seconds here (a count, not a duration: Go's fuzzer can fail a timed run with
# "context deadline exceeded" when a worker is slow to stop on a loaded machine); FUZZTIME=60s runs
# each for that long instead. A crasher lands in the package's testdata/fuzz/ and `make test` then
# runs it as a regression test.
FUZZTIME ?=
FUZZ_TARGETS := ./model:FuzzParseHeader:200000 ./model:FuzzParseConfig:200000 ./expertstore/blob:FuzzParse:300000 \
	./expertstore/blob:FuzzDecompress:300000 ./expertstore/blob:FuzzCompress:100000 \
	./expertstore/dataplane:FuzzReadRequest:200000 ./expertstore/dataplane:FuzzReadResponse:200000 \
	./expertstore/client:FuzzFetchData:50000 ./internal/membership:FuzzDecodeMeta:100000 \
	./internal/tlsutil:FuzzSealedRead:100000 \
	./worker/serve:FuzzParseCompletion:100000 ./model/tokenizer:FuzzParseTokenizerJSON:100000 \
	./model/tokenizer:FuzzParseSentencePiece:30000
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; rest=$${t#*:}; fn=$${rest%%:*}; n=$${rest#*:}; \
		budget=$${n}x; if [ -n "$(FUZZTIME)" ]; then budget=$(FUZZTIME); fi; \
		echo "fuzz $$fn in $$pkg ($$budget)"; \
		$(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $$budget $$pkg; \
	done

# Go benchmarks (GEMM GFLOP/s table). Decode tokens/s: see docs/BENCHMARKS.md and scripts/bench-decode.sh.
bench:
	$(GO) test -run XXX -bench . -benchtime 2s ./compute/

# Decode tokens/s on synthetic checkpoints (docs/BENCHMARKS.md).
bench-decode: build
	BENCH_DIR=$(DATA)/bench ./scripts/bench-decode.sh

# bf16 against f32 decode, each bf16 kernel forced in turn, interleaved (docs/BENCHMARKS.md, issue 16 part 4).
bench-bf16: build
	BENCH_DIR=$(DATA)/bench ./scripts/bench-bf16.sh

lint:
	@unformatted=$$(gofmt -l . | grep -v '^bin/'); if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted"; exit 1; fi
	$(GO) vet $(PKGS)
	CGO_ENABLED=0 $(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) $(PKGS)
	$(GO) vet -tags e2e ./e2e/
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) -tags e2e ./e2e/
	cd deploy/charttest && $(GO) vet ./...

verify: lint test
	CGO_ENABLED=0 $(GO) test -short -count=1 ./compute/ ./model/... ./routing/ ./engine/

# The Helm chart (helm/pregate), checked by the nested module deploy/charttest (Helm's Go SDK; its
# dependencies stay out of pregate's module): helm-lint runs `helm lint --strict` on every values
# file, helm-test every chart test (rendering, wiring against `pregate flags`, schema, lint).
helm-lint:
	cd deploy/charttest && $(GO) test -count=1 -run 'TestLint' .

helm-test:
	cd deploy/charttest && $(GO) test -count=1 ./...

# The image (deploy/Dockerfile); --build-arg TAGS=cuda for the CUDA build once it exists.
docker:
	docker build -f deploy/Dockerfile -t pregate:dev .

# System packages the default (cgo + OpenBLAS) build needs.
deps:
	@./scripts/install-deps.sh

clean:
	rm -rf bin

# Regenerate api/*/*.pb.go from the .proto files with the pinned generators (output is committed).
proto:
	@command -v protoc >/dev/null || { echo "protoc missing: apt-get install protobuf-compiler"; exit 1; }
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH=$(TOOLS):$$PATH protoc -I api --go_out=api --go_opt=paths=source_relative \
		--go-grpc_out=api --go-grpc_opt=paths=source_relative api/storepb/store.proto

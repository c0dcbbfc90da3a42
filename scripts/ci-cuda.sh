#!/usr/bin/env bash
# CI for the CUDA path without a GPU (issue 14 part 5; .ci/run calls it after `make lint`):
#   0. shellcheck on the CUDA scripts (installed from Debian when missing), gpu_check.py compiles
#   1. the toolchain (scripts/cuda-toolchain.sh: cuda.h, the stub libcuda.so, nvcc, ptxas; cached)
#   2. the default build is free of CUDA: `go list -deps` (no tags) of ./... has neither
#      gorgonia.org/cu nor package cuda
#   3. go vet -tags cuda ./..., staticcheck -tags cuda on the packages with cuda files
#   4. ptxas -arch=<the file's .target> on every committed cuda/ptx/*.ptx (a PTX error fails CI)
#   5. `make ptx` into a temporary directory reproduces cuda/ptx/ byte for byte
#   6. links bin/pregate-cuda and the cuda test binaries (scripts/gpu-bundle.sh into bin/gpu-ci)
#   7. the cuda package's tests under its fake driver (cuda/testdata: a libcuda.so.1 that runs no
#      kernel but checks every launch against the PTX's signatures)
#   8. bin/pregate-cuda --device cuda on this host (no driver): exit 1 with a clear message, no panic
#   9. scripts/gpu-check.sh's dry run (GPU_CHECK_DRY_RUN=1) on that bundle: every step on the CPU at
#      small shapes, so its parsing and table code runs here
#  10. the dry run's goldens, cluster and device steps with --device cuda:0 on the cuda package's fake
#      driver: the whole cuda path end to end, ids exact in every mode
# Each step prints its time.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
t_all=$(date +%s.%N)
step_start=$t_all
step() {
	local now
	now=$(date +%s.%N)
	if [ -n "${STEP:-}" ]; then
		printf 'ci-cuda: %-40s %6.1f s\n' "$STEP" "$(awk -v a="$now" -v b="$step_start" 'BEGIN{print a-b}')"
	fi
	STEP=$1
	step_start=$now
}
fail() {
	echo "ci-cuda: FAIL: $*" >&2
	exit 1
}

step "toolchain"
eval "$(./scripts/cuda-toolchain.sh)"

step "shellcheck"
if ! command -v shellcheck >/dev/null && [ "$(id -u)" = 0 ]; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null 2>&1 ||
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null; }
fi
shellcheck scripts/cuda-toolchain.sh scripts/ci-cuda.sh scripts/gpu-bundle.sh scripts/gpu-check.sh
python3 -m py_compile scripts/gpu_check.py && rm -rf scripts/__pycache__

step "default build free of CUDA"
deps=$(CGO_ENABLED=1 $GO list -deps ./... | grep -E '^gorgonia\.org/cu(/|$)|^github\.com/pregate/pregate/cuda(/|$)' || true)
[ -z "$deps" ] || fail "the default build (no tags) depends on: $deps"

step "go vet -tags cuda, staticcheck -tags cuda"
$GO vet -tags cuda ./...
# The packages with cuda-tagged files (make lint checks the rest without the tag).
$GO run "honnef.co/go/tools/cmd/staticcheck@${STATICCHECK_VERSION:-v0.8.2}" -tags cuda ./cuda/... ./cmd/pregate/

step "ptxas sm_80/sm_90"
shopt -s nullglob
ptx=(cuda/ptx/*.ptx)
kernels=(cuda/kernels/*.cu)
if [ ${#kernels[@]} -gt 0 ] && [ ${#ptx[@]} -eq 0 ]; then
	fail "cuda/kernels has ${#kernels[@]} kernels but cuda/ptx has no PTX: run make ptx and commit it"
fi
for f in "${ptx[@]}"; do
	target=$(awk '$1 == ".target" { sub(/,.*/, "", $2); print $2; exit }' "$f")
	[ -n "$target" ] || fail "$f has no .target line"
	ptxas -arch="$target" -o /dev/null "$f" || fail "ptxas -arch=$target $f"
done
echo "ci-cuda: ${#ptx[@]} PTX files assembled"

step "make ptx reproduces cuda/ptx"
if [ ${#kernels[@]} -gt 0 ]; then
	tmp=$(mktemp -d)
	make -s ptx PTX_DIR="$tmp" >/dev/null
	diff -r "$tmp" cuda/ptx >/dev/null || {
		diff -r "$tmp" cuda/ptx | head -20 >&2
		rm -rf "$tmp"
		fail "cuda/ptx differs from what make ptx generates from cuda/kernels: run make ptx and commit"
	}
	rm -rf "$tmp"
fi

step "link pregate-cuda + cuda test binaries"
$GO build -tags cuda -o bin/pregate-cuda ./cmd/pregate
GPU_TAGS=cuda ./scripts/gpu-bundle.sh bin/gpu-ci 2>/dev/null
grep -E '^(SIZE|TEST|FILE)' bin/gpu-ci/MANIFEST

step "go test -tags cuda ./cuda/ (fake driver)"
$GO test -tags cuda -count=1 ./cuda/

step "pregate-cuda --device cuda without a GPU"
if ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
	echo "ci-cuda: this host has libcuda.so.1: the no-driver check does not apply"
else
	# generate opens the GPU itself, a worker through worker.Config.OpenAccelerator.
	for args in "generate --model testdata/switch-tiny --prompt-ids 1 --device cuda" \
		"bench device --device cuda:0" \
		"worker --model m --etcd-endpoints 127.0.0.1:1 --no-gossip --http 127.0.0.1:0 --data-dir bin/ci-worker --device cuda"; do
		set +e
		# shellcheck disable=SC2086 # args is a word list
		out=$(bin/pregate-cuda $args 2>&1)
		rc=$?
		set -e
		echo "ci-cuda: pregate-cuda ${args%% *}: exit $rc: $out"
		[ "$rc" = 1 ] || fail "pregate-cuda $args without a driver exited $rc, want 1"
		! grep -qE 'panic|goroutine [0-9]|SIGSEGV' <<<"$out" || fail "pregate-cuda $args panicked without a driver"
		grep -q 'no CUDA driver' <<<"$out" || fail "the error does not say the CUDA driver is missing: $out"
	done
	rm -rf bin/ci-worker
	bin/pregate-cuda generate --model testdata/switch-tiny --prompt-ids "1 2 3" --max-new-tokens 2 --device cpu >/dev/null ||
		fail "pregate-cuda --device cpu fails on a host without a GPU"
fi

step "gpu-check.sh dry run"
dry=$(mktemp -d)
GPU_CHECK_DRY_RUN=1 GPU_BUNDLE=bin/gpu-ci OUT="$dry" ./scripts/gpu-check.sh
for f in results.md results.json; do
	[ -s "$dry/$f" ] || fail "the dry run wrote no $f"
done
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["dry_run"] and r["steps"], r' "$dry/results.json" ||
	fail "the dry run's results.json is not what gpu-check writes"
rm -rf "$dry"

step "gpu-check on the fake driver"
# The cuda package's fake libcuda.so.1 runs the kernels on the CPU: the goldens through generate
# and every mode of a one-process cluster then go through the whole cuda path (the worker's
# accelerator, the arena, pinned staging, the copy stream, the backend's kernels) on this host.
[ -f cuda/testdata/fakecuda.cc ] || fail "cuda/testdata/fakecuda.cc (the cuda package's fake driver) is missing"
fake=$(mktemp -d)
${CXX:-g++} -I"$PREGATE_CUDA_CACHE/usr/include" -std=c++20 -O1 -U_FORTIFY_SOURCE -shared -fPIC -ffp-contract=off \
	-o "$fake/libcuda.so.1" cuda/testdata/fakecuda.cc
LD_LIBRARY_PATH=$fake PREGATE_CUDA_FAKE=1 GPU_CHECK_DRY_RUN=1 GPU_CHECK_DEVICE=cuda:0 \
	GPU_CHECK_STEPS=unpack,goldens,cluster,device GPU_BUNDLE=bin/gpu-ci OUT="$fake/out" ./scripts/gpu-check.sh >/dev/null
grep -q '"device": "cuda:0 ' "$fake/out/results.json" || fail "the fake-driver run did not run on the cuda device"
rm -rf "$fake"

step ""
printf 'ci-cuda: %-40s %6.1f s\n' "total" "$(awk -v a="$(date +%s.%N)" -v b="$t_all" 'BEGIN{print a-b}')"

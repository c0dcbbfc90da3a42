#!/usr/bin/env bash
# The GPU check, one command on the GPU machine (an H200 with a CUDA 13 driver, python3 with torch,
# no Go, no network): run `make gpu-bundle` here first, send the tree with bin/gpu/, then
#
#   scripts/gpu-check.sh             # results in $OUT (default ./gpu-results): results.md, results.json
#
# Steps, each bounded (the whole under GPU_CHECK_BUDGET_S, default 450 s): the cuda test binaries
# (the backend conformance suite on the GPU), the golden fixtures through `pregate-cuda generate
# --device cuda`, a one-process cluster (`pregate-cuda up --device cuda`) in every mode, expert GEMV
# and pinned host-to-device copies against torch, and `pregate-cuda bench --device cuda` on
# Switch-Base-8 and a Mixtral-shaped model in the paper regime. scripts/gpu_check.py has the logic;
# docs/BENCHMARKS.md ("GPU") the goals.
#
# Environment: OUT, GPU_BUNDLE (default bin/gpu), GPU_CHECK_DEVICE (default cuda:0),
# GPU_CHECK_STEPS (comma-separated subset of machine,unpack,tests,goldens,cluster,device,modes),
# GPU_CHECK_DRY_RUN=1 (every step on --device cpu at small shapes: what CI runs, scripts/ci-cuda.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/gpu_check.py "$@"

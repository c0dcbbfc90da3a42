#!/usr/bin/env bash
# Builds what the GPU check machine runs (it has no Go): bin/pregate-cuda and the test binary of every
# package with cuda-tagged tests, stripped, packed into one archive that travels with the work tree.
#
#   scripts/gpu-bundle.sh [DIR]     (default bin/gpu; `make gpu-bundle` runs it with the toolchain env)
#
# DIR then holds:
#   pregate-gpu.tar.xz   pregate-cuda and tests/<pkg>.test (xz: Go binaries pack to about a quarter)
#   MANIFEST             what was built from which commit, the sizes, and "TEST <binary> <package dir>"
#                        lines: gpu-check.sh runs each test binary in its package's directory, where
#                        its testdata/ is
# The build tags are $GPU_TAGS (default "cuda purego": purego leaves OpenBLAS out, which that
# machine lacks), so the binaries need glibc and, once a device is opened, libcuda.so.1.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bin/gpu}
TAGS=${GPU_TAGS:-cuda purego}
GO=${GO:-go}

rm -rf "$OUT"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$OUT" "$stage/tests"
flags=(-tags "$TAGS" -ldflags '-s -w')

echo "gpu-bundle: pregate-cuda (tags: $TAGS)" >&2
$GO build "${flags[@]}" -o "$stage/pregate-cuda" ./cmd/pregate

# Packages with a test file that names the cuda tag in its build constraint.
mapfile -t pkgs < <(grep -rlE --include='*_test.go' '^//go:build(.*[ (&|])?cuda( |\)|$)' . | grep -v '^./bin/' |
	xargs -r -n1 dirname | sort -u)
manifest=()
for dir in "${pkgs[@]}"; do
	name=$(echo "${dir#./}" | tr / _).test
	echo "gpu-bundle: $dir -> tests/$name" >&2
	$GO test -c "${flags[@]}" -o "$stage/tests/$name" "$dir"
	manifest+=("TEST tests/$name ${dir#./}")
done

raw=$(du -sb "$stage" | cut -f1)
tar -C "$stage" -cf - . | xz -T0 -6 >"$OUT/pregate-gpu.tar.xz"
packed=$(stat -c %s "$OUT/pregate-gpu.tar.xz")
{
	echo "COMMIT $(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!bin' || echo ' (with uncommitted changes)')"
	echo "BUILT $(date -u +%Y-%m-%dT%H:%M:%SZ) $($GO version | cut -d' ' -f3-) tags=$TAGS"
	echo "GLIBC_NEEDED $(objdump -T "$stage/pregate-cuda" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1)"
	echo "SIZE raw=$raw packed=$packed"
	(cd "$stage" && find . -type f -printf 'FILE %P %s\n' | sort)
	printf '%s\n' "${manifest[@]}"
} >"$OUT/MANIFEST"
cat "$OUT/MANIFEST" >&2

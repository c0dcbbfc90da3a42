#!/usr/bin/env bash
# Decode tokens/s, bf16 against f32 weights and the bf16 kernels against each other (issue 16 part
# 4): the checkpoints of scripts/bench-decode.sh (plus mixtral-bench in bf16), 32 prompt tokens, 64
# new tokens, greedy, EOS ignored, 1 and 2 threads. The bf16 kernel is forced with
# PREGATE_BF16_KERNEL (go = widen into float32 then the f32 GEMV; avx2; avx512), so the AVX2 kernel
# is measured on AVX-512 machines too. Configurations are interleaved, ${ROUNDS:-5} rounds, in an
# order that rotates each round, so that drift of a shared VM hits them alike; the median and best
# of each are printed, with the ratio of medians to f32 at the same thread count.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/pregate}
DIR=${BENCH_DIR:-/tmp/pregate-bench}
ROUNDS=${ROUNDS:-5}
KERNELS=${KERNELS:-go avx2 avx512}
mkdir -p "$DIR"
synth() { # name arch preset dtype
	[ -f "$DIR/$1/config.json" ] || "$BIN" synth --arch "$2" --preset "$3" --dtype "$4" --out "$DIR/$1" 2>/dev/null
}
synth switch-base-8 switch switch-base-8 f32
synth switch-base-8-bf16 switch switch-base-8 bf16
synth mixtral-bench mixtral mixtral-bench f32
synth mixtral-bench-bf16 mixtral mixtral-bench bf16
PROMPT=$(seq 100 131 | tr '\n' ' ')
configs=()
for m in switch-base-8 mixtral-bench; do
	for t in 1 2; do
		configs+=("$m 0 f32 $t")
		i=0
		for k in $KERNELS; do configs+=("$m $((i += 1)) $k $t"); done
	done
done
raw=$(mktemp)
trap 'rm -f "$raw"' EXIT
for r in $(seq "$ROUNDS"); do
	n=${#configs[@]}
	for i in $(seq 0 $((n - 1))); do
		read -r m o k t <<<"${configs[$(((i + r) % n))]}"
		model=$m kernel=$k
		[ "$k" = f32 ] || model=$m-bf16
		[ "$k" = f32 ] && kernel=
		tps=$(PREGATE_BF16_KERNEL=$kernel "$BIN" generate --model "$DIR/$model" --prompt-ids "$PROMPT" \
			--max-new-tokens 64 --ignore-eos --threads "$t" -o json |
			sed -n 's/.*"decode_tokens_per_second":\([0-9.eE+-]*\).*/\1/p')
		echo "$m $t $o $k $tps" >>"$raw"
	done
done
printf '%-14s %-12s %-7s %8s %8s %8s\n' model weights threads median best vs_f32
sort -k1,1r -k2,2n -k3,3n -k5,5g "$raw" | awk '
	function flush() {
		if (cnt == 0) return
		med = (cnt % 2) ? v[(cnt + 1) / 2] : (v[cnt / 2] + v[cnt / 2 + 1]) / 2
		if (pk == "f32") f32[pm " " pt] = med
		line[++nl] = sprintf("%s|%s|%s|%.1f|%.1f", pm, pk, pt, med, v[cnt]); cnt = 0
	}
	{ if ($1 != pm || $4 != pk || $2 != pt) { flush(); pm = $1; pk = $4; pt = $2 } v[++cnt] = $5 }
	END {
		flush()
		for (i = 1; i <= nl; i++) {
			split(line[i], f, "|"); w = (f[2] == "f32") ? "f32" : "bf16-" f[2]
			printf "%-14s %-12s %-7s %8s %8s %7.2fx\n", f[1], w, f[3], f[4], f[5], f[4] / f32[f[1] " " f[3]]
		}
	}'

#!/usr/bin/env bash
# Decode tokens/s at batch 1 (32 prompt tokens, 64 new tokens, greedy, EOS ignored) on synthetic
# checkpoints with the shapes of docs/BENCHMARKS.md, with 1 and 2 threads. Checkpoints are written
# once under ${BENCH_DIR:-/tmp/pregate-bench} (switch-base-8 f32 is 2.5 GB, mixtral-bench 3.2 GB).
# Each configuration runs ${RUNS:-3} times; the best run is reported (first run warms the page cache).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/pregate}
DIR=${BENCH_DIR:-/tmp/pregate-bench}
RUNS=${RUNS:-3}
mkdir -p "$DIR"
synth() { # name arch preset dtype
	[ -f "$DIR/$1/config.json" ] || "$BIN" synth --arch "$2" --preset "$3" --dtype "$4" --out "$DIR/$1" 2>/dev/null
}
synth switch-base-8 switch switch-base-8 f32
synth mixtral-bench mixtral mixtral-bench f32
synth switch-base-8-bf16 switch switch-base-8 bf16
PROMPT=$(seq 100 131 | tr '\n' ' ')
printf '%-22s %-7s %s\n' model threads decode_tokens_per_second
for m in switch-base-8 mixtral-bench switch-base-8-bf16; do
	for t in 1 2; do
		best=0
		for _ in $(seq "$RUNS"); do
			tps=$("$BIN" generate --model "$DIR/$m" --prompt-ids "$PROMPT" --max-new-tokens 64 --ignore-eos --threads "$t" -o json |
				sed -n 's/.*"decode_tokens_per_second":\([0-9.eE+-]*\).*/\1/p')
			best=$(awk -v a="$best" -v b="$tps" 'BEGIN{print (b>a)?b:a}')
		done
		printf '%-22s %-7s %.1f\n' "$m" "$t" "$best"
	done
done

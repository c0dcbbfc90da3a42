#!/usr/bin/env bash
# Decode tokens/s of pregate against llama.cpp on the same weights, interleaved in rounds (issue 16
# part 5, docs/BENCHMARKS.md "The CPU engine against llama.cpp"): f32 and bf16, 1 and 2 threads,
# each pregate binary and llama.cpp once per round, plus the read bandwidth at 1 and 2 threads; the
# order rotates every round so that a shared machine's drift falls on all alike. One JSON line per
# run goes to $OUT; scripts/peer/rounds_summary.py makes the tables.
#
#   PREGATE="new=bin/pregate old=/tmp/pregate-main" MODELS=/tmp/h3 DRIVER=/tmp/greedy \
#     MEMBW=/tmp/membw ROUNDS=10 OUT=/tmp/rounds.jsonl scripts/peer/rounds.sh
#
# MODELS holds mb-f32/, mb-bf16/ (pregate synth) and mb-f32.gguf, mb-bf16.gguf
# (scripts/peer/synth_to_gguf.py); DRIVER is the libllama greedy driver described in BENCHMARKS.
# PREGATE_ENV and LLAMA_ENV are extra environment for each engine, e.g. for the AVX2 path:
# PREGATE_ENV=PREGATE_BF16_KERNEL=avx2 LLAMA_ENV=LD_LIBRARY_PATH=/path/to/llama.cpp/build-avx2/bin.
set -euo pipefail
: "${PREGATE:?name=path of each pregate binary, space-separated}" "${MODELS:?}" "${DRIVER:?}" "${MEMBW:?}"
ROUNDS=${ROUNDS:-10}
OUT=${OUT:-rounds.jsonl}
read -ra penv <<<"${PREGATE_ENV:-}"
read -ra lenv <<<"${LLAMA_ENV:-}"
PROMPT=$(seq 100 131 | tr '\n' ' ')
declare -A bin
engines=()
for nb in $PREGATE; do
	bin[${nb%%=*}]=${nb#*=}
	engines+=("${nb%%=*}")
done
engines+=(llama)
configs=()
for dt in f32 bf16; do for t in 1 2; do for e in "${engines[@]}"; do configs+=("$e $dt $t"); done; done; done
configs+=("membw - 1" "membw - 2")
n=${#configs[@]}
tps() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("stats", d)["decode_tokens_per_second"])'; }
for r in $(seq 0 $((ROUNDS - 1))); do
	for i in $(seq 0 $((n - 1))); do
		read -r e dt t <<<"${configs[$(((i + r * 3) % n))]}"
		load=$(cut -d' ' -f1 /proc/loadavg)
		case $e in
		llama) v=$(env "${lenv[@]}" "$DRIVER" "$MODELS/mb-$dt.gguf" "$t" 64 "$PROMPT" | tps) ;;
		membw) v=$("$MEMBW" "$t" 1024 10 | python3 -c 'import json,sys; print(json.load(sys.stdin)["read_gb_per_s_median"])') ;;
		*) v=$(env "${penv[@]}" "${bin[$e]}" generate --model "$MODELS/mb-$dt" --prompt-ids "$PROMPT" \
			--max-new-tokens 64 --ignore-eos --threads "$t" -o json | tps) ;;
		esac
		printf '{"round":%d,"engine":"%s","dtype":"%s","threads":%d,"value":%s,"load1":%s,"time":"%s"}\n' \
			"$r" "$e" "$dt" "$t" "$v" "$load" "$(date -u +%T)" >>"$OUT"
	done
done

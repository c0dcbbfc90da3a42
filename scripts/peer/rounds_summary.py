#!/usr/bin/env python3
"""Tables of scripts/peer/rounds.sh's output: each pregate binary against llama.cpp (medians [range]
of tok/s, the per-round ratio, rounds at or ahead, effective GB/s and the share of the read
bandwidth measured in the same rounds), and each pregate binary against the first.

    python3 scripts/peer/rounds_summary.py rounds.jsonl
"""
import collections
import json
import statistics as st
import sys

# Bytes a mixtral-bench decode step reads (docs/BENCHMARKS.md, "Bytes per token and the roofline").
GB_PER_TOKEN = {"f32": 0.919867392, "bf16": 0.460064768}


def main(path):
    rows = [json.loads(line) for line in open(path)]
    by, per_round = collections.defaultdict(list), collections.defaultdict(dict)
    for r in rows:
        k = (r["engine"], r["dtype"], r["threads"])
        by[k].append(r["value"])
        per_round[r["round"]][k] = r["value"]
    loads = [r["load1"] for r in rows]
    print("%d runs, %d rounds, %s to %s UTC, load average %.1f–%.1f" % (
        len(rows), len(per_round), rows[0]["time"], rows[-1]["time"], min(loads), max(loads)))

    def med(k):
        v = by[k]
        return st.median(v), min(v), max(v)

    bw = {t: med(("membw", "-", t)) for t in (1, 2)}
    print("read bandwidth: 1 thread %.1f [%.1f–%.1f] GB/s, 2 threads %.1f [%.1f–%.1f]" % (bw[1] + bw[2]))

    def ratios(a, b):
        return [x[a] / x[b] for x in per_round.values() if a in x and b in x]

    engines = [e for e in dict.fromkeys(r["engine"] for r in rows) if e not in ("llama", "membw")]
    for e in engines:
        print("\n%s against llama.cpp\n" % e)
        print("| dtype | threads | pregate tok/s | llama.cpp tok/s | pregate / llama.cpp, per round | rounds ≥ 1 "
              "| pregate GB/s | llama.cpp GB/s | pregate / roofline | llama.cpp / roofline |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for dt in ("f32", "bf16"):
            for t in (1, 2):
                p, l = med((e, dt, t)), med(("llama", dt, t))
                ra = ratios((e, dt, t), ("llama", dt, t))
                g = GB_PER_TOKEN[dt]
                print("| %s | %d | %.1f [%.1f–%.1f] | %.1f [%.1f–%.1f] | %.2f [%.2f–%.2f] | %d/%d | %.1f | %.1f | %.2f | %.2f |" % (
                    dt, t, *p, *l, st.median(ra), min(ra), max(ra), sum(x >= 1 for x in ra), len(ra),
                    p[0] * g, l[0] * g, p[0] * g / bw[t][0], l[0] * g / bw[t][0]))
    for e in engines[1:]:
        print("\n%s / %s per round" % (engines[0], e))
        for dt in ("f32", "bf16"):
            for t in (1, 2):
                ra = ratios((engines[0], dt, t), (e, dt, t))
                print("  %s, %d thread(s): %.2f [%.2f–%.2f]" % (dt, t, st.median(ra), min(ra), max(ra)))


if __name__ == "__main__":
    main(sys.argv[1])

#!/usr/bin/env python3
"""Turns the JSON lines of bench/compare.sh into a Markdown table of medians with
hraftd/etcd ratios, and a PNG chart of throughput and p99 per workload."""
import json
import statistics
import sys
from collections import defaultdict

src, out = sys.argv[1], sys.argv[2]
runs, rss = [], []
for line in open(src):
    line = line.strip()
    if not line:
        continue
    r = json.loads(line)
    (rss if "rss" in r else runs).append(r)


def name(r):
    if r["workload"] == "put":
        return "PUT"
    lvl = {"consistent": "consistent", "stale": "stale", "default": "default"}[r["level"]]
    return f"GET {lvl}"


cells = defaultdict(list)
for r in runs:
    if r["label"].startswith("rep"):
        cells[(name(r), r["connections"], r["target"])].append(r)

rows = sorted({(w, c) for (w, c, _) in cells}, key=lambda x: (x[0] != "PUT", x[0], x[1]))


def med(rs, field):
    return statistics.median(x[field] for x in rs) if rs else None


lines = [
    f"# hraftd vs etcd — {out.rsplit('/', 1)[-1]}",
    "",
    "Medians of interleaved A/B runs on one machine, same client (`hraftd-bench`),",
    "3-node clusters on 127.0.0.1, every write fsynced by both. Reproduce with `bench/compare.sh`.",
    "",
    "| workload | conns | hraftd ops/s | etcd ops/s | hraftd/etcd | hraftd p99 ms | etcd p99 ms | no-op ceiling ops/s | runs |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
]
chart = []
for w, c in rows:
    if w.startswith("GET") and (w, c, "noop") in cells and (w, c, "hraftd") not in cells:
        continue
    h, e = cells.get((w, c, "hraftd"), []), cells.get((w, c, "etcd"), [])
    n = cells.get(("GET default", c, "noop"), []) + cells.get(("GET consistent", c, "noop"), [])
    ht, et = med(h, "throughput"), med(e, "throughput")
    hp, ep = med(h, "p99_ms"), med(e, "p99_ms")
    nt = med(n, "throughput") if w == "GET stale" else None
    ratio = f"{ht / et:.2f}x" if ht and et else "-"
    fmt = lambda v, d=0: "-" if v is None else f"{v:,.{d}f}"
    lines.append(
        f"| {w} | {c} | {fmt(ht)} | {fmt(et)} | {ratio} | {fmt(hp, 2)} | {fmt(ep, 2)} | {fmt(nt)} | {len(h)}+{len(e)} |"
    )
    chart.append((f"{w}\n{c} conn", ht or 0, et or 0, hp or 0, ep or 0))

if rss:
    lines += ["", "## Memory (RSS)", "", "| process | keys | RSS MB |", "|---|---:|---:|"]
    lines += [f"| {r['rss']} | {r['keys']:,} | {r['mb']} |" for r in rss]

scale = [r for r in runs if r["label"].startswith("scale") and r["label"] != "scale-preload"]
if scale:
    lines += ["", "## 10k vs 1M keys (hraftd, 64 connections, medians)", "",
              "| workload | keys | ops/s | p99 ms |", "|---|---:|---:|---:|"]
    for w in ["PUT", "GET consistent"]:
        small = cells.get((w, 64, "hraftd"), [])
        big = [r for r in scale if name(r) == w]
        for keys, rs in [(10_000, small), (1_000_000, big)]:
            if rs:
                lines.append(f"| {w} | {keys:,} | {med(rs, 'throughput'):,.0f} | {med(rs, 'p99_ms'):.2f} |")

lines += ["", "## Every run", "", "| target | workload | conns | label | ops/s | p99 ms | errors | loadavg |",
          "|---|---|---:|---|---:|---:|---|---|"]
for r in runs:
    lines.append(
        f"| {r['target']} | {name(r)} | {r['connections']} | {r['label']} | {r['throughput']:,.0f} | "
        f"{r['p99_ms']:.2f} | {r['errors'] or ''} | {r['loadavg']} |"
    )
open(out + ".md", "w").write("\n".join(lines) + "\n")

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib missing: no chart", file=sys.stderr)
    sys.exit(0)
labels = [c[0] for c in chart]
x = range(len(chart))
fig, (a1, a2) = plt.subplots(2, 1, figsize=(12, 8))
wd = 0.38
a1.bar([i - wd / 2 for i in x], [c[1] for c in chart], wd, label="hraftd")
a1.bar([i + wd / 2 for i in x], [c[2] for c in chart], wd, label="etcd")
a1.set_ylabel("throughput (ops/s, median)")
a1.set_xticks(list(x), labels, fontsize=8)
a1.legend()
a2.bar([i - wd / 2 for i in x], [c[3] for c in chart], wd, label="hraftd")
a2.bar([i + wd / 2 for i in x], [c[4] for c in chart], wd, label="etcd")
a2.set_ylabel("p99 latency (ms, median)")
a2.set_xticks(list(x), labels, fontsize=8)
a2.legend()
fig.suptitle("hraftd vs etcd, 3-node clusters on one 2-core machine")
fig.tight_layout()
fig.savefig(out + ".png", dpi=110)

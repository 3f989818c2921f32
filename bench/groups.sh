#!/usr/bin/env bash
# Multi-Raft cost and scaling (issue 11), with hraftd-bench:
#   1. idle cost: 100 idle groups on 3 nodes, each node's CPU (share of one core) and RSS;
#   2. PUT throughput with 1 group against 3 groups whose leaders sit on 3 different nodes,
#      interleaved for $REPS repetitions, at 16 and 64 connections.
# Writes bench/results/<date>-groups.jsonl (every run) and prints medians.
#
#   bench/groups.sh                       # defaults: 3 reps, 10 s per run, release build
#   BIN=target/debug REPS=1 bench/groups.sh
#   PARTS=idle bench/groups.sh            # only the idle cost (PARTS: "idle put" by default)
set -euo pipefail
cd "$(dirname "$0")/.."

REPS="${REPS:-3}"
DURATION="${DURATION:-10s}"
IDLE="${IDLE:-100}"
PARTS="${PARTS:-idle put}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hraftd-target}"
OUT="${OUT:-bench/results/$(date +%Y-%m-%d)-groups}"
WORK="$(mktemp -d /tmp/hraftd-groups.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
say() { echo "== $* ($(date +%T))"; }

if [ -z "${BIN:-}" ]; then
  say "building hraftd (release)"
  cargo build --release --locked --bins
  BIN="$CARGO_TARGET_DIR/release"
fi

wait_http() { # url
  for _ in $(seq 1 200); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for $1" >&2; return 1
}

start_cluster() { # base port offset
  local base=$1
  EPS=()
  NODE_PIDS=()
  for i in 0 1 2; do
    join=()
    [ "$i" -gt 0 ] && join=(-join "127.0.0.1:${base}0")
    RUST_LOG=warn "$BIN/hraftd" -id "h$i" -haddr "127.0.0.1:${base}$i" -raddr "127.0.0.1:$((base + 10))$i" \
      "${join[@]}" "$WORK/$base-h$i" >"$WORK/$base-h$i.log" 2>&1 &
    PIDS+=($!)
    NODE_PIDS+=($!)
    EPS+=("127.0.0.1:${base}$i")
    wait_http "http://127.0.0.1:${base}$i/status"
  done
  for _ in $(seq 1 300); do
    voters=$(curl -fsS "http://127.0.0.1:${base}0/status" | python3 -c 'import json,sys; print(sum(m["voter"] for m in json.load(sys.stdin)["members"]))' 2>/dev/null || echo 0)
    [ "$voters" = 3 ] && return 0; sleep 0.1
  done
  echo "cluster on $base did not form" >&2; exit 1
}

mkdir -p bench/results
JSON="$OUT.jsonl"
: >"$JSON"

if [[ " $PARTS " == *" idle "* ]]; then
  say "idle cost: $IDLE groups on 3 nodes"
  start_cluster 4510
  eps=$(IFS=,; echo "${EPS[*]}")
  pids=$(IFS=,; echo "${NODE_PIDS[*]}")
  "$BIN/hraftd-bench" idle-groups --endpoints "$eps" --pids "$pids" --groups "$IDLE" --json "$JSON"
  for p in "${NODE_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
fi

if [[ " $PARTS " == *" put "* ]]; then
  say "PUT throughput: 1 group against 3 groups led by 3 nodes"
  start_cluster 4610
  eps=$(IFS=,; echo "${EPS[*]}")
  for rep in $(seq 1 "$REPS"); do
    for conns in 16 64; do
      for g in 1 3; do
        "$BIN/hraftd-bench" run --endpoints "$eps" --workload put --connections "$conns" \
          --groups "$g" --duration "$DURATION" --json "$JSON" --label "rep$rep"
      done
    done
  done
fi

python3 - "$JSON" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
idle = [r for r in runs if r.get("bench") == "idle-groups"]
for r in idle:
    for n in r["nodes"]:
        print(f"idle {r['groups']} groups: {n['endpoint']}: {n['cpu_percent']:.1f}% of a core, RSS {n['rss_mb']:.0f} MB")
put = [r for r in runs if r.get("workload") == "put"]
for conns in sorted({r["connections"] for r in put}):
    row = {}
    for g in (1, 3):
        xs = [r["throughput"] for r in put if r["connections"] == conns and r["groups"] == g]
        p99 = [r["p99_ms"] for r in put if r["connections"] == conns and r["groups"] == g]
        if xs:
            row[g] = (statistics.median(xs), statistics.median(p99), len(xs))
    if 1 in row and 3 in row:
        print(f"PUT conns={conns}: 1 group {row[1][0]:.0f} ops/s (p99 {row[1][1]:.1f} ms), "
              f"3 groups {row[3][0]:.0f} ops/s (p99 {row[3][1]:.1f} ms), "
              f"ratio {row[3][0] / row[1][0]:.2f}x, medians of {row[1][2]}")
PY
say "results in $JSON"

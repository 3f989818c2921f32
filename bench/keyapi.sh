#!/usr/bin/env bash
# The coordination key API's cost (issue 12), with hraftd-bench on a 3-node cluster:
#   1. compare-and-set against plain PUT: interleaved runs of `--workload cas` and
#      `--workload put` at 1, 16 and 64 connections, $REPS repetitions (bar: CAS within 10%);
#   2. range pages: $KEYS keys loaded (POST /key, 1000 pairs a request), then pages of
#      1,000 keys after a random key, at `consistent` and `stale` level, 1 connection
#      (bar: median under 5 ms with 1M keys);
#   3. watches (issue 13; PARTS=watch): `hraftd-bench watch` on the leader, $REPS times:
#      PUT at 16 connections alone, then with $WATCHERS idle watch streams open on the leader
#      and 2 watchers of every written key; the leader's RSS before and after opening them,
#      events per second and acknowledgement-to-delivery latency (bars: under 100 MB more
#      RSS, PUT within 10%).
# Writes bench/results/<date>-keyapi.jsonl (every run) and prints medians.
#
#   bench/keyapi.sh                          # defaults: 3 reps, 10 s per run, 1M keys, release
#   BIN=target/debug REPS=1 KEYS=100000 bench/keyapi.sh
#   PARTS=cas bench/keyapi.sh                # only part 1 (PARTS: "cas range" by default)
set -euo pipefail
cd "$(dirname "$0")/.."

REPS="${REPS:-3}"
DURATION="${DURATION:-10s}"
KEYS="${KEYS:-1000000}"
PARTS="${PARTS:-cas range}"
WATCHERS="${WATCHERS:-10000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hraftd-target}"
OUT="${OUT:-bench/results/$(date +%Y-%m-%d)-keyapi}"
WORK="$(mktemp -d /tmp/hraftd-keyapi.XXXXXX)"
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
  for _ in $(seq 1 600); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for $1; node logs:" >&2; tail -n 5 "$WORK"/*.log >&2; return 1
}

start_cluster() { # base port
  local base=$1
  EPS=()
  for i in 0 1 2; do
    join=()
    [ "$i" -gt 0 ] && join=(-join "127.0.0.1:${base}0")
    RUST_LOG=warn "$BIN/hraftd" -max-watchers 20000 -id "k$i" -haddr "127.0.0.1:${base}$i" -raddr "127.0.0.1:$((base + 10))$i" \
      "${join[@]}" "$WORK/$base-k$i" >"$WORK/$base-k$i.log" 2>&1 &
    PIDS+=($!)
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
start_cluster 4710
eps=$(IFS=,; echo "${EPS[*]}")

if [[ " $PARTS " == *" cas "* ]]; then
  say "compare-and-set against PUT"
  for rep in $(seq 1 "$REPS"); do
    for conns in 1 16 64; do
      for w in put cas; do
        "$BIN/hraftd-bench" run --endpoints "$eps" --workload "$w" --connections "$conns" \
          --duration "$DURATION" --json "$JSON" --label "rep$rep"
      done
    done
  done
fi

if [[ " $PARTS " == *" range "* ]]; then
  say "loading $KEYS keys"
  "$BIN/hraftd-bench" run --endpoints "$eps" --workload get --keys "$KEYS" --preload \
    --preload-batch 1000 --connections 4 --ops 1 --warmup 0s --duration 1s
  for p in 0 1 2; do
    rss=$(ps -o rss= -p "${PIDS[$p]}" | tr -d ' ')
    echo "{\"bench\":\"rss-after-load\",\"keys\":$KEYS,\"node\":$p,\"rss_mb\":$((rss / 1024))}" >>"$JSON"
  done
  say "range pages of 1000 keys"
  for rep in $(seq 1 "$REPS"); do
    for level in consistent stale; do
      "$BIN/hraftd-bench" run --endpoints "$eps" --workload range --page 1000 --level "$level" \
        --keys "$KEYS" --connections 1 --duration "$DURATION" --json "$JSON" --label "rep$rep"
    done
  done
fi

if [[ " $PARTS " == *" watch "* ]]; then
  say "watches: $WATCHERS idle watchers on the leader"
  for rep in $(seq 1 "$REPS"); do
    "$BIN/hraftd-bench" watch --endpoints "$eps" --node 0 --pid "${PIDS[0]}" \
      --watchers "$WATCHERS" --active 2 --connections 16 --duration "$DURATION" \
      --json "$JSON" --label "rep$rep"
  done
fi

python3 - "$JSON" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def med(xs): return statistics.median(xs) if xs else float("nan")
for conns in sorted({r["connections"] for r in runs if r.get("workload") in ("put", "cas")}):
    row = {}
    for w in ("put", "cas"):
        rs = [r for r in runs if r.get("workload") == w and r["connections"] == conns]
        row[w] = (med([r["throughput"] for r in rs]), med([r["p50_ms"] for r in rs]),
                  med([r["p99_ms"] for r in rs]), len(rs))
    print(f"conns={conns}: PUT {row['put'][0]:.0f} ops/s (p50 {row['put'][1]:.2f} ms, p99 {row['put'][2]:.2f} ms), "
          f"CAS {row['cas'][0]:.0f} ops/s (p50 {row['cas'][1]:.2f} ms, p99 {row['cas'][2]:.2f} ms), "
          f"CAS/PUT {row['cas'][0] / row['put'][0]:.2f}, medians of {row['put'][3]}")
for level in ("consistent", "stale"):
    rs = [r for r in runs if r.get("workload") == "range" and r["level"] == level]
    if rs:
        print(f"range {level}: {rs[0]['keys']} keys, pages of 1000: p50 {med([r['p50_ms'] for r in rs]):.2f} ms, "
              f"p99 {med([r['p99_ms'] for r in rs]):.2f} ms, {med([r['throughput'] for r in rs]):.0f} pages/s, medians of {len(rs)}")
ws = [r for r in runs if r.get("bench") == "watch"]
if ws:
    print(f"watch: {ws[0]['watchers']} idle watchers on the leader: PUT (16 conns) "
          f"{med([r['put_before'] for r in ws]):.0f} -> {med([r['put_during'] for r in ws]):.0f} ops/s, "
          f"ratio {med([r['put_ratio'] for r in ws]):.3f}; RSS +{med([r['rss_idle_mb'] - r['rss_before_mb'] for r in ws]):.1f} MB; "
          f"{med([r['events_per_s_per_watcher'] for r in ws]):.0f} events/s per active watcher; "
          f"ack-to-delivery p50 {med([r['ack_to_delivery_p50_ms'] for r in ws]):.2f} ms, "
          f"p99 {med([r['ack_to_delivery_p99_ms'] for r in ws]):.2f} ms; medians of {len(ws)}")
for r in runs:
    if r.get("bench") == "rss-after-load":
        print(f"node {r['node']}: RSS {r['rss_mb']} MB after loading {r['keys']} keys")
PY
say "results in $JSON"

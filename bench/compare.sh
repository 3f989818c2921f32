#!/usr/bin/env bash
# Side-by-side benchmark of hraftd and etcd on this machine, with the same client
# (hraftd-bench). Starts a 3-node hraftd cluster and a 3-member etcd cluster on 127.0.0.1
# (both fsync every write), runs the matrix below in interleaved A/B order for $REPS
# repetitions, records loadavg with every run, then writes bench/results/<date>.md (medians
# and hraftd/etcd ratios), <date>.jsonl (every run) and <date>.png (chart).
#
#   bench/compare.sh                      # defaults: 3 reps, 10 s per run
#   REPS=5 DURATION=20s bench/compare.sh
#   SCALE=1 bench/compare.sh              # also: RSS with 1M keys, 10k vs 1M keys
set -euo pipefail
cd "$(dirname "$0")/.."

REPS="${REPS:-3}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
SCALE="${SCALE:-0}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hraftd-target}"
STAMP="$(date +%Y-%m-%d)"
OUT="bench/results/$STAMP"
WORK="$(mktemp -d /tmp/hraftd-bench.XXXXXX)"
PIDS=()
H_PIDS=()
E_PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

say() { echo "== $* ($(date +%T))"; }

need_root() { [ "$(id -u)" -eq 0 ] && echo "" || echo "sudo"; }
if ! command -v etcd >/dev/null 2>&1; then
  say "installing etcd-server"
  $(need_root) apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $(need_root) apt-get install -y -qq etcd-server >/dev/null
fi
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  say "installing matplotlib (for the chart)"
  python3 -m pip install -q matplotlib
fi
bash .ci/setup

say "building hraftd (release)"
cargo build --release --locked --bins
BIN="$CARGO_TARGET_DIR/release"

wait_http() { # url
  for _ in $(seq 1 200); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for $1" >&2; return 1
}

say "starting 3 hraftd nodes"
H_EPS=()
for i in 0 1 2; do
  join=()
  [ "$i" -gt 0 ] && join=(-join 127.0.0.1:41000)
  RUST_LOG=warn "$BIN/hraftd" -id "h$i" -haddr "127.0.0.1:4100$i" -raddr "127.0.0.1:4200$i" \
    "${join[@]}" "$WORK/h$i" >"$WORK/h$i.log" 2>&1 &
  PIDS+=($!)
  H_PIDS[$i]=$!
  H_EPS+=("127.0.0.1:4100$i")
  wait_http "http://127.0.0.1:4100$i/status"
  [ "$i" -eq 0 ] && sleep 1
done
for _ in $(seq 1 300); do
  voters=$(curl -fsS http://127.0.0.1:41000/status | python3 -c 'import json,sys; print(sum(m["voter"] for m in json.load(sys.stdin)["members"]))' 2>/dev/null || echo 0)
  [ "$voters" = 3 ] && break; sleep 0.1
done
[ "$voters" = 3 ] || { echo "hraftd cluster did not form" >&2; exit 1; }

say "starting 3 etcd members"
CLUSTER="e0=http://127.0.0.1:43800,e1=http://127.0.0.1:43801,e2=http://127.0.0.1:43802"
E_EPS=()
for i in 0 1 2; do
  etcd --name "e$i" --data-dir "$WORK/e$i" \
    --listen-client-urls "http://127.0.0.1:4370$i" --advertise-client-urls "http://127.0.0.1:4370$i" \
    --listen-peer-urls "http://127.0.0.1:4380$i" --initial-advertise-peer-urls "http://127.0.0.1:4380$i" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new --log-level error >"$WORK/e$i.log" 2>&1 &
  PIDS+=($!)
  E_PIDS[$i]=$!
  E_EPS+=("127.0.0.1:4370$i")
done
for i in 0 1 2; do wait_http "http://127.0.0.1:4370$i/health"; done

say "starting the no-op server (read ceiling)"
"$BIN/hraftd-bench" noop-server --listen 127.0.0.1:18999 >"$WORK/noop.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -fsS -o /dev/null http://127.0.0.1:18999/x 2>/dev/null && break; sleep 0.1; done

mkdir -p bench/results
JSON="$OUT.jsonl"
: >"$JSON"
hj=$(IFS=,; echo "${H_EPS[*]}")
ej=$(IFS=,; echo "${E_EPS[*]}")

bench() { # target endpoints label args...
  local target=$1 eps=$2 label=$3; shift 3
  "$BIN/hraftd-bench" run --target "$target" --endpoints "$eps" --duration "$DURATION" \
    --warmup "$WARMUP" --json "$JSON" --label "$label" "$@"
}

say "preloading 10k keys into both"
bench hraftd "$hj" preload --workload get --preload --duration 1s --warmup 0s >/dev/null
bench etcd "$ej" preload --workload get --preload --duration 1s --warmup 0s >/dev/null
: >"$JSON"

MATRIX=(
  "--workload put --connections 1"
  "--workload put --connections 16"
  "--workload put --connections 64"
  "--workload get --level consistent --connections 1"
  "--workload get --level consistent --connections 64"
  "--workload get --level stale --connections 1"
  "--workload get --level stale --connections 64"
)
for rep in $(seq 1 "$REPS"); do
  say "repetition $rep of $REPS"
  for m in "${MATRIX[@]}"; do
    # Interleaved A/B: alternate who goes first.
    if [ $((rep % 2)) -eq 1 ]; then order="hraftd etcd"; else order="etcd hraftd"; fi
    for t in $order; do
      if [ "$t" = hraftd ]; then bench hraftd "$hj" "rep$rep" $m; else bench etcd "$ej" "rep$rep" $m; fi
    done
  done
  for c in 1 64; do bench noop 127.0.0.1:18999 "rep$rep" --workload get --connections "$c"; done
done

rss_mb() { ps -o rss= -p "$1" | awk '{printf "%.0f", $1/1024}'; }
{
  for i in 0 1 2; do echo "{\"rss\": \"hraftd h$i\", \"keys\": 10000, \"mb\": $(rss_mb "${H_PIDS[$i]}")}"; done
  for i in 0 1 2; do echo "{\"rss\": \"etcd e$i\", \"keys\": 10000, \"mb\": $(rss_mb "${E_PIDS[$i]}")}"; done
} >>"$JSON"

if [ "$SCALE" = 1 ]; then
  say "scale: loading 1M keys into hraftd"
  bench hraftd "$hj" scale-preload --workload get --preload --keys 1000000 --connections 64 --duration 1s --warmup 0s
  for i in 0 1 2; do echo "{\"rss\": \"hraftd h$i\", \"keys\": 1000000, \"mb\": $(rss_mb "${H_PIDS[$i]}")}"; done >>"$JSON"
  for rep in $(seq 1 "$REPS"); do
    bench hraftd "$hj" "scale$rep" --workload put --connections 64 --keys 1000000
    bench hraftd "$hj" "scale$rep" --workload get --level consistent --connections 64 --keys 1000000
  done
fi

say "report"
python3 bench/report.py "$JSON" "$OUT"
echo "wrote $OUT.md, $OUT.png and $JSON"

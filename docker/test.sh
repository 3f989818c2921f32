#!/usr/bin/env bash
# Builds the hraftd image from the real Dockerfile and tests the 3-node compose cluster.
#
#   docker/test.sh            # engine -> base images -> image -> compose test
#
# 1. A Docker engine: installs Debian's docker.io, docker-compose, debootstrap, curl and
#    python3 when missing, and starts dockerd when none answers (and stops it again at the
#    end). Where no engine can be started at all, it says so and exits 0 (skipped).
# 2. Base images: on a machine that can pull, the Dockerfile's FROM images come from the
#    registry as usual. Where none can be pulled (as here: no registry), it makes them
#    locally under exactly the tags the Dockerfile names: debian:bookworm-slim by
#    debootstrap, and rust:1-slim-bookworm from it plus this machine's Rust toolchain.
# 3. Builds the Dockerfile unchanged (`--network host` only so that apt and cargo inside
#    the build reach the package registries the way the host does).
# 4. docker/secrets.sh (CA, certificates, cluster key, users); docker-compose up: HTTPS
#    with users, a cluster key and -forward. Plain HTTP refused, 401/403 at the door; write
#    via node1 as the app user; read at every level from node2 and node3 as the reader
#    (forwarded to the leader); writes through followers; `X-Hraftd-Forward: 0` gives a
#    307 to https://node1:11000, followed with credentials; SIGKILL the leader's
#    container; a new leader serves the data and takes writes; the old leader restarts and
#    catches up; SIGTERM stops every container with exit code 0; docker-compose down -v.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK="${HRAFTD_DOCKER_WORK:-$HOME/.cache/hraftd-docker}"
PROJECT=hraftd-test
IMAGE=hraftd:latest
mkdir -p "$WORK"
export DOCKER_BUILDKIT=0 # the classic builder: no buildx plugin, no registry for frontends

say() { echo "docker/test.sh: $*"; }
fail() {
  say "FAIL: $*"
  exit 1
}

# --- 1. engine ---------------------------------------------------------------------------
need=()
command -v docker >/dev/null || need+=(docker.io)
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  need+=(docker-compose)
fi
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if docker compose version >/dev/null 2>&1; then
  compose() { docker compose -p "$PROJECT" -f docker-compose.yml "$@"; }
else
  compose() { docker-compose -p "$PROJECT" -f docker-compose.yml "$@"; }
fi

started_dockerd=""
cleanup() {
  if [ -n "${compose_up:-}" ]; then
    compose logs --no-color >"$WORK/compose.log" 2>&1 || true
    compose down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  [ -n "${made_secrets:-}" ] && rm -rf docker/secrets
  if [ -n "$started_dockerd" ]; then
    kill "$started_dockerd" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 1; done
  fi
}
trap cleanup EXIT

if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: $WORK/dockerd.log)"
  dockerd >"$WORK/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$started_dockerd" 2>/dev/null || break
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    say "SKIPPED: no Docker engine can be started on this machine; dockerd said:"
    tail -5 "$WORK/dockerd.log" | sed 's/^/    /'
    started_dockerd=""
    exit 0
  fi
fi

# --- 2. base images ----------------------------------------------------------------------
mapfile -t bases < <(awk 'toupper($1) == "FROM" { print $2 }' Dockerfile | sort -u)
debian_tag=debian:bookworm-slim
rust_tag=rust:1-slim-bookworm
for tag in "${bases[@]}"; do
  case "$tag" in
  "$debian_tag" | "$rust_tag") ;;
  *) fail "the Dockerfile names $tag; this script knows how to make only $debian_tag and $rust_tag" ;;
  esac
done

have() { docker image inspect "$1" >/dev/null 2>&1; }
pull() { timeout 60 docker pull -q "$1" >/dev/null 2>&1; }

make_debian() {
  local root="$WORK/rootfs-bookworm"
  say "no registry: making $debian_tag with debootstrap"
  rm -rf "$root"
  # Debian's mirror, or the one apt is set to use here (first active URIs/deb line).
  local mirror
  mirror=$(grep -h -E '^(URIs:|deb) ' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
    /etc/apt/sources.list.d/*.list 2>/dev/null | grep -o -E 'https?://[^ ]+/debian/?( |$)' |
    head -1 | tr -d ' ' || true)
  debootstrap --variant=minbase bookworm "$root" "${mirror:-http://deb.debian.org/debian}" \
    >"$WORK/debootstrap.log" 2>&1 || {
    tail -20 "$WORK/debootstrap.log"
    fail "debootstrap failed"
  }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import --change 'CMD ["bash"]' - "$debian_tag" >/dev/null
  rm -rf "$root"
}

make_rust() {
  local sysroot ctx="$WORK/rust-image"
  sysroot=$(rustc --print sysroot)
  say "no registry: making $rust_tag from $debian_tag and the toolchain in $sysroot"
  rm -rf "$ctx"
  mkdir -p "$ctx/rust"
  cp -a "$sysroot/bin" "$sysroot/lib" "$sysroot/libexec" "$ctx/rust/" 2>/dev/null ||
    cp -a "$sysroot/bin" "$sysroot/lib" "$ctx/rust/"
  # This machine's CA bundle: it may hold a local CA that HTTPS to the registries needs.
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/host-ca-bundle.crt"
  # What the official rust:*-slim images add to Debian: a C toolchain, CA certificates, and
  # cargo and rustc on PATH.
  cat >"$ctx/Dockerfile" <<EOF
FROM $debian_tag
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY host-ca-bundle.crt /usr/local/share/ca-certificates/host-ca-bundle.crt
RUN update-ca-certificates >/dev/null 2>&1; cp /usr/local/share/ca-certificates/host-ca-bundle.crt /etc/ssl/certs/ca-certificates.crt
COPY rust /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF
  docker build --network host -q -t "$rust_tag" "$ctx" >"$WORK/rust-image.log" 2>&1 || {
    tail -20 "$WORK/rust-image.log"
    fail "building the local $rust_tag failed"
  }
  rm -rf "$ctx"
}

if ! have "$debian_tag" && ! pull "$debian_tag"; then make_debian; fi
if ! have "$rust_tag" && ! pull "$rust_tag"; then make_rust; fi

# --- 3. the image ------------------------------------------------------------------------
say "building $IMAGE from the Dockerfile (log: $WORK/build.log)"
t0=$(date +%s)
docker build --network host -t "$IMAGE" . >"$WORK/build.log" 2>&1 || {
  tail -40 "$WORK/build.log"
  fail "docker build failed"
}
say "image built in $(($(date +%s) - t0)) s: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

# --- 4. the compose cluster --------------------------------------------------------------
# Host ports published by docker-compose.yml, and the service each belongs to.
declare -A port=([node1]=11001 [node2]=11002 [node3]=11003)
for p in "${port[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    fail "127.0.0.1:$p is already in use; docker-compose.yml publishes it"
  fi
done
S=docker/secrets
if [ -e "$S" ]; then
  fail "$S exists (a compose cluster's secrets); this test makes its own: move it away first"
fi
say "secrets for the compose cluster (docker/secrets.sh: CA, node certificates, cluster key, users)"
made_secrets=1
bash docker/secrets.sh "$IMAGE" >"$WORK/secrets.log" 2>&1 || {
  cat "$WORK/secrets.log"
  fail "docker/secrets.sh failed"
}
# Redirects name the leader by service name (https://node1:11000); map those to published
# ports. The certificates name the services and localhost, so TLS is verified throughout.
connect_to=()
for s in node1 node2 node3; do connect_to+=(--connect-to "$s:11000:127.0.0.1:${port[$s]}"); done
# as USER curl-args...: a request as that user (anonymous: as -), trusting the compose CA.
as() {
  local user=$1
  shift
  local creds=()
  # Credentials from the curlrc docker/secrets.sh wrote: never on a command line.
  [ "$user" != - ] && creds=(-K "$S/$user.curlrc")
  curl -sS --max-time 10 --cacert "$S/ca.crt" "${connect_to[@]}" "${creds[@]}" "$@"
}
url() { echo "https://localhost:${port[$1]}$2"; }

# wait_for DESCRIPTION SECONDS 'SHELL CONDITION': re-evaluates the condition until it holds.
wait_for() {
  local what=$1 secs=$2 cond=$3
  local deadline=$(($(date +%s) + secs))
  until eval "$cond" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${secs}s waiting for $what"
    sleep 0.5
  done
}
field() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }
status() { as reader "$(url "$1" /status)"; }
voters() { status "$1" | field 'sum(1 for m in d["members"] if m["voter"])'; }
leader_of() { status "$1" | field '(d.get("leader") or {}).get("id", "")'; }
# get NODE KEY LEVEL: the value as the reader (followers forward leader-only reads).
get() { as reader "$(url "$1" "/key/$2?level=$3")" | field "d.get('$2', '')"; }
# put NODE JSON: a write as the app user, which must be acknowledged with its log index.
put() {
  local out
  out=$(as app -XPOST "$(url "$1" /key)" -d "$2")
  echo "$out" | field 'd["index"]' >/dev/null 2>&1 || fail "write $2 via $1: $out"
}
code() { as "$@" -o /dev/null -w '%{http_code}'; }
expect() { # expect WHAT GOT WANT
  [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
  say "ok: $1"
}

say "docker-compose up"
compose_up=1
compose up -d --no-build >"$WORK/compose-up.log" 2>&1 || {
  cat "$WORK/compose-up.log"
  fail "docker-compose up failed"
}
wait_for "3 voters in node1's /status" 120 '[ "$(voters node1)" = 3 ]'
wait_for "node1 /readyz" 30 'as - -f "$(url node1 /readyz)"'
expect "leader is node1" "$(leader_of node1)" node1
expect "peers authenticate with the cluster key" "$(status node2 | field 'd["peer_auth"]')" cluster-key
expect "node2 advertises https to clients" \
  "$(status node2 | field '[m["http_addr"] for m in d["members"] if m["id"] == "node2"][0]')" https://node2:11000

# Security at the door: plain HTTP refused, no credentials 401, a reader may not write.
if curl -s --max-time 5 -o /dev/null "http://localhost:${port[node1]}/status"; then
  fail "plain HTTP to the HTTPS port was answered"
fi
say "ok: plain HTTP to the HTTPS port is refused"
expect "an anonymous read" "$(code - "$(url node1 /key/user1)")" 401
expect "a reader's write" "$(code reader -XPOST "$(url node1 /key)" -d '{"k":"v"}')" 403
expect "a wrong password" "$(curl -s --cacert "$S/ca.crt" -u app:wrong -o /dev/null -w '%{http_code}' \
  "$(url node1 /key/k)")" 401

put node1 '{"user1":"batman","user2":"robin"}'
for s in node2 node3; do
  wait_for "$s to apply the write" 30 '[ "$(get $s user1 stale)" = batman ]'
  for level in stale default consistent; do
    expect "$s $level read as the reader" "$(get $s user2 $level)" robin
  done
  # -forward: a follower takes the write and the leader applies it...
  put "$s" "{\"via\":\"$s\"}"
  expect "a write through $s, read on the leader" "$(get node1 via consistent)" "$s"
  # ... and X-Hraftd-Forward: 0 asks for the 307, to an https address.
  out=$(as app -H 'X-Hraftd-Forward: 0' -o /dev/null -w '%{http_code} %{redirect_url}' \
    -XPOST "$(url "$s" /key)" -d '{"k":"v"}')
  expect "$s redirects on request, keeping https" "$out" "307 https://node1:11000/key"
  # A client that follows the redirect itself, keeping its credentials.
  expect "$s redirect followed with credentials" \
    "$(as reader -L --location-trusted -H 'X-Hraftd-Forward: 0' \
      "$(url "$s" /key/user1?level=consistent)" | field 'd["user1"]')" batman
done
expect "/metrics needs the metrics permission" "$(code app "$(url node2 /metrics)")" 403
expect "/metrics as the admin" "$(code admin "$(url node2 /metrics)")" 200

say "SIGKILL the leader's container (node1)"
compose kill -s SIGKILL node1 >/dev/null 2>&1
new=""
find_new_leader() {
  for s in node2 node3; do
    l=$(leader_of "$s" 2>/dev/null) || continue
    if [ "$l" = node2 ] || [ "$l" = node3 ]; then
      new=$l
      return 0
    fi
  done
  return 1
}
t0=$(date +%s)
wait_for "a new leader among node2 and node3" 30 find_new_leader
find_new_leader
say "new leader: $new after $(($(date +%s) - t0)) s"
expect "consistent read from the new leader" "$(get "$new" user1 consistent)" batman
put "$new" '{"after":"failover"}'
expect "write after failover" "$(get "$new" after consistent)" failover

say "restart node1 on its volume"
compose start node1 >/dev/null 2>&1
wait_for "node1 to catch up" 60 '[ "$(get node1 after stale)" = failover ]'
wait_for "node1 /readyz after restart" 30 'as - -f "$(url node1 /readyz)"'

say "docker-compose stop (SIGTERM)"
compose stop -t 30 >/dev/null 2>&1
for s in node1 node2 node3; do
  code=$(docker inspect -f '{{.State.ExitCode}}' "$(compose ps -q "$s")")
  expect "$s exited on SIGTERM with code 0" "$code" 0
done
say "PASS"

#!/usr/bin/env bash
# Makes the secrets docker-compose.yml mounts, in docker/secrets/ (ignored by git):
#
#   ca.crt ca.key            a CA for the client port (ca.key stays on the host, never mounted)
#   node{1,2,3}.crt/.key     each node's HTTPS certificate: DNS:nodeN (the compose service
#                            name it advertises), DNS:localhost and IP:127.0.0.1
#   cluster.key              the peers' shared key (`hraftd gen-key`)
#   auth.json                users for -auth: admin (read, write, admin, metrics), app (read,
#                            write) and reader (read); anonymous clients may do nothing
#   {admin,app,reader}.curlrc     their credentials for `curl -K FILE` (never on a command line)
#   {admin,app,reader}.password   their random passwords
#   join.password            a copy of admin's, which node2 and node3 join with
#
#   docker/secrets.sh [IMAGE]      # IMAGE defaults to hraftd:latest (docker build -t hraftd .)
#
# The hraftd commands (gen-key, hash-password) run in the image, so only docker and openssl
# are needed on the host. Refuses to overwrite an existing docker/secrets/. Files the
# containers read are given to the image's user (uid 10001), mode 600, which needs root:
# run it as root, or as yourself with sudo available (or `sudo docker/secrets.sh`: the
# files meant for you are then yours, not root's).
set -euo pipefail
cd "$(dirname "$0")"
IMAGE="${1:-hraftd:latest}"
DIR=secrets
UID_IN_IMAGE=10001

say() { echo "docker/secrets.sh: $*"; }
command -v openssl >/dev/null || { say "openssl is needed (apt-get install -y openssl)" >&2; exit 1; }
docker image inspect "$IMAGE" >/dev/null 2>&1 ||
  { say "no image $IMAGE: build it first (docker build -t hraftd .)" >&2; exit 1; }
if [ -e "$DIR" ]; then
  say "$PWD/$DIR already exists; remove it to make new secrets" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"

umask 077
mkdir "$DIR"
# Private files the host user needs not read after this script: built in a scratch dir
# that goes away on any exit.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# openssl's progress goes to the scratch dir; on failure, its last lines are shown.
ossl() { openssl "$@" 2>>"$tmp/openssl.log" || { tail -5 "$tmp/openssl.log" >&2; exit 1; }; }
ec() { ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "$@"; }
ec -x509 -keyout "$DIR/ca.key" -out "$DIR/ca.crt" -days 365 -subj /CN=hraftd-compose-ca
for n in node1 node2 node3; do
  ec -keyout "$DIR/$n.key" -out "$tmp/$n.csr" -subj "/CN=$n"
  printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\n' "$n" >"$tmp/$n.ext"
  ossl x509 -req -in "$tmp/$n.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" \
    -CAcreateserial -CAserial "$tmp/ca.srl" -out "$DIR/$n.crt" -days 365 \
    -extfile "$tmp/$n.ext"
done
chmod 644 "$DIR"/*.crt
say "made a CA and certificates for node1, node2, node3"

# gen-key runs as the host user, into the private scratch dir (never a world-writable one).
me="$(id -u):$(id -g)"
docker run --rm --user "$me" -v "$tmp:/k" "$IMAGE" gen-key /k/cluster.key >/dev/null
cat "$tmp/cluster.key" >"$DIR/cluster.key"
say "made cluster.key"

hash_of() { docker run --rm -i "$IMAGE" hash-password <"$DIR/$1.password"; }
declare -A hashes
for u in admin app reader; do
  openssl rand -base64 24 | tr -d '/+=\n' >"$DIR/$u.password"
  # Assigned, not substituted into the heredoc, so that a failure stops the script.
  hashes[$u]=$(hash_of "$u")
  # For curl -K: the credentials never appear on a command line.
  printf 'user = "%s:%s"\n' "$u" "$(cat "$DIR/$u.password")" >"$DIR/$u.curlrc"
done
cat >"$DIR/auth.json" <<JSON
[
  {"username": "admin",  "password_hash": "${hashes[admin]}",  "perms": ["read", "write", "admin", "metrics"]},
  {"username": "app",    "password_hash": "${hashes[app]}",    "perms": ["read", "write"]},
  {"username": "reader", "password_hash": "${hashes[reader]}", "perms": ["read"]},
  {"username": "*", "perms": []}
]
JSON
cp "$DIR/admin.password" "$DIR/join.password"
say "made auth.json with users admin, app, reader (curl -K $PWD/$DIR/<user>.curlrc; passwords in <user>.password)"

# What the containers read belongs to the image's user; what is for you, to you (the user
# who ran sudo, when run with sudo).
$sudo chown "$UID_IN_IMAGE" "$DIR"/node*.key "$DIR/cluster.key" "$DIR/auth.json" "$DIR/join.password"
if [ -n "${SUDO_UID:-}" ]; then
  chown "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$DIR" "$DIR"/ca.* "$DIR"/*.crt "$DIR"/*.curlrc \
    "$DIR"/admin.password "$DIR"/app.password "$DIR"/reader.password
fi
chmod 755 "$DIR"
say "done: docker-compose up -d"

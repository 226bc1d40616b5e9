#!/usr/bin/env bash
# Overlay benchmark: a 40 MB binary onto a small base, median of 5 runs each,
#   1. daemonless push to a loopback docker-registry,
#   2. daemonless write of an OCI layout,
#   3. engine path (`--engine`: docker build + push through a private dockerd), if dockerd runs.
# Every run adds one byte to the binary, so no run reuses an earlier layer (no cache hits on
# either path). Prints a table for bench/RESULTS.md. Needs docker-registry, umoci, skopeo,
# and (for 3) docker.io, as root.
source "$(dirname "$0")/common.sh"
RUNS=5

port=$((20000 + RANDOM % 20000))
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
cat >"$WORK/registry.yml" <<YML
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $WORK/registry}
  maintenance: {uploadpurging: {enabled: false}}
http: {addr: "127.0.0.1:$port"}
YML
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
REG="127.0.0.1:$port"

# Base: a small OCI image with a pilot-agent stub, pushed with skopeo.
umoci init --layout "$WORK/base" >/dev/null
umoci new --image "$WORK/base:v1" >/dev/null
umoci unpack --rootless --image "$WORK/base:v1" "$WORK/bundle" >/dev/null
mkdir -p "$WORK/bundle/rootfs/usr/local/bin"
echo stub >"$WORK/bundle/rootfs/usr/local/bin/pilot-agent"
umoci repack --image "$WORK/base:v1" "$WORK/bundle" >/dev/null
umoci config --image "$WORK/base:v1" --os linux --architecture amd64 >/dev/null
skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$WORK/base:v1" "docker://$REG/base:v1"

BIN="$WORK/mosn"
make_binary "$BIN"
run_ms() { # prints the wall time of "$@" in ms
  local s e
  s=$(date +%s%N)
  "$@" >/dev/null 2>"$WORK/last.err" || { cat "$WORK/last.err" >&2; exit 1; }
  e=$(date +%s%N)
  echo $(((e - s) / 1000000))
}

bench() { # name, then the mosnctl overlay arguments (without --binary)
  local name="$1" i
  shift
  for i in $(seq $RUNS); do
    printf '%s' "$i" >>"$BIN"
    run_ms "$MOSNCTL" -q overlay --skip-glibc-check --binary "$BIN" "$@"
  done | median | { read -r ms; printf '| %s | %s ms |\n' "$name" "$ms"; echo "$ms" >"$WORK/$name.ms"; }
}

echo "| Overlay of a 40 MB binary ($(nproc) cores, median of $RUNS) | Time |"
echo "|---|---|"
bench daemonless-registry --base "$REG/base:v1" --tag "$REG/mosn:bench" --push
bench daemonless-oci --base "$REG/base:v1" --tag "$REG/mosn:bench" --output "oci:$WORK/out:bench"

D="$WORK/d"
mkdir -p "$D"
# dockerd leaves mounts under its dirs (netns, data root); undo them before WORK is removed.
stop_dockerd() {
  [ -e "$D/docker.pid" ] && kill "$(cat "$D/docker.pid")" 2>/dev/null
  for _ in $(seq 100); do [ -e "$D/docker.pid" ] || break; sleep 0.2; done
  grep -o " $D[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount 2>/dev/null || true
  rm -rf "$WORK"
}
trap 'stop_dockerd; kill $(jobs -p) 2>/dev/null || true' EXIT
dockerd --host "unix://$D/docker.sock" --data-root "$D/data" --exec-root "$D/exec" \
  --pidfile "$D/docker.pid" --iptables=false --bridge=none >"$D/log" 2>&1 &
for _ in $(seq 100); do curl -s --unix-socket "$D/docker.sock" http://localhost/_ping 2>/dev/null | grep -q OK && break; sleep 0.2; done
if curl -s --unix-socket "$D/docker.sock" http://localhost/_ping 2>/dev/null | grep -q OK; then
  export DOCKER_HOST="unix://$D/docker.sock"
  # Warm the engine's copy of the base, as a developer's machine would have it.
  "$MOSNCTL" -q overlay --engine --skip-glibc-check --binary "$BIN" --base "$REG/base:v1" --tag "$REG/warm:v1" >/dev/null
  bench engine-build-push --engine --base "$REG/base:v1" --tag "$REG/mosn:engine" --push
  echo "| speed-up, engine / daemonless registry | $(awk "BEGIN {printf \"%.1fx\", $(cat "$WORK/engine-build-push.ms") / $(cat "$WORK/daemonless-registry.ms")}") |"
else
  echo "| engine-build-push | dockerd did not start: $(tail -1 "$D/log") |"
fi

#!/usr/bin/env bash
# User-space instructions per proxied request, mosn against nginx, under callgrind: a figure
# that, unlike req/s on a shared 2-core box, does not move with the load from elsewhere. Both
# proxies run the same HTTP/1.1 keep-alive path as bench/proxy.sh (one worker, in front of the
# same nginx upstream); instrumentation is switched on only while wrk drives 8 connections, so
# start-up is not counted. Kernel time is not counted either: see bench/proxy.sh for CPU.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
for t in nginx wrk valgrind callgrind_control; do command -v $t >/dev/null || { echo "$t is needed: apt-get install nginx-light wrk valgrind" >&2; exit 1; }; done
DURATION="${DURATION:-8s}"
cargo build --release -q -p mosn --manifest-path "$ROOT/Cargo.toml"
MOSN="${CARGO_TARGET_DIR:-$ROOT/target}/release/mosn"
WORK="$(mktemp -d /tmp/mosn-instr.XXXXXX)"; chmod 755 "$WORK"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; nginx -c "$WORK/up.conf" -p "$WORK" -s stop 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

UP=18501; MOSN_PORT=18502; NGINX_PORT=18503; ADMIN=18505; MOSN_LEAN_PORT=18506; MOSN_LEAN_ADMIN=18507
MOSN_ISTIO_PORT=18508; MOSN_ISTIO_ADMIN=18509
NGINX_PROXY_EXTRA="daemon off; master_process off;"
source "$(dirname "$0")/proxy-common.sh"
nginx -c "$WORK/up.conf" -p "$WORK"

measure() { # name port command... -> "name requests instructions_per_request"
  local name=$1 port=$2; shift 2
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/$name.cg" "$@" >"$WORK/$name.log" 2>&1 &
  local pid=$!; pids+=($pid)
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.2; done
  curl -fsS "http://127.0.0.1:$port/" | grep -q "hello from upstream" || { echo "$name does not answer on $port" >&2; cat "$WORK/$name.log" >&2; exit 1; }
  callgrind_control --instr=on "$pid" >/dev/null 2>&1
  local out; out=$(wrk -t1 -c8 -d"$DURATION" "http://127.0.0.1:$port/")
  callgrind_control --instr=off "$pid" >/dev/null 2>&1
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  local n ir; n=$(awk '/requests in/ {print $1}' <<<"$out")
  ir=$(grep -h '^totals:' "$WORK/$name.cg"* | awk '{s += $2} END {print s}')
  echo "$name $n $((ir / n))"
}
read -r _ m_n m_i <<<"$(measure mosn $MOSN_PORT "$MOSN" -c "$WORK/mosn.json" --concurrency 1 -l warning)"
read -r _ l_n l_i <<<"$(measure mosn-lean $MOSN_LEAN_PORT "$MOSN" -c "$WORK/mosn-lean.json" --concurrency 1 -l warning)"
read -r _ i_n i_i <<<"$(measure mosn-istio $MOSN_ISTIO_PORT "$MOSN" -c "$WORK/mosn-istio.json" --concurrency 1 -l warning)"
read -r _ n_n n_i <<<"$(measure nginx $NGINX_PORT nginx -c "$WORK/px.conf" -p "$WORK")"
echo "user-space instructions per request under callgrind (wrk -t1 -c8 -d$DURATION, start-up excluded)"
printf '%-10s %10s %14s\n' proxy requests instr/request
printf '%-10s %10s %14s\n' mosn "$m_n" "$m_i" mosn-lean "$l_n" "$l_i" mosn-istio "$i_n" "$i_i" nginx "$n_n" "$n_i"
awk -v a="$m_i" -v l="$l_i" -v b="$n_i" 'BEGIN { printf "ratio mosn/nginx = %.2fx, mosn-lean/nginx = %.2fx (mosn-lean: the same headers as nginx, see proxy.sh)\n", a / b, l / b }'
echo "mosn-istio: an Istio sidecar's HTTP path (metadata exchange, stats, request ids, Zipkin at 1%); nginx has no counterpart"

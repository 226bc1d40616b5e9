#!/usr/bin/env bash
# What each proxy costs the processes around it. On this 2-core box wrk, the proxy and the
# upstream share two CPUs, so the rate is set by the CPU all three spend per request, and a
# proxy can make its peers dearer by when it wakes them (bench/RESULTS.md, session 13).
# ROUNDS alternating rounds (default 5) of `wrk -t1 -c$CONNS -d5s` through mosn-lean and
# nginx, each round measuring:
#  - CPU per request of the proxy, the upstream's worker and wrk (/proc/PID/stat);
#  - involuntary context switches per 100 requests of wrk and the upstream (they were
#    preempted: a peer woken on their CPU ran first);
#  - rescheduling (RES) and function-call (CAL) interrupts per 100 requests, the whole box
#    (/proc/interrupts): the IPIs that wake or preempt a task on the other CPU.
# Prints the medians of each and the ratios mosn-lean/nginx.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
for t in nginx wrk; do command -v $t >/dev/null || { echo "$t is needed: apt-get install nginx-light wrk" >&2; exit 1; }; done
ROUNDS="${ROUNDS:-5}"; CONNS="${CONNS:-32}"
cargo build --release -q -p mosn --manifest-path "$ROOT/Cargo.toml"
MOSN="${CARGO_TARGET_DIR:-$ROOT/target}/release/mosn"
WORK="$(mktemp -d /tmp/mosn-peers.XXXXXX)"; chmod 755 "$WORK"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for c in px up; do nginx -c "$WORK/$c.conf" -p "$WORK" -s stop 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

UP=18531; MOSN_PORT=18532; NGINX_PORT=18533; ADMIN=18535; MOSN_LEAN_PORT=18536; MOSN_LEAN_ADMIN=18537
source "$(dirname "$0")/proxy-common.sh"
nginx -c "$WORK/up.conf" -p "$WORK"
nginx -c "$WORK/px.conf" -p "$WORK"
"$MOSN" -c "$WORK/mosn-lean.json" --concurrency 1 -l warning >"$WORK/mosn.log" 2>&1 &
pids+=($!); MOSN_PID=$!
for port in $MOSN_LEAN_PORT $NGINX_PORT; do
  for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "http://127.0.0.1:$port/" | grep -q "hello from upstream" || { echo "nothing answers on $port" >&2; cat "$WORK/mosn.log" >&2; exit 1; }
done
worker() { pgrep -P "$(cat "$WORK/$1.pid")" | head -1; }
UPW=$(worker up); NGW=$(worker px)

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }                       # clock ticks
invol() { awk '/^nonvoluntary_ctxt_switches/ {print $2}' "/proc/$1/status"; }
ipis() { awk '$1 == "RES:" || $1 == "CAL:" { s = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i; printf "%s ", s }' /proc/interrupts; }

# round NAME PROXY_PID PORT -> one line: name req/s proxy_us up_us wrk_us wrk_invol up_invol res cal
round() {
  local name=$1 pid=$2 port=$3 p0 u0 ui0 r0 c0 out p1 u1 ui1 r1 c1
  p0=$(cpu "$pid"); u0=$(cpu "$UPW"); ui0=$(invol "$UPW"); read -r r0 c0 <<<"$(ipis)"
  out=$( { /usr/bin/time -f "TIME %U %S %c" wrk -t1 -c"$CONNS" -d5s "http://127.0.0.1:$port/"; } 2>&1 )
  p1=$(cpu "$pid"); u1=$(cpu "$UPW"); ui1=$(invol "$UPW"); read -r r1 c1 <<<"$(ipis)"
  awk -v nm="$name" -v p=$((p1 - p0)) -v u=$((u1 - u0)) -v ui=$((ui1 - ui0)) -v r=$((r1 - r0)) -v c=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" '
    /requests in/ { n = $1 } /^TIME/ { w = ($2 + $3) * hz; wi = $4 }
    END { us = 1e6 / hz; printf "%s %d %.2f %.2f %.2f %.1f %.1f %.1f %.1f\n", nm, n / 5, p * us / n, u * us / n, w * us / n, wi * 100 / n, ui * 100 / n, r * 100 / n, c * 100 / n }' <<<"$out"
}

: >"$WORK/rounds"
for r in $(seq "$ROUNDS"); do
  round mosn-lean "$MOSN_PID" "$MOSN_LEAN_PORT" | tee -a "$WORK/rounds"
  round nginx "$NGW" "$NGINX_PORT" | tee -a "$WORK/rounds"
done | awk 'BEGIN { print "path      req/s    µs/req: proxy upstream wrk   per 100 req: wrk preempted, upstream preempted, RES, CAL" }
            { printf "%-9s %6d   %12.2f %8.2f %5.2f   %14.1f %19.1f %5.1f %5.1f\n", $1, $2, $3, $4, $5, $6, $7, $8, $9 }'
median_of() { awk -v nm="$1" -v col="$2" '$1 == nm { print $col }' "$WORK/rounds" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
echo "medians over $ROUNDS rounds (wrk -t1 -c$CONNS -d5s each):"
for col in "2 req/s" "3 proxy_us_per_req" "4 upstream_us_per_req" "5 wrk_us_per_req" "6 wrk_preempted_per_100" "7 upstream_preempted_per_100" "8 RES_per_100" "9 CAL_per_100"; do
  set -- $col
  m=$(median_of mosn-lean "$1"); n=$(median_of nginx "$1")
  awk -v what="$2" -v m="$m" -v n="$n" 'BEGIN { printf "  %-28s mosn-lean %9s  nginx %9s  ratio %s\n", what, m, n, (n > 0 ? sprintf("%.2fx", m / n) : "-") }'
done

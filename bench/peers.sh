#!/usr/bin/env bash
# What each proxy costs the processes around it. On this 2-core box wrk, the proxy and the
# upstream share two CPUs, so the rate is set by the CPU all three spend per request, and a
# proxy can make its peers dearer by when it wakes them (bench/RESULTS.md, session 13).
# ROUNDS alternating rounds (default 5) of `wrk -t1 -c$CONNS -d5s` through mosn-lean and nginx,
# each in a session of its own, and through the same mosn-lean left in wrk's session
# ("shared": how bench/proxy.sh ran mosn until session 20, see own_session in
# proxy-common.sh), each round measuring:
#  - CPU per request of the proxy, the upstream's worker and wrk (/proc/PID/stat);
#  - involuntary context switches per 100 requests of wrk and the upstream (they were
#    preempted: a peer woken on their CPU ran first), and the upstream's sleeps per 100
#    requests (voluntary switches: how small its batches are);
#  - rescheduling (RES) and function-call (CAL) interrupts per 100 requests, the whole box
#    (/proc/interrupts): the IPIs that wake or preempt a task on the other CPU.
# Prints the medians of each and the ratios to nginx.
# Two switches take more of the box's scheduler out of the comparison (bench/RESULTS.md,
# session 18):
#  - PIN=1: every proxy on CPU 1, wrk and the upstream on CPU 0. The rounds then repeat
#    within 2-3%, where unpinned ones swing by 10-20%;
#  - UPSTREAM_POLICY=batch: the upstream runs as SCHED_BATCH, so its wake-ups never preempt
#    wrk. What is left is the proxies' own cost.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
for t in nginx wrk; do command -v $t >/dev/null || { echo "$t is needed: apt-get install nginx-light wrk" >&2; exit 1; }; done
ROUNDS="${ROUNDS:-5}"; CONNS="${CONNS:-32}"; PIN="${PIN:-0}"; UPSTREAM_POLICY="${UPSTREAM_POLICY:-normal}"
PX=(); CL=(); UPX=()
if [ "$PIN" = 1 ]; then
  [ "$(nproc)" -ge 2 ] || { echo "PIN=1 needs two CPUs; this machine has $(nproc)" >&2; exit 1; }
  PX=(taskset -c 1); CL=(taskset -c 0); UPX=(taskset -c 0)
fi
case "$UPSTREAM_POLICY" in
  normal) ;;
  batch) UPX+=(chrt -b 0) ;;
  *) echo "UPSTREAM_POLICY must be normal or batch, not '$UPSTREAM_POLICY'" >&2; exit 1 ;;
esac
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
SHARED_PORT=18538; SHARED_ADMIN=18539
source "$(dirname "$0")/proxy-common.sh"
mosn_bootstrap "$SHARED_PORT" "$SHARED_ADMIN" '"generate_request_id": false,' '"suppress_envoy_headers": true,' >"$WORK/mosn-shared.json"
"${UPX[@]}" nginx -c "$WORK/up.conf" -p "$WORK"
"${PX[@]}" nginx -c "$WORK/px.conf" -p "$WORK"
own_session "${PX[@]}" "$MOSN" -c "$WORK/mosn-lean.json" --concurrency 1 -l warning >"$WORK/mosn.log" 2>&1
pids+=($!); MOSN_PID=$!
"${PX[@]}" "$MOSN" -c "$WORK/mosn-shared.json" --concurrency 1 -l warning >>"$WORK/mosn.log" 2>&1 &
pids+=($!); SHARED_PID=$!
for port in $MOSN_LEAN_PORT $SHARED_PORT $NGINX_PORT; do
  for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "http://127.0.0.1:$port/" | grep -q "hello from upstream" || { echo "nothing answers on $port" >&2; cat "$WORK/mosn.log" >&2; exit 1; }
done
worker() { pgrep -P "$(cat "$WORK/$1.pid")" | head -1; }
UPW=$(worker up); NGW=$(worker px)

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }                       # clock ticks
invol() { awk '/^nonvoluntary_ctxt_switches/ {print $2}' "/proc/$1/status"; }
vol() { awk '/^voluntary_ctxt_switches/ {print $2}' "/proc/$1/status"; }
ipis() { awk '$1 == "RES:" || $1 == "CAL:" { s = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i; printf "%s ", s }' /proc/interrupts; }

# round NAME PROXY_PID PORT -> one line: name req/s proxy_us up_us wrk_us wrk_invol up_invol
# res cal up_sleeps
round() {
  local name=$1 pid=$2 port=$3 p0 u0 ui0 uv0 r0 c0 out p1 u1 ui1 uv1 r1 c1
  p0=$(cpu "$pid"); u0=$(cpu "$UPW"); ui0=$(invol "$UPW"); uv0=$(vol "$UPW"); read -r r0 c0 <<<"$(ipis)"
  out=$( { "${CL[@]}" /usr/bin/time -f "TIME %U %S %c" wrk -t1 -c"$CONNS" -d5s "http://127.0.0.1:$port/"; } 2>&1 )
  p1=$(cpu "$pid"); u1=$(cpu "$UPW"); ui1=$(invol "$UPW"); uv1=$(vol "$UPW"); read -r r1 c1 <<<"$(ipis)"
  awk -v nm="$name" -v p=$((p1 - p0)) -v u=$((u1 - u0)) -v ui=$((ui1 - ui0)) -v uv=$((uv1 - uv0)) -v r=$((r1 - r0)) -v c=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" '
    /requests in/ { n = $1 } /^TIME/ { w = ($2 + $3) * hz; wi = $4 }
    END { us = 1e6 / hz; printf "%s %d %.2f %.2f %.2f %.1f %.1f %.1f %.1f %.1f\n", nm, n / 5, p * us / n, u * us / n, w * us / n, wi * 100 / n, ui * 100 / n, r * 100 / n, c * 100 / n, uv * 100 / n }' <<<"$out"
}

: >"$WORK/rounds"
for r in $(seq "$ROUNDS"); do
  round mosn-lean "$MOSN_PID" "$MOSN_LEAN_PORT" | tee -a "$WORK/rounds"
  round shared "$SHARED_PID" "$SHARED_PORT" | tee -a "$WORK/rounds"
  round nginx "$NGW" "$NGINX_PORT" | tee -a "$WORK/rounds"
done | awk 'BEGIN { print "path      req/s    µs/req: proxy upstream wrk   per 100 req: wrk preempted, upstream preempted, RES, CAL, upstream sleeps" }
            { printf "%-9s %6d   %12.2f %8.2f %5.2f   %14.1f %19.1f %5.1f %5.1f %6.1f\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }'
median_of() { awk -v nm="$1" -v col="$2" '$1 == nm { print $col }' "$WORK/rounds" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
echo "medians over $ROUNDS rounds (wrk -t1 -c$CONNS -d5s each; PIN=$PIN, upstream $UPSTREAM_POLICY):"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%s", (b > 0 ? sprintf("%.2fx", a / b) : "-") }'; }
for col in "2 req/s" "3 proxy_us_per_req" "4 upstream_us_per_req" "5 wrk_us_per_req" "6 wrk_preempted_per_100" "7 upstream_preempted_per_100" "8 RES_per_100" "9 CAL_per_100" "10 upstream_sleeps_per_100"; do
  set -- $col
  m=$(median_of mosn-lean "$1"); s=$(median_of shared "$1"); n=$(median_of nginx "$1")
  printf "  %-28s mosn-lean %9s  shared %9s  nginx %9s  ratios %s %s\n" "$2" "$m" "$s" "$n" "$(ratio "$m" "$n")" "$(ratio "$s" "$n")"
done
# Paired: each round's rate against the nginx round beside it.
awk '$1 == "mosn-lean" { m[++i] = $2 } $1 == "shared" { s[++j] = $2 } $1 == "nginx" { n[++k] = $2 }
     END { printf "  paired req/s ratios to nginx: mosn-lean"; for (r = 1; r <= k; r++) printf " %.2f", m[r] / n[r]
           printf "; shared"; for (r = 1; r <= k; r++) printf " %.2f", s[r] / n[r]; print "" }' "$WORK/rounds"

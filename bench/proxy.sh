#!/usr/bin/env bash
# HTTP/1.1 reverse-proxy throughput, latency, CPU and memory: the upstream hit directly (the
# limit), then mosn, nginx and haproxy, each with one worker thread, in front of the same nginx
# upstream on loopback, in the same run. Envoy is the real peer but is not packaged for Debian;
# nginx and haproxy stand in.
#  - saturation: wrk, keep-alive, rps with p50/p99 and the proxy's CPU seconds per 10k requests;
#  - fixed rate: hey at 1,000 rps, the p99 each proxy adds over the direct path;
#  - RSS after the load.
# Targets (issue 5): throughput at least nginx's; at most 0.5 ms added to p99 at 1,000 rps;
# RSS at most 20 MB.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
for t in nginx haproxy wrk hey; do command -v $t >/dev/null || { echo "$t is needed: apt-get install nginx-light haproxy wrk hey" >&2; exit 1; }; done
DURATION="${DURATION:-10s}"; CONNS="${CONNS:-32}"
cargo build --release -q -p mosn --manifest-path "$ROOT/Cargo.toml"
MOSN="${CARGO_TARGET_DIR:-$ROOT/target}/release/mosn"
WORK="$(mktemp -d /tmp/mosn-bench.XXXXXX)"; chmod 755 "$WORK"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; nginx -c "$WORK/up.conf" -p "$WORK" -s stop 2>/dev/null || true; nginx -c "$WORK/px.conf" -p "$WORK" -s stop 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

UP=18401; MOSN_PORT=18402; NGINX_PORT=18403; HAPROXY_PORT=18404; ADMIN=18405
cat >"$WORK/up.conf" <<CONF
worker_processes 1; pid $WORK/up.pid; error_log $WORK/up-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "hello from upstream\n"; } } }
CONF
cat >"$WORK/px.conf" <<CONF
worker_processes 1; pid $WORK/px.pid; error_log $WORK/px-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NGINX_PORT;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat >"$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend b
backend b
  server up 127.0.0.1:$UP
CONF
cat >"$WORK/mosn.json" <<CONF
{ "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": $ADMIN } } },
  "static_resources": {
    "listeners": [{ "name": "bench", "address": { "socket_address": { "address": "127.0.0.1", "port_value": $MOSN_PORT } },
      "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.http_connection_manager",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
          "stat_prefix": "bench",
          "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"],
            "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "up" } }] }] },
          "http_filters": [{ "name": "envoy.filters.http.router",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }] } }] }] }],
    "clusters": [{ "name": "up", "type": "STATIC", "connect_timeout": "1s",
      "load_assignment": { "cluster_name": "up", "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address":
        { "socket_address": { "address": "127.0.0.1", "port_value": $UP } } } }] }] } }] } }
CONF

nginx -c "$WORK/up.conf" -p "$WORK"
nginx -c "$WORK/px.conf" -p "$WORK"
haproxy -f "$WORK/haproxy.cfg" >/dev/null 2>&1 & pids+=($!)
"$MOSN" -c "$WORK/mosn.json" --concurrency 1 -l warning >"$WORK/mosn.log" 2>&1 & pids+=($!); MOSN_PID=$!
sleep 1
for p in $MOSN_PORT $NGINX_PORT $HAPROXY_PORT; do
  curl -fsS "http://127.0.0.1:$p/" | grep -q "hello from upstream" || { echo "proxy on $p does not answer" >&2; cat "$WORK/mosn.log" >&2; exit 1; }
done

ms() { # wrk/hey latency token (us, ms, s) -> milliseconds
  awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms/, "", v) }
    else if (v ~ /s$/) { sub(/s/, "", v); v *= 1000 }; printf "%.3f", v }'
}
cpu_ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }
saturate() { # port pid -> "rps p50_ms p99_ms cpu_s_per_10k"
  local out c0 c1 rps p50 p99
  c0=$(cpu_ticks "$2")
  out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$1/")
  c1=$(cpu_ticks "$2")
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "errors from port $1:" >&2; echo "$out" >&2; fi
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(ms "$(awk '/ 50%/ {print $2}' <<<"$out")"); p99=$(ms "$(awk '/ 99%/ {print $2}' <<<"$out")")
  local total; total=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v r="$rps" -v a="$p50" -v b="$p99" -v t="$total" -v c=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%s %s %s %.3f\n", r, a, b, (t > 0 ? c / hz / t * 10000 : 0) }'
}
fixed_p99() { # port -> p99 ms at 1,000 rps (10 workers x 100 qps)
  hey -z 10s -c 10 -q 100 "http://127.0.0.1:$1/" | awk '/ 99%/ {v = $3; print v * 1000}'
}
rss_kb() { ps -o rss= -p "$1" | tr -d ' '; }
nginx_worker() { pgrep -P "$(cat "$WORK/px.pid")" | head -1; }
HAPROXY_PID=$(pgrep -x haproxy | tail -1); NGINX_PID=$(nginx_worker)

read -r d_rps d_p50 d_p99 _ <<<"$(saturate $UP "")"
read -r m_rps m_p50 m_p99 m_cpu <<<"$(saturate $MOSN_PORT "$MOSN_PID")"
read -r n_rps n_p50 n_p99 n_cpu <<<"$(saturate $NGINX_PORT "$NGINX_PID")"
read -r h_rps h_p50 h_p99 h_cpu <<<"$(saturate $HAPROXY_PORT "$HAPROXY_PID")"
m_rss=$(rss_kb "$MOSN_PID"); n_rss=$(rss_kb "$NGINX_PID"); h_rss=$(rss_kb "$HAPROXY_PID")
f_d=$(fixed_p99 $UP); f_m=$(fixed_p99 $MOSN_PORT); f_n=$(fixed_p99 $NGINX_PORT); f_h=$(fixed_p99 $HAPROXY_PORT)

echo "saturation: wrk -t1 -c$CONNS -d$DURATION; fixed rate: hey, 1,000 rps for 10 s"
printf '%-9s %10s %8s %8s %14s %10s %16s\n' path req/s p50_ms p99_ms cpu_s/10k_req rss_kb p99@1000rps_ms
printf '%-9s %10s %8s %8s %14s %10s %16s\n' direct "$d_rps" "$d_p50" "$d_p99" - - "$f_d"
printf '%-9s %10s %8s %8s %14s %10s %16s\n' mosn "$m_rps" "$m_p50" "$m_p99" "$m_cpu" "$m_rss" "$f_m"
printf '%-9s %10s %8s %8s %14s %10s %16s\n' nginx "$n_rps" "$n_p50" "$n_p99" "$n_cpu" "$n_rss" "$f_n"
printf '%-9s %10s %8s %8s %14s %10s %16s\n' haproxy "$h_rps" "$h_p50" "$h_p99" "$h_cpu" "$h_rss" "$f_h"
awk -v m="$m_rps" -v n="$n_rps" -v h="$h_rps" -v mr="$m_rss" -v nr="$n_rss" -v hr="$h_rss" \
    -v fd="$f_d" -v fm="$f_m" -v fn="$f_n" -v fh="$f_h" 'BEGIN {
  printf "ratio req/s mosn/nginx = %.2fx (target >= 1), mosn/haproxy = %.2fx\n", m/n, m/h;
  printf "added p99 at 1,000 rps: mosn %+.3f ms (target <= 0.5), nginx %+.3f ms, haproxy %+.3f ms\n", fm-fd, fn-fd, fh-fd;
  printf "ratio rss   mosn/nginx = %.2fx, mosn/haproxy = %.2fx; mosn rss %.1f MB (target <= 20)\n", mr/nr, mr/hr, mr/1024 }'

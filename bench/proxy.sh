#!/usr/bin/env bash
# HTTP/1.1 reverse-proxy throughput, latency and memory: mosn against nginx and haproxy, in the
# same run, each with one worker thread, in front of the same nginx upstream on loopback.
# Envoy is the real peer but is not packaged for Debian; nginx and haproxy stand in.
# Prints ratios (mosn / peer) for requests per second and for RSS after the load.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
for t in nginx haproxy wrk; do command -v $t >/dev/null || { echo "$t is needed: apt-get install nginx-light haproxy wrk" >&2; exit 1; }; done
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

run() { # prints "rps p99_ms"
  local out; out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$1/")
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "errors from port $1:" >&2; echo "$out" >&2; fi
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '/ 99%/ {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out")
  echo "$rps $p99"
}
rss_kb() { ps -o rss= -p "$1" | tr -d ' '; }
nginx_worker() { pgrep -P "$(cat "$WORK/px.pid")" | head -1; }

read -r m_rps m_p99 <<<"$(run $MOSN_PORT)"
read -r n_rps n_p99 <<<"$(run $NGINX_PORT)"
read -r h_rps h_p99 <<<"$(run $HAPROXY_PORT)"
m_rss=$(rss_kb "$MOSN_PID"); n_rss=$(rss_kb "$(nginx_worker)"); h_rss=$(rss_kb "$(pgrep -x haproxy | tail -1)")

printf '%-8s %10s %10s %10s\n' proxy req/s p99_ms rss_kb
printf '%-8s %10s %10s %10s\n' mosn "$m_rps" "$m_p99" "$m_rss" nginx "$n_rps" "$n_p99" "$n_rss" haproxy "$h_rps" "$h_p99" "$h_rss"
awk -v m="$m_rps" -v n="$n_rps" -v h="$h_rps" -v mr="$m_rss" -v nr="$n_rss" -v hr="$h_rss" 'BEGIN {
  printf "ratio req/s mosn/nginx = %.2fx, mosn/haproxy = %.2fx\n", m/n, m/h;
  printf "ratio rss   mosn/nginx = %.2fx, mosn/haproxy = %.2fx\n", mr/nr, mr/hr }'

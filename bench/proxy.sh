#!/usr/bin/env bash
# HTTP/1.1 reverse-proxy throughput, latency, CPU and memory: the upstream hit directly (the
# limit), then mosn, nginx and haproxy, each with one worker thread, in front of the same nginx
# upstream on loopback, in the same run. Envoy is the real peer but is not packaged for Debian;
# nginx and haproxy stand in.
#  - saturation: wrk, keep-alive, rps with p50/p99 and the proxy's CPU seconds per 10k requests;
#  - mosn twice: with Envoy's default headers (x-request-id, x-envoy-expected-rq-timeout-ms,
#    x-envoy-upstream-service-time), and as "mosn-lean" with those turned off by Envoy's own
#    options (generate_request_id, suppress_envoy_headers), which sends what nginx sends: the
#    same work as the peer. The upstream parses the extra headers too, so they cost the
#    whole box, not only the proxy;
#  - fixed rate: hey at 1,000 rps, the p99 each proxy adds over the direct path;
#  - a concurrency sweep (SWEEP, default "8 128" connections): mosn-lean, nginx and haproxy
#    at other loads than the target's 32 connections, ROUNDS alternating rounds of 5 s each,
#    medians and paired ratios to nginx;
#  - each of those ROUNDS times (default 5), the paths alternating, medians reported, and the
#    ratios to nginx also round by round (paired), which the box's slow phases disturb less;
#  - the same three at -c32 with every proxy pinned to CPU 1 and wrk and the upstream to
#    CPU 0 (PINNED=0 skips it), the quietest comparison this box allows;
#  - RSS after the load;
#  - RSS with a Bookinfo-sized config: a productpage sidecar's clusters (the 32 of a Bookinfo
#    sidecar's EDS dump in ../shared/vectors, plus the DestinationRule subsets), one listener
#    per HTTP port and per TCP service as Istio makes them, and the Bookinfo routes (by header,
#    by weight); mosn with --concurrency 2 as pilot-agent starts it, idle and after wrk has
#    driven every Bookinfo service (32 connections each) through the 9080 listener.
# Targets (issue 5): throughput at least nginx's; at most 0.5 ms added to p99 at 1,000 rps;
# RSS at most 20 MB.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
for t in nginx haproxy wrk hey; do command -v $t >/dev/null || { echo "$t is needed: apt-get install nginx-light haproxy wrk hey" >&2; exit 1; }; done
DURATION="${DURATION:-10s}"; CONNS="${CONNS:-32}"; ROUNDS="${ROUNDS:-5}"
cargo build --release -q -p mosn --manifest-path "$ROOT/Cargo.toml"
MOSN="${CARGO_TARGET_DIR:-$ROOT/target}/release/mosn"
WORK="$(mktemp -d /tmp/mosn-bench.XXXXXX)"; chmod 755 "$WORK"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; nginx -c "$WORK/up.conf" -p "$WORK" -s stop 2>/dev/null || true; nginx -c "$WORK/px.conf" -p "$WORK" -s stop 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

UP=18401; MOSN_PORT=18402; NGINX_PORT=18403; HAPROXY_PORT=18404; ADMIN=18405
MOSN_LEAN_PORT=18407; MOSN_LEAN_ADMIN=18408
source "$(dirname "$0")/proxy-common.sh"
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

nginx -c "$WORK/up.conf" -p "$WORK"
nginx -c "$WORK/px.conf" -p "$WORK"
# nginx daemonizes into a session of its own; the others get one too (own_session says why).
own_session haproxy -f "$WORK/haproxy.cfg" >/dev/null 2>&1; pids+=($!)
own_session "$MOSN" -c "$WORK/mosn.json" --concurrency 1 -l warning >"$WORK/mosn.log" 2>&1; pids+=($!); MOSN_PID=$!
own_session "$MOSN" -c "$WORK/mosn-lean.json" --concurrency 1 -l warning >>"$WORK/mosn.log" 2>&1; pids+=($!); LEAN_PID=$!
sleep 1
for p in $MOSN_PORT $MOSN_LEAN_PORT $NGINX_PORT $HAPROXY_PORT; do
  curl -fsS "http://127.0.0.1:$p/" | grep -q "hello from upstream" || { echo "proxy on $p does not answer" >&2; cat "$WORK/mosn.log" >&2; exit 1; }
done

ms() { # wrk/hey latency token (us, ms, s) -> milliseconds
  awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms/, "", v) }
    else if (v ~ /s$/) { sub(/s/, "", v); v *= 1000 }; printf "%.3f", v }'
}
cpu_ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }
saturate() { # port pid -> "rps p50_ms p99_ms cpu_s_per_10k"
  local out c0 c1 rps p50 p99
  local run=(wrk); [ -n "${WRK_CPU:-}" ] && run=(taskset -c "$WRK_CPU" wrk)
  c0=$(cpu_ticks "$2")
  out=$("${run[@]}" -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$1/")
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
rss_split() { awk '/^(Anonymous|Pss_File|FilePmdMapped):/ {printf "%s %s kB ", $1, $2}' "/proc/$1/smaps_rollup"; }
nginx_worker() { pgrep -P "$(cat "$WORK/px.pid")" | head -1; }
HAPROXY_PID=$(pgrep -x haproxy | tail -1); NGINX_PID=$(nginx_worker)

# ROUNDS rounds, the paths alternating within each, so a burst of load from elsewhere on the
# box hits every path alike; each figure is the median over the rounds.
median_col() { awk -v c="$2" 'NF {print $c}' <<<"$1" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
medians() { echo "$(median_col "$1" 1) $(median_col "$1" 2) $(median_col "$1" 3) $(median_col "$1" 4)"; }
s_d=""; s_m=""; s_l=""; s_n=""; s_h=""; p_d=""; p_m=""; p_l=""; p_n=""; p_h=""
for _ in $(seq "$ROUNDS"); do
  s_d+="$(saturate $UP "")"$'\n'
  s_m+="$(saturate $MOSN_PORT "$MOSN_PID")"$'\n'
  s_l+="$(saturate $MOSN_LEAN_PORT "$LEAN_PID")"$'\n'
  s_n+="$(saturate $NGINX_PORT "$NGINX_PID")"$'\n'
  s_h+="$(saturate $HAPROXY_PORT "$HAPROXY_PID")"$'\n'
done
m_rss=$(rss_kb "$MOSN_PID"); m_split=$(rss_split "$MOSN_PID"); l_rss=$(rss_kb "$LEAN_PID"); n_rss=$(rss_kb "$NGINX_PID"); h_rss=$(rss_kb "$HAPROXY_PID")
for _ in $(seq "$ROUNDS"); do
  p_d+="$(fixed_p99 $UP)"$'\n'; p_m+="$(fixed_p99 $MOSN_PORT)"$'\n'; p_l+="$(fixed_p99 $MOSN_LEAN_PORT)"$'\n'
  p_n+="$(fixed_p99 $NGINX_PORT)"$'\n'; p_h+="$(fixed_p99 $HAPROXY_PORT)"$'\n'
done
read -r d_rps d_p50 d_p99 _ <<<"$(medians "$s_d")"
read -r m_rps m_p50 m_p99 m_cpu <<<"$(medians "$s_m")"
read -r l_rps l_p50 l_p99 l_cpu <<<"$(medians "$s_l")"
read -r n_rps n_p50 n_p99 n_cpu <<<"$(medians "$s_n")"
read -r h_rps h_p50 h_p99 h_cpu <<<"$(medians "$s_h")"
f_d=$(median_col "$p_d" 1); f_m=$(median_col "$p_m" 1); f_l=$(median_col "$p_l" 1); f_n=$(median_col "$p_n" 1); f_h=$(median_col "$p_h" 1)
echo "req/s per round: direct $(awk 'NF {printf "%s ", $1}' <<<"$s_d")| mosn $(awk 'NF {printf "%s ", $1}' <<<"$s_m")| mosn-lean $(awk 'NF {printf "%s ", $1}' <<<"$s_l")| nginx $(awk 'NF {printf "%s ", $1}' <<<"$s_n")| haproxy $(awk 'NF {printf "%s ", $1}' <<<"$s_h")"

echo "saturation: wrk -t1 -c$CONNS -d$DURATION; fixed rate: hey, 1,000 rps for 10 s; medians of $ROUNDS rounds"
printf '%-9s %10s %8s %8s %14s %10s %16s\n' path req/s p50_ms p99_ms cpu_s/10k_req rss_kb p99@1000rps_ms
printf '%-9s %10s %8s %8s %14s %10s %16s\n' direct "$d_rps" "$d_p50" "$d_p99" - - "$f_d"
printf '%-9s %10s %8s %8s %14s %10s %16s\n' mosn "$m_rps" "$m_p50" "$m_p99" "$m_cpu" "$m_rss" "$f_m"
printf '%-9s %10s %8s %8s %14s %10s %16s\n' mosn-lean "$l_rps" "$l_p50" "$l_p99" "$l_cpu" "$l_rss" "$f_l"
printf '%-9s %10s %8s %8s %14s %10s %16s\n' nginx "$n_rps" "$n_p50" "$n_p99" "$n_cpu" "$n_rss" "$f_n"
printf '%-9s %10s %8s %8s %14s %10s %16s\n' haproxy "$h_rps" "$h_p50" "$h_p99" "$h_cpu" "$h_rss" "$f_h"
# Bookinfo-sized config: generated from the endpoints dump; Bookinfo's own services point at
# the local upstream, the rest keep the dump's (unreachable) addresses.
BI_ADMIN=18406; BI_PORTS=18420; bi_idle=-; bi_load=-
DUMP="$ROOT/../shared/vectors/istio-master/configdump/endpoints-configdump.json"
if [ -f "$DUMP" ] && command -v python3 >/dev/null; then
  bi_port=$(python3 - "$DUMP" $UP $BI_PORTS $BI_ADMIN "$WORK/bookinfo.json" <<'PY'
# Bookinfo-sized bootstrap for a productpage sidecar: argv = dump.json upstream_port first_port admin_port out.json; prints the 9080 port
import json, sys
dump, up, port, admin = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cla = json.load(open(dump))["configs"][0]["dynamic_endpoint_configs"]
LOCAL = {"details", "ratings", "reviews", "productpage"}
def sock(a, p): return {"socket_address": {"address": a, "port_value": p}}
def hpo(): return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "common_http_protocol_options": {"idle_timeout": "3600s"}, "use_downstream_protocol_config": {}}}
cb = {"thresholds": [{"max_connections": 4294967295, "max_pending_requests": 4294967295,
      "max_requests": 4294967295, "max_retries": 4294967295}]}
clusters, services = [], {}
def cluster(name, eps, **extra):
    c = {"name": name, "type": "STATIC", "connect_timeout": "10s", "lb_policy": "LEAST_REQUEST",
         "circuit_breakers": cb, "typed_extension_protocol_options": hpo(),
         "metadata": {"filter_metadata": {"istio": {"default_original_port": 9080, "services": [{"name": name}]}}},
         "load_assignment": {"cluster_name": name, "endpoints": [{"locality": {}, "lb_endpoints": eps}]}}
    c.update(extra); clusters.append(c)
for e in cla:
    ec = e["endpoint_config"]; name = ec["cluster_name"]
    eps = [ep for g in ec.get("endpoints", []) for ep in g.get("lb_endpoints", [])]
    if name.startswith("outbound|"):
        _, p, _, host = name.split("|"); short = host.split(".")[0]
        services.setdefault(int(p), []).append(host)
        if short in LOCAL:  # the Bookinfo services: served by the local upstream
            eps = [{"endpoint": {"address": sock("127.0.0.1", up)}, "metadata": ep.get("metadata", {})} for ep in eps]
            for v in (["v1", "v2", "v3"] if short in ("reviews", "ratings") else ["v1", "v2"] if short == "details" else ["v1"]):
                cluster(f"outbound|{p}|{v}|{host}", eps)
        cluster(name, eps)
    elif name == "inbound|9080||":
        cluster(name, [{"endpoint": {"address": sock("127.0.0.1", up)}}], upstream_bind_config={"source_address": {"address": "127.0.0.6", "port_value": 0}})
    elif name == "BlackHoleCluster":
        clusters.append({"name": name, "type": "STATIC", "connect_timeout": "10s"})
    else:  # PassthroughCluster, InboundPassthroughClusterIpv4
        c = {"name": name, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "10s", "circuit_breakers": cb}
        if "Inbound" in name: c["upstream_bind_config"] = {"source_address": {"address": "127.0.0.6", "port_value": 0}}
        clusters.append(c)
for n, p in (("prometheus_stats", admin), ("agent", 15020)):
    clusters.append({"name": n, "type": "STATIC", "connect_timeout": "0.250s",
        "load_assignment": {"cluster_name": n, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": sock("127.0.0.1", p)}}]}]}})
def vhost(host, p, n):
    short, ns = host.split(".")[0], host.split(".")[1]
    domains = [host, f"{host}:{p}", short, f"{short}:{p}", f"{short}.{ns}", f"{short}.{ns}:{p}",
               f"{short}.{ns}.svc", f"{short}.{ns}.svc:{p}", f"10.96.{n // 250}.{n % 250 + 1}", f"10.96.{n // 250}.{n % 250 + 1}:{p}"]
    dflt = {"cluster": f"outbound|{p}||{host}", "timeout": "0s",
            "retry_policy": {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                             "num_retries": 2, "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
                             "host_selection_retry_max_attempts": "5", "retriable_status_codes": [503]},
            "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}}
    routes = []
    if short == "reviews":  # reviews-test-v2 and reviews-50-v3
        routes.append({"name": "jason", "match": {"prefix": "/", "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}]},
                       "route": dict(dflt, cluster=f"outbound|{p}|v2|{host}")})
        routes.append({"name": "split", "match": {"prefix": "/"}, "route": dict({k: v for k, v in dflt.items() if k != "cluster"},
                       weighted_clusters={"clusters": [{"name": f"outbound|{p}|v1|{host}", "weight": 50},
                                                       {"name": f"outbound|{p}|v3|{host}", "weight": 50}]})})
    else:
        routes.append({"name": "default", "match": {"prefix": "/"}, "route": dflt,
                       "decorator": {"operation": f"{host}:{p}/*"}})
    return {"name": f"{host}:{p}", "domains": domains, "routes": routes, "include_request_attempt_count": True}
def hcm(prefix, rc, inbound=False):
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": prefix, "route_config": rc, "use_remote_address": False, "normalize_path": True,
        "stream_idle_timeout": "0s" if inbound else "300s",
        "http_filters": [
            {"name": "envoy.filters.http.cors", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
            {"name": "envoy.filters.http.fault", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}
def tcp(prefix, c):
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": prefix, "cluster": c}}
listeners, n, next_port = [], 0, port
HTTP_PORTS = {9080, 80, 8000, 15014, 9090, 3000, 15021, 12800, 9200, 9402, 9153}
for p, hosts in sorted(services.items()):
    if p in HTTP_PORTS:
        vhs = []
        for h in hosts:
            n += 1; vhs.append(vhost(h, p, n))
        vhs.append({"name": "allow_any", "domains": ["*"], "routes": [{"name": "allow_any", "match": {"prefix": "/"},
                    "route": {"cluster": "PassthroughCluster", "timeout": "0s"}}]})
        rc = {"name": str(p), "virtual_hosts": vhs, "validate_clusters": False}
        if p == 9080: port9080 = next_port
        listeners.append({"name": f"0.0.0.0_{p}", "address": sock("127.0.0.1", next_port), 
                          "filter_chains": [{"filters": [hcm(f"outbound_0.0.0.0_{p}", rc)]}],
                          "traffic_direction": "OUTBOUND", "continue_on_listener_filters_timeout": True})
        next_port += 1
    else:  # Istio: one TCP listener per service IP:port
        for h in hosts:
            n += 1
            listeners.append({"name": f"10.96.0.{n}_{p}", "address": sock("127.0.0.1", next_port),
                              "filter_chains": [{"filters": [tcp(f"outbound|{p}||{h}", f"outbound|{p}||{h}")]}],
                              "traffic_direction": "OUTBOUND"})
            next_port += 1
listeners.append({"name": "virtualOutbound", "address": sock("127.0.0.1", next_port), "use_original_dst": True,
                  "filter_chains": [{"filters": [tcp("PassthroughCluster", "PassthroughCluster")]}], "traffic_direction": "OUTBOUND"}); next_port += 1
inbound_rc = {"name": "inbound|9080||", "validate_clusters": False, "virtual_hosts": [{"name": "inbound|http|9080", "domains": ["*"],
              "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": "inbound|9080||", "timeout": "0s"},
                          "decorator": {"operation": "productpage.default.svc.cluster.local:9080/*"}}]}]}
listeners.append({"name": "virtualInbound", "address": sock("127.0.0.1", next_port), "use_original_dst": True,
                  "filter_chains": [{"filters": [hcm("inbound_0.0.0.0_9080", inbound_rc, True)]}], "traffic_direction": "INBOUND"}); next_port += 1
for name, c, path in (("prometheus", "prometheus_stats", "/stats/prometheus"), ("healthz", "agent", "/healthz/ready")):
    listeners.append({"name": name, "address": sock("127.0.0.1", next_port), "filter_chains": [{"filters": [hcm(name, {"virtual_hosts": [
        {"name": "backend", "domains": ["*"], "routes": [{"match": {"prefix": path}, "route": {"cluster": c}}]}]})]}]}); next_port += 1
boot = {"node": {"id": "sidecar~10.244.0.190~productpage-v1-6b746f74dc-9stvs.default~default.svc.cluster.local", "cluster": "productpage.default"},
        "admin": {"address": sock("127.0.0.1", admin)},
        "static_resources": {"listeners": listeners, "clusters": clusters}}
json.dump(boot, open(sys.argv[5], "w"))
print(f"{len(clusters)} clusters, {len(listeners)} listeners, {sum(len(l['filter_chains'][0]['filters'][0]['typed_config'].get('route_config', {}).get('virtual_hosts', [])) for l in listeners)} virtual hosts", file=sys.stderr)
print(port9080)
PY
)
  own_session "$MOSN" -c "$WORK/bookinfo.json" --concurrency 2 -l warning >"$WORK/bookinfo.log" 2>&1; pids+=($!); BI_PID=$!
  sleep 1.5
  bi_idle=$(rss_kb "$BI_PID")
  for h in productpage details ratings reviews; do
    if wrk -t1 -c"$CONNS" -d3s -H "Host: $h:9080" "http://127.0.0.1:$bi_port/" | grep -q "Non-2xx\|Socket errors"; then
      echo "errors from bookinfo $h" >&2
    fi
  done
  curl -fsS -o /dev/null -H "Host: reviews" -H "end-user: jason" "http://127.0.0.1:$bi_port/" || echo "bookinfo route by header failed" >&2
  bi_load=$(rss_kb "$BI_PID"); bi_split=$(rss_split "$BI_PID")
  kill "$BI_PID"
else
  echo "no $DUMP (or python3): Bookinfo RSS skipped" >&2
fi

awk -v m="$m_rps" -v l="$l_rps" -v n="$n_rps" -v h="$h_rps" -v mr="$m_rss" -v nr="$n_rss" -v hr="$h_rss" \
    -v fd="$f_d" -v fm="$f_m" -v fn="$f_n" -v fh="$f_h" 'BEGIN {
  printf "ratio req/s mosn/nginx = %.2fx with Envoy'"'"'s default headers, %.2fx with the same headers as nginx (target >= 1); mosn/haproxy = %.2fx\n", m/n, l/n, m/h;
  printf "added p99 at 1,000 rps: mosn %+.3f ms (target <= 0.5), nginx %+.3f ms, haproxy %+.3f ms\n", fm-fd, fn-fd, fh-fd;
  printf "ratio rss   mosn/nginx = %.2fx, mosn/haproxy = %.2fx; mosn rss %.1f MB\n", mr/nr, mr/hr, mr/1024 }'
# The same ratios round by round: the paths of one round ran within a minute of each other, so
# a slow phase of the box hits both sides of each ratio alike.
paired() { # rows_a rows_b -> "r1 r2 ... | median", the median as median_col takes it
  local r
  r=$(paste -d' ' <(awk 'NF {print $1}' <<<"$1") <(awk 'NF {print $1}' <<<"$2") | awk '{printf "%.3f\n", $1 / $2}' | sort -g)
  echo "$(awk '{printf "%.2f ", $1}' <<<"$r")| median $(median_col "$r" 1 | awk '{printf "%.2f", $1}')x"
}
echo "paired req/s ratios per round (sorted): mosn/nginx $(paired "$s_m" "$s_n"); mosn-lean/nginx $(paired "$s_l" "$s_n")"
# ROUNDS alternating 5 s rounds of mosn-lean, nginx and haproxy, with the caller's CONNS and
# WRK_CPU; the rows go to w_l, w_n and w_h.
three_paths() {
  w_l=""; w_n=""; w_h=""
  for _ in $(seq "$ROUNDS"); do
    w_l+="$(DURATION=5s saturate $MOSN_LEAN_PORT "$LEAN_PID")"$'\n'
    w_n+="$(DURATION=5s saturate $NGINX_PORT "$NGINX_PID")"$'\n'
    w_h+="$(DURATION=5s saturate $HAPROXY_PORT "$HAPROXY_PID")"$'\n'
  done
}
# Other loads: fewer connections than the target's 32 (the chain is then bound by wake-ups
# and CPU placement more than by CPU), and more.
for c in ${SWEEP-8 128}; do
  CONNS=$c three_paths
  echo "sweep -c$c: req/s medians mosn-lean $(median_col "$w_l" 1), nginx $(median_col "$w_n" 1), haproxy $(median_col "$w_h" 1); cpu s/10k $(median_col "$w_l" 4), $(median_col "$w_n" 4), $(median_col "$w_h" 4); paired mosn-lean/nginx $(paired "$w_l" "$w_n"); haproxy/nginx $(paired "$w_h" "$w_n")"
done
# Pinned (PINNED=0 skips it): each proxy alone on CPU 1, wrk and the upstream on CPU 0. The
# rounds then repeat within 2-3% where unpinned ones swing by 10-20%, and what is compared
# is the proxies plus how they make the upstream and wrk share their CPU (bench/peers.sh splits
# that out; bench/RESULTS.md, session 18).
if [ "${PINNED:-1}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  pin() { taskset -a -p -c "$1" "$2" >/dev/null; }
  UP_PID=$(pgrep -P "$(cat "$WORK/up.pid")" | head -1)
  for p in "$LEAN_PID" "$NGINX_PID" "$HAPROXY_PID"; do pin 1 "$p"; done
  pin 0 "$UP_PID"
  WRK_CPU=0 three_paths
  for p in "$LEAN_PID" "$NGINX_PID" "$HAPROXY_PID" "$UP_PID"; do pin "0-$(($(nproc) - 1))" "$p"; done
  echo "pinned -c$CONNS: req/s per round mosn-lean $(awk 'NF {printf "%s ", $1}' <<<"$w_l")| nginx $(awk 'NF {printf "%s ", $1}' <<<"$w_n")| haproxy $(awk 'NF {printf "%s ", $1}' <<<"$w_h")"
  echo "pinned -c$CONNS: req/s medians mosn-lean $(median_col "$w_l" 1), nginx $(median_col "$w_n" 1), haproxy $(median_col "$w_h" 1); paired mosn-lean/nginx $(paired "$w_l" "$w_n"); haproxy/nginx $(paired "$w_h" "$w_n")"
fi
echo "mosn rss after load: $m_split"
if [ "$bi_load" != - ]; then
  awk -v i="$bi_idle" -v l="$bi_load" 'BEGIN {
    printf "bookinfo-sized config: mosn rss %.1f MB idle, %.1f MB after load (target <= 20)\n", i/1024, l/1024 }'
  echo "bookinfo-sized config: rss after load: $bi_split"
fi

# Shared setup for the proxy benchmarks (proxy.sh, instructions.sh). Source it after setting
# WORK, UP, MOSN_PORT, NGINX_PORT and ADMIN; it writes, in $WORK:
#  - up.conf: the nginx upstream (`return 200`, one worker);
#  - px.conf: nginx as a one-worker HTTP/1.1 keep-alive reverse proxy to it (the peer), caching
#    up to 1,024 idle upstream connections: with fewer than the client's connections, nginx
#    closes and reopens upstream connections under load (at -c128 it then ran at 60%);
#  - mosn.json: mosn's bootstrap for the same path (one route to one STATIC cluster);
#  - mosn-lean.json, when MOSN_LEAN_PORT and MOSN_LEAN_ADMIN are set: the same, with the
#    headers nginx does not add turned off;
#  - mosn-istio.json, when MOSN_ISTIO_PORT and MOSN_ISTIO_ADMIN are set: the same route as an
#    Istio sidecar's outbound HCM has it, with Istio's HTTP filters (metadata exchange, stats),
#    request ids and Zipkin tracing at Istio's default 1% (the spans go to the upstream).
# NGINX_PROXY_EXTRA goes at the top of px.conf (instructions.sh runs nginx in the foreground).
# own_session CMD...: starts CMD in the background in a session of its own; $! is CMD's pid.
# Every proxy runs so, as nginx's daemon puts itself and as a sidecar runs in a container of its
# own. With autogroup scheduling (kernel.sched_autogroup_enabled, on by default) each session
# is one scheduling group: a proxy left in wrk's session shares one group's weight with wrk,
# so on the CPU that wrk shares with the upstream, wrk gets a fraction of the upstream's
# weight, the upstream preempts it at each wake-up, and both work in small batches. Any proxy
# pays for it: nginx in wrk's session ran at 58k req/s against 66k in its own
# (bench/RESULTS.md, session 20). setsid runs CMD in its own process only when the shell is
# not a process-group leader, i.e. without job control, which a script does not have.
own_session() {
  case $- in *m*) echo "own_session: turn job control off (set +m)" >&2; return 1 ;; esac
  setsid "$@" &
}
cat >"$WORK/up.conf" <<CONF
worker_processes 1; pid $WORK/up.pid; error_log $WORK/up-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "hello from upstream\n"; } } }
CONF
cat >"$WORK/px.conf" <<CONF
${NGINX_PROXY_EXTRA:-}
worker_processes 1; pid $WORK/px.pid; error_log $WORK/px-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 1024; }
  server { listen 127.0.0.1:$NGINX_PORT;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
# mosn_bootstrap PORT ADMIN_PORT HCM_EXTRA ROUTER_EXTRA [FILTERS] [TOP]: the extras are JSON
# members (with a trailing comma) added to the HCM and to the router's config; FILTERS are
# HTTP filters before the router, TOP members of the bootstrap itself (each with a trailing
# comma too).
mosn_bootstrap() {
cat <<CONF
{ ${6:-} "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": $2 } } },
  "static_resources": {
    "listeners": [{ "name": "bench", "address": { "socket_address": { "address": "127.0.0.1", "port_value": $1 } },
      "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.http_connection_manager",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
          $3 "stat_prefix": "bench",
          "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"],
            "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "up" } }] }] },
          "http_filters": [${5:-} { "name": "envoy.filters.http.router",
            "typed_config": { $4 "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }] } }] }] }],
    "clusters": [{ "name": "up", "type": "STATIC", "connect_timeout": "1s",
      "load_assignment": { "cluster_name": "up", "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address":
        { "socket_address": { "address": "127.0.0.1", "port_value": $UP } } } }] }] } }] } }
CONF
}
mosn_bootstrap "$MOSN_PORT" "$ADMIN" "" "" >"$WORK/mosn.json"
# The same path without the headers Envoy adds by default and nginx does not (x-request-id,
# x-envoy-expected-rq-timeout-ms, x-envoy-upstream-service-time), as Envoy's own options turn
# them off: both proxies then send the upstream and the client the same headers, bar
# x-forwarded-proto, which Envoy always sets.
if [ -n "${MOSN_LEAN_PORT:-}" ]; then
  mosn_bootstrap "$MOSN_LEAN_PORT" "$MOSN_LEAN_ADMIN" '"generate_request_id": false,' '"suppress_envoy_headers": true,' >"$WORK/mosn-lean.json"
fi
# Istio's wasm filters as pilot writes them (the null VM's plugins, which mosn runs natively).
istio_filter() { # NAME PLUGIN ROOT_ID
  echo '{ "name": "'$1'", "typed_config": { "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type_url": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "value": { "config": {
      "root_id": "'$3'", "vm_config": { "runtime": "envoy.wasm.runtime.null", "code": { "local": { "inline_string": "'$2'" } } },
      "configuration": { "@type": "type.googleapis.com/google.protobuf.StringValue", "value": "{}" } } } } },'
}
if [ -n "${MOSN_ISTIO_PORT:-}" ]; then
  node='"node": { "id": "sidecar~10.0.0.1~productpage-v1-abc.default~default.svc.cluster.local",
    "cluster": "productpage.default", "metadata": { "NAME": "productpage-v1-abc", "NAMESPACE": "default",
    "WORKLOAD_NAME": "productpage-v1", "CLUSTER_ID": "Kubernetes", "LABELS": { "app": "productpage",
    "version": "v1", "service.istio.io/canonical-name": "productpage", "service.istio.io/canonical-revision": "v1" } } },
  "tracing": { "http": { "name": "envoy.tracers.zipkin", "typed_config": {
    "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig", "collector_cluster": "up",
    "collector_endpoint": "/api/v2/spans", "collector_endpoint_version": "HTTP_JSON",
    "trace_id_128bit": true, "shared_span_context": false } } },'
  tracing='"tracing": { "client_sampling": { "value": 100 }, "random_sampling": { "value": 1 },
    "overall_sampling": { "value": 100 }, "custom_tags": [{ "tag": "istio.mesh_id", "literal": { "value": "cluster.local" } }] },'
  mosn_bootstrap "$MOSN_ISTIO_PORT" "$MOSN_ISTIO_ADMIN" "$tracing" "" \
    "$(istio_filter istio.metadata_exchange envoy.wasm.metadata_exchange "") $(istio_filter istio.stats envoy.wasm.stats stats_outbound)" \
    "$node" >"$WORK/mosn-istio.json"
fi

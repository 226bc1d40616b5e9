# Shared setup for the proxy benchmarks (proxy.sh, instructions.sh). Source it after setting
# WORK, UP, MOSN_PORT, NGINX_PORT and ADMIN; it writes, in $WORK:
#  - up.conf: the nginx upstream (`return 200`, one worker);
#  - px.conf: nginx as a one-worker HTTP/1.1 keep-alive reverse proxy to it (the peer);
#  - mosn.json: mosn's bootstrap for the same path (one route to one STATIC cluster).
# NGINX_PROXY_EXTRA goes at the top of px.conf (instructions.sh runs nginx in the foreground).
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
  upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NGINX_PORT;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
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

#!/usr/bin/env bash
# Serve the packed tarballs with `mosnctl serve-artifacts` and with nginx (sendfile on), and
# download them in parallel over loopback with wrk. Target: mosnctl at least 0.9x nginx's
# throughput. Prints the ratio.
source "$(dirname "$0")/common.sh"
for t in nginx wrk; do command -v $t >/dev/null || { echo "$t is needed: apt-get install nginx-light wrk" >&2; exit 1; }; done
DURATION="${DURATION:-10s}"; CONNS="${CONNS:-8}"
make_binary "$WORK/mosn"
"$MOSNCTL" -q pack --version bench --linux "$WORK/mosn" --out "$WORK/release"

cat >"$WORK/nginx.conf" <<CONF
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log $WORK/nginx-access.log;
  sendfile on; tcp_nopush on; keepalive_requests 100000;
  server { listen 127.0.0.1:18181; root $WORK/release; }
}
CONF
nginx -c "$WORK/nginx.conf" -p "$WORK"
trap 'nginx -c "$WORK/nginx.conf" -p "$WORK" -s stop 2>/dev/null; kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
"$MOSNCTL" serve-artifacts --dir "$WORK/release" --addr 127.0.0.1:18182 >/dev/null 2>"$WORK/mosnctl-access.log" &
sleep 1

rate() { # bytes/s from wrk's "Transfer/sec"; refuses runs with error answers
  local out; out=$(wrk -t2 -c"$CONNS" -d"$DURATION" "$1")
  if grep -q "Non-2xx" <<<"$out"; then echo "error answers from $1:" >&2; echo "$out" >&2; exit 1; fi
  awk '/Transfer\/sec/ {v=$2; u=substr(v,length(v)-1); n=v+0;
    m=(u=="GB")?1073741824:(u=="MB")?1048576:(u=="KB")?1024:1; printf "%.0f\n", n*m}' <<<"$out"
}
n=$(rate http://127.0.0.1:18181/mosn.tar.gz); m=$(rate http://127.0.0.1:18182/mosn.tar.gz)
n2=$(rate http://127.0.0.1:18181/mosn.tar.gz); m2=$(rate http://127.0.0.1:18182/mosn.tar.gz)
echo "parallel downloads ($CONNS connections, $DURATION, twice each, alternating):"
echo "  nginx    $((n / 1048576)) MiB/s, $((n2 / 1048576)) MiB/s"
echo "  mosnctl  $((m / 1048576)) MiB/s, $((m2 / 1048576)) MiB/s"
awk -v n=$((n + n2)) -v m=$((m + m2)) 'BEGIN {printf "ratio throughput mosnctl/nginx = %.2fx (target >= 0.9x)\n", m/n}'

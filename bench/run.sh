#!/usr/bin/env bash
# Side-by-side benchmark: Pylon, NGINX and HAProxy on the same machine, in one run.
# Installs its peers from Debian's packages, builds Pylon (profile-guided, see below), then runs
# bench/bench.py (pass --quick for one short round); with --l4 first, bench/l4.py (TCP
# throughput with iperf3 and connections per second); with --tunnel first, bench/tunnel.py
# (WebSocket echo messages per second, CONNECT throughput); with --grpc first, bench/grpc.py
# (gRPC unary calls per second, server-stream throughput); with --h3 first, bench/h3.py
# (HTTP/3 against Caddy: small requests and 1 MiB downloads, HTTPS HTTP/2 beside them);
# with --soak first, bench/soak.py (10 minutes of mixed traffic with origin failures and
# reloads, then a report); with --cache first, bench/cache.py (cache hits and a miss storm
# against NGINX proxy_cache and Varnish); with --gateway first, bench/gateway.py (what JWT
# checks and local and Redis rate limits cost per request, NGINX limit_req beside them);
# with --turn first, bench/turn.py (TURN relaying against coturn: packets/s, Mbit/s and
# CPU per relayed packet at 200 and 1,200 bytes, allocations per second); with --fleet
# first, bench/fleet.py (what N instances ask of etcd idle and per configuration push,
# and Redis's cost per global rate-limit round trip).
# Never part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
command -v caddy >/dev/null 2>&1 || need+=(caddy)
command -v varnishd >/dev/null 2>&1 || [ -x /usr/sbin/varnishd ] || need+=(varnish)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v turnserver >/dev/null 2>&1 || need+=(coturn)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
# Debian starts services on install; the benchmark runs its own instances.
systemctl stop nginx haproxy caddy varnish redis-server coturn >/dev/null 2>&1 || true

# The Pylon measured is the profile-guided build that scripts/build-pgo.sh makes (what
# docs/performance.md recommends deploying); with --no-pgo first, the plain
# `cargo build --release` binary instead.
if [ "${1:-}" = "--no-pgo" ]; then
  shift
  cargo build --release -p pylon
  pylon=target/release/pylon
  export PYLON_BUILD=release
else
  pylon=$(scripts/build-pgo.sh | tail -n 1)
  export PYLON_BUILD=pgo
fi
ulimit -n "$(ulimit -Hn)" || true
if [ "${1:-}" = "--tunnel" ]; then
  shift
  cargo build --release -p pylon-bench-load
  exec python3 bench/tunnel.py --pylon "$pylon" --load target/release/pylon-bench-load "$@"
fi
if [ "${1:-}" = "--soak" ]; then
  shift
  cargo build --release -p pylon-bench-load
  exec python3 bench/soak.py --pylon "$pylon" --load target/release/pylon-bench-load "$@"
fi
if [ "${1:-}" = "--grpc" ]; then
  shift
  cargo build --release -p pylon-bench-load
  exec python3 bench/grpc.py --pylon "$pylon" --load target/release/pylon-bench-load "$@"
fi
if [ "${1:-}" = "--h3" ]; then
  shift
  cargo build --release -p pylon-bench-load
  exec python3 bench/h3.py --pylon "$pylon" --load target/release/pylon-bench-load "$@"
fi
if [ "${1:-}" = "--turn" ]; then
  shift
  cargo build --release -p pylon-bench-load
  exec python3 bench/turn.py --pylon "$pylon" --load target/release/pylon-bench-load "$@"
fi
if [ "${1:-}" = "--cache" ]; then
  shift
  exec python3 bench/cache.py --pylon "$pylon" "$@"
fi
if [ "${1:-}" = "--fleet" ]; then
  shift
  exec python3 bench/fleet.py --pylon "$pylon" "$@"
fi
if [ "${1:-}" = "--gateway" ]; then
  shift
  exec python3 bench/gateway.py --pylon "$pylon" "$@"
fi
if [ "${1:-}" = "--l4" ]; then
  shift
  exec python3 bench/l4.py --pylon "$pylon" "$@"
fi
exec python3 bench/bench.py --pylon "$pylon" "$@"

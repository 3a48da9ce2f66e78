#!/usr/bin/env bash
# Runs Pylon's whole test suite, installing first what the tests need: from apt curl,
# openssl, redis-server (the global rate-limit tests start their own servers), coturn
# (its STUN and TURN test clients drive Pylon's TURN listeners; its server never runs),
# pebble (Let's Encrypt's test ACME server, started by the ACME tests), etcd (the
# fleet tests start their own) and chromium (headless: two WebRTC peers relay through
# Pylon's TURN listener); and from PyPI, in a virtualenv under target/: the Python gRPC client (grpcio), the Prometheus client's
# exposition parser (prometheus-client), an HTTP/3 client (aioquic), and brotli and
# zstandard decoders for the compression tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v turnutils_uclient >/dev/null 2>&1 || need_apt+=(coturn)
command -v pebble >/dev/null 2>&1 || need_apt+=(pebble)
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
# Debian starts coturn's server on install where it can; the tests need only its clients.
if command -v systemctl >/dev/null 2>&1; then systemctl stop coturn >/dev/null 2>&1 || true; fi

# The gRPC tests drive Pylon with grpcio as an independent second client, the HTTP/3
# tests with aioquic; the metrics tests parse /metrics with the Prometheus project's
# own parser.
venv=target/test-venv
if ! "$venv/bin/python" -c 'import grpc, prometheus_client, aioquic, brotli, zstandard' >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet grpcio prometheus-client aioquic brotli zstandard
fi
export PYLON_TEST_PYTHON="$PWD/$venv/bin/python"

cargo test --workspace --locked "$@"

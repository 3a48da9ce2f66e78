#!/usr/bin/env bash
# The demo fleet on one machine, on loopback: etcd (127.0.0.1:12379), Redis
# (127.0.0.1:16379), the demo backends (backend.toml: 9081, 9082), three Pylon
# instances that take their configuration (fleet.toml) from etcd and register there, and
# the edge tier (edge.toml) on 127.0.0.1:9000. Ctrl-C stops everything.
#
#   sudo apt install etcd-server etcd-client redis-server    # once
#   examples/fleet/run.sh
#
# PYLON names the binary (default target/release/pylon, built when missing). The logs
# are in the directory printed at start, removed at exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYLON=${PYLON:-target/release/pylon}
if [ ! -x "$PYLON" ]; then
    cargo build --release
fi
for tool in etcd etcdctl redis-server; do
    command -v "$tool" >/dev/null || {
        echo "$tool is missing: sudo apt install etcd-server etcd-client redis-server" >&2
        exit 1
    }
done

ETCD=127.0.0.1:12379
SOURCE=etcd://$ETCD/pylon-demo
STATE=$(mktemp -d -t pylon-fleet.XXXXXX)
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$STATE"
}
trap cleanup EXIT
trap 'exit 0' INT TERM
ctl() { ETCDCTL_API=3 etcdctl --endpoints "$ETCD" "$@"; }
# Waits up to 10 s for a command to succeed.
await() {
    for _ in $(seq 100); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "gave up waiting for: $*" >&2
    exit 1
}

echo "logs: $STATE"
etcd --name demo --data-dir "$STATE/etcd" \
    --listen-client-urls "http://$ETCD" --advertise-client-urls "http://$ETCD" \
    --listen-peer-urls http://127.0.0.1:12380 \
    --initial-advertise-peer-urls http://127.0.0.1:12380 \
    --initial-cluster demo=http://127.0.0.1:12380 >"$STATE/etcd.log" 2>&1 &
pids+=($!)
redis-server --bind 127.0.0.1 --port 16379 --save '' --appendonly no \
    >"$STATE/redis.log" 2>&1 &
pids+=($!)
await ctl endpoint health

"$PYLON" run -c examples/fleet/backend.toml >"$STATE/backend.log" 2>&1 &
pids+=($!)
"$PYLON" config push examples/fleet/fleet.toml "$SOURCE"
for n in 1 2 3; do
    "$PYLON" run --config-source "$SOURCE" --config-cache "$STATE/cache-$n.toml" \
        --instance-name "demo-$n" >"$STATE/demo-$n.log" 2>&1 &
    pids+=($!)
    echo "instance demo-$n: pid $!"
done
members() { [ "$(ctl get --prefix /pylon-demo/members/ --keys-only | grep -c .)" = 3 ]; }
await members
"$PYLON" run -c examples/fleet/edge.toml >"$STATE/edge.log" 2>&1 &
pids+=($!)
await curl -sf http://127.0.0.1:9000/

cat <<TRY

The fleet is up. Try:

  curl http://127.0.0.1:9000/                 # through the edge tier to one instance
  curl http://127.0.0.1:9901/clusters         # the instances, as the edge sees them
  ETCDCTL_API=3 etcdctl --endpoints $ETCD get --prefix /pylon-demo/members/ --print-value-only
  for i in \$(seq 60); do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:9000/; done; echo
                                              # 200s, then 429: 40 per client, fleet-wide
  $PYLON config push examples/fleet/fleet.toml $SOURCE
                                              # after an edit: every instance reloads
  kill -TERM <pid of an instance>             # drained at the edge, then removed

Ctrl-C stops everything.
TRY
wait

#!/usr/bin/env python3
"""Tunnel benchmark: WebSocket echo round trips per second (50 connections, 64-byte
messages) through Pylon, NGINX and HAProxy (one worker each) and direct; and CONNECT
tunnel throughput through Pylon's forward proxy against a direct connection (neither
NGINX nor HAProxy is a forward proxy). The load client and origins are
bench/wsload (`pylon-bench-load`). Results go to bench/results/tunnel-<date>.json."""

import argparse, json, os, subprocess, sys, tempfile, time
from datetime import datetime, timezone

import bench
from bench import Server, cpu_ticks, TICK, PROXY

WS_ORIGIN = 18084
SINK = 18085


def nginx_ws(d):
    return f"""
worker_processes 1; daemon off; pid {d}/nginx-ws.pid; error_log {d}/nginx-ws.err;
events {{ worker_connections 65535; }}
http {{
  access_log off;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{PROXY};
    location / {{
      proxy_pass http://127.0.0.1:{WS_ORIGIN};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 300s;
    }}
  }}
}}"""


def haproxy_ws(d):
    return f"""
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout tunnel 300s
frontend fe
  bind 127.0.0.1:{PROXY}
  default_backend be
backend be
  server origin 127.0.0.1:{WS_ORIGIN}
"""


def pylon_ws(d):
    return f"""
[server]
worker_threads = 1
[access_log]
enabled = false
[[listeners]]
name = "front"
bind = "127.0.0.1:{PROXY}"
via = false
request_id = false
[[routes]]
cluster = "ws"
[[clusters]]
name = "ws"
endpoints = ["127.0.0.1:{WS_ORIGIN}"]
"""


def pylon_forward(d):
    return f"""
[server]
worker_threads = 1
[access_log]
enabled = false
[[listeners]]
name = "fwd"
bind = "127.0.0.1:{PROXY}"
[listeners.forward]
allow_private = true
connect_ports = [{SINK}]
"""


def start(name, d, conf_fn, pylon):
    conf = os.path.join(d, f"{name}-{conf_fn.__name__}.conf")
    open(conf, "w").write(conf_fn(d))
    argv = {
        "nginx": ["nginx", "-c", conf, "-e", os.path.join(d, "nginx-ws.err")],
        "haproxy": ["haproxy", "-db", "-f", conf],
        "pylon": [pylon, "run", "-c", conf],
    }[name]
    return Server(name, argv, PROXY)


def run_load(load, args, srv):
    pids = srv.pids() if srv else []
    t0 = cpu_ticks(pids)
    out = subprocess.run([load] + args, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"load client failed: {out.stderr}", file=sys.stderr)
        return None
    r = json.loads(out.stdout)
    used = (cpu_ticks(pids) - t0) / TICK
    r["cpu_s"] = used if srv else None
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pylon", required=True)
    ap.add_argument("--load", required=True, help="the pylon-bench-load binary")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="pylon-tunnel-bench-")
    os.chmod(d, 0o755)
    ws_names = ["direct", "pylon", "nginx", "haproxy"]
    results = {"ws_echo": {n: [] for n in ws_names}, "connect": {n: [] for n in ("direct", "pylon")}}
    started = time.time()
    ws_origin = Server("ws-origin", [args.load, "ws-echo-server", str(WS_ORIGIN)], WS_ORIGIN)
    sink = Server("sink", [args.load, "sink-server", str(SINK)], SINK)
    with ws_origin, sink:
        for rnd in range(args.rounds):
            for name in ws_names:
                print(f"[{time.time() - started:5.0f}s] round {rnd + 1} ws_echo {name}", file=sys.stderr, flush=True)
                port = WS_ORIGIN if name == "direct" else PROXY
                load = ["ws", f"ws://127.0.0.1:{port}/", "50", str(args.seconds)]
                if name == "direct":
                    results["ws_echo"][name].append(run_load(args.load, load, None))
                    continue
                conf = {"pylon": pylon_ws, "nginx": nginx_ws, "haproxy": haproxy_ws}[name]
                with start(name, d, conf, args.pylon) as srv:
                    results["ws_echo"][name].append(run_load(args.load, load, srv))
            for name in ("direct", "pylon"):
                print(f"[{time.time() - started:5.0f}s] round {rnd + 1} connect {name}", file=sys.stderr, flush=True)
                target = f"127.0.0.1:{SINK}"
                if name == "direct":
                    results["connect"][name].append(
                        run_load(args.load, ["connect", target, target, str(args.seconds)], None))
                    continue
                with start("pylon", d, pylon_forward, args.pylon) as srv:
                    results["connect"][name].append(run_load(
                        args.load, ["connect", f"127.0.0.1:{PROXY}", target, str(args.seconds)], srv))
    table = {}
    for s, rows in results.items():
        table[s] = {}
        for n, rs in rows.items():
            rs = [r for r in rs if r]
            if rs:
                table[s][n] = {k: bench.median([r.get(k) for r in rs]) for k in rs[0].keys()}
    print(f"{'scenario':10} {'proxy':8} {'figure':>14} {'proxy CPU':>16}")
    for n, r in table["ws_echo"].items():
        cpu = f"{r['cpu_s'] * 1e6 / r['messages']:.1f} us/msg" if r.get("cpu_s") else "-"
        print(f"{'ws_echo':10} {n:8} {r['per_second']:>10.0f} msg/s {cpu:>16}")
    peers = [table["ws_echo"][n]["per_second"] for n in ("nginx", "haproxy") if n in table["ws_echo"]]
    if peers and "pylon" in table["ws_echo"]:
        print(f"{'':10} pylon / best peer: {table['ws_echo']['pylon']['per_second'] / max(peers):.2f}x")
    for n, r in table["connect"].items():
        cpu = f"{r['cpu_s'] / (r['bytes'] / (1 << 30)):.3f} s/GiB" if r.get("cpu_s") else "-"
        print(f"{'connect':10} {n:8} {r['gbit_s']:>9.2f} Gbit/s {cpu:>16}")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    meta = {"date": stamp, "machine": bench.machine(), "rounds": args.rounds, "seconds": args.seconds}
    with open(os.path.join(bench.HERE, "results", f"tunnel-{stamp}.json"), "w") as f:
        json.dump({"meta": meta, "results": table}, f, indent=2)
    print(f"\nwrote bench/results/tunnel-{stamp}.json", file=sys.stderr)


if __name__ == "__main__":
    main()

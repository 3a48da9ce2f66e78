#!/usr/bin/env python3
"""gRPC benchmark: unary calls per second (10 connections x 10 calls in flight, 64-byte
messages) and one server stream's throughput (1 KiB messages), through Pylon, NGINX
(grpc_pass) and HAProxy (proto h2 both sides), one worker each, and direct. Load client
and origin: bench/wsload (`pylon-bench-load`, tonic on both ends). Results go to
bench/results/grpc-<date>.json."""

import argparse, json, os, subprocess, sys, tempfile, time
from datetime import datetime, timezone

import bench
from bench import Server, cpu_ticks, TICK, PROXY

ORIGIN = 18086


def nginx_grpc(d):
    return f"""
worker_processes 1; daemon off; pid {d}/nginx-grpc.pid; error_log {d}/nginx-grpc.err;
events {{ worker_connections 65535; }}
http {{
  access_log off;
  upstream origin {{ server 127.0.0.1:{ORIGIN}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{PROXY} http2;
    location / {{ grpc_pass grpc://origin; }}
  }}
}}"""


def haproxy_grpc(d):
    return f"""
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend fe
  bind 127.0.0.1:{PROXY} proto h2
  default_backend be
backend be
  server origin 127.0.0.1:{ORIGIN} proto h2
"""


def pylon_grpc(d):
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
x_forwarded = false
[[routes]]
cluster = "origin"
[[clusters]]
name = "origin"
protocol = "h2c"
endpoints = ["127.0.0.1:{ORIGIN}"]
"""


def start(name, d, pylon):
    conf = os.path.join(d, f"{name}-grpc.conf")
    open(conf, "w").write({"nginx": nginx_grpc, "haproxy": haproxy_grpc, "pylon": pylon_grpc}[name](d))
    argv = {
        "nginx": ["nginx", "-c", conf, "-e", os.path.join(d, "nginx-grpc.err")],
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
    r["cpu_s"] = (cpu_ticks(pids) - t0) / TICK if srv else None
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pylon", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="pylon-grpc-bench-")
    os.chmod(d, 0o755)
    names = ["direct", "pylon", "nginx", "haproxy"]
    results = {"unary": {n: [] for n in names}, "stream": {n: [] for n in names}}
    started = time.time()
    with Server("grpc-origin", [args.load, "grpc-server", str(ORIGIN)], ORIGIN):
        for rnd in range(args.rounds):
            for scenario in ("unary", "stream"):
                for name in names:
                    print(f"[{time.time() - started:5.0f}s] round {rnd + 1} {scenario} {name}", file=sys.stderr, flush=True)
                    port = ORIGIN if name == "direct" else PROXY
                    url = f"http://127.0.0.1:{port}"
                    load = (["grpc-unary", url, "10", str(args.seconds)] if scenario == "unary"
                            else ["grpc-stream", url, str(args.seconds)])
                    if name == "direct":
                        results[scenario][name].append(run_load(args.load, load, None))
                        continue
                    with start(name, d, args.pylon) as srv:
                        results[scenario][name].append(run_load(args.load, load, srv))
    table = {}
    for s, rows in results.items():
        table[s] = {}
        for n, rs in rows.items():
            rs = [r for r in rs if r]
            if rs:
                table[s][n] = {k: bench.median([r.get(k) for r in rs]) for k in rs[0].keys()}
    print(f"{'scenario':8} {'proxy':8} {'figure':>16} {'proxy CPU':>16}")
    for n, r in table["unary"].items():
        cpu = f"{r['cpu_s'] * 1e6 / r['calls']:.1f} us/call" if r.get("cpu_s") else "-"
        print(f"{'unary':8} {n:8} {r['per_second']:>10.0f} call/s {cpu:>16}")
    for n, r in table["stream"].items():
        cpu = f"{r['cpu_s'] / (r['bytes'] / (1 << 30)):.2f} s/GiB" if r.get("cpu_s") else "-"
        print(f"{'stream':8} {n:8} {r['mib_s']:>11.1f} MiB/s {cpu:>16}")
    for s, key in (("unary", "per_second"), ("stream", "mib_s")):
        peers = [table[s][n][key] for n in ("nginx", "haproxy") if n in table[s]]
        if peers and "pylon" in table[s]:
            print(f"{s}: pylon / best peer {table[s]['pylon'][key] / max(peers):.2f}x")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    meta = {"date": stamp, "machine": bench.machine(), "rounds": args.rounds, "seconds": args.seconds}
    with open(os.path.join(bench.HERE, "results", f"grpc-{stamp}.json"), "w") as f:
        json.dump({"meta": meta, "results": table}, f, indent=2)
    print(f"\nwrote bench/results/grpc-{stamp}.json", file=sys.stderr)


if __name__ == "__main__":
    main()

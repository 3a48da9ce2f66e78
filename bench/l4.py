#!/usr/bin/env python3
"""Layer 4 side by side: TCP throughput (iperf3, one stream) and new TCP connections per
second (wrk with `Connection: close` through a TCP relay to an NGINX origin), for the
origin direct, Pylon (splice, plain copy, warm connections), HAProxy `mode tcp` and NGINX
`stream`, all with one worker thread. Prints one table and Pylon's ratio to the best
peer; results go to bench/results/l4-<date>.json."""

import argparse, json, os, subprocess, sys, tempfile, time
from datetime import datetime, timezone

import bench
from bench import Server, cpu_ticks, rss_kib, TICK, ORIGIN, PROXY

IPERF = 18083


def nginx_stream(d, target):
    return f"""
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1; daemon off; pid {d}/nginx-l4.pid; error_log {d}/nginx-l4.err;
events {{ worker_connections 65535; }}
stream {{ server {{ listen 127.0.0.1:{PROXY} backlog=4096; proxy_pass 127.0.0.1:{target}; }} }}
"""


def haproxy_tcp(d, target):
    return f"""
global
  nbthread 1
  maxconn 9000
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend fe
  bind 127.0.0.1:{PROXY}
  default_backend be
backend be
  server origin 127.0.0.1:{target}
"""


def pylon_tcp(d, target, splice=True, warm=0):
    return f"""
[server]
worker_threads = 1
[access_log]
enabled = false
[[listeners]]
name = "tcp"
bind = "127.0.0.1:{PROXY}"
protocol = "tcp"
cluster = "origin"
splice = {"true" if splice else "false"}
max_connections = 100000
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:{target}"]
pool = {{ warm_connections = {warm} }}
"""


def start(name, d, target, pylon):
    conf = os.path.join(d, f"{name}.conf")
    if name == "nginx":
        text, argv = nginx_stream(d, target), ["nginx", "-c", conf, "-e", os.path.join(d, "nginx-l4.err")]
    elif name == "haproxy":
        text, argv = haproxy_tcp(d, target), ["haproxy", "-db", "-f", conf]
    else:
        variant = {"pylon": {}, "pylon-copy": {"splice": False}, "pylon-warm": {"warm": 64}}[name]
        text, argv = pylon_tcp(d, target, **variant), [pylon, "run", "-c", conf]
    open(conf, "w").write(text)
    return Server(name, argv, PROXY)


def iperf(port, secs):
    for attempt in range(3):
        out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(secs), "-J"],
                             capture_output=True, text=True).stdout
        j = json.loads(out)
        end = j.get("end", {})
        if "sum_received" in end:
            return {"gbit_s": end["sum_received"]["bits_per_second"] / 1e9,
                    "bytes": end["sum_received"]["bytes"]}
        # "the server is busy": the previous test is still being torn down.
        print(f"iperf3: {j.get('error', 'no result')}; retrying", file=sys.stderr)
        time.sleep(1)
    return None


def measure(scenario, srv, port, secs):
    pids = srv.pids() if srv else []
    t0 = cpu_ticks(pids)
    if scenario == "throughput":
        r = iperf(port, secs)
        if r is None:
            return None
        work = r["bytes"] / (1 << 30)
    else:
        r = bench.run_wrk(port, 50, secs, new_conn=True)
        if r is None:
            return None
        work = r["requests"]
    used = (cpu_ticks(pids) - t0) / TICK
    r["cpu_s_per_unit"] = used / work if (srv and work) else None
    r["peak_rss_kib"] = rss_kib(pids, "VmHWM") if srv else None
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pylon", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    args = ap.parse_args()
    names = ["direct", "pylon", "pylon-copy", "pylon-warm", "haproxy", "nginx"]
    d = tempfile.mkdtemp(prefix="pylon-l4-bench-")
    os.chmod(d, 0o755)
    open(os.path.join(d, "origin.conf"), "w").write(bench.origin_conf(d))
    results = {s: {n: [] for n in names} for s in ("throughput", "conn_rate")}
    started = time.time()
    iperf_srv = Server("iperf3", ["iperf3", "-s", "-p", str(IPERF)], IPERF)
    with Server("origin", ["nginx", "-c", os.path.join(d, "origin.conf")], ORIGIN), iperf_srv:
        for rnd in range(args.rounds):
            for scenario, target in (("throughput", IPERF), ("conn_rate", ORIGIN)):
                for name in names:
                    print(f"[{time.time() - started:5.0f}s] round {rnd + 1} {scenario:10} {name}",
                          file=sys.stderr, flush=True)
                    if name == "direct":
                        results[scenario][name].append(measure(scenario, None, target, args.seconds))
                        continue
                    with start(name, d, target, args.pylon) as srv:
                        results[scenario][name].append(measure(scenario, srv, PROXY, args.seconds))
    table = {s: {n: {k: bench.median([r.get(k) for r in rs if r]) for k in (rs[0] or {}).keys()}
                 for n, rs in v.items() if rs and rs[0]} for s, v in results.items()}
    print(f"{'scenario':12} {'proxy':11} {'Gbit/s | conn/s':>16} {'p50 ms':>8} {'CPU':>14} {'peak RSS':>9}")
    for s, rows in table.items():
        for n, r in rows.items():
            if s == "throughput":
                main_fig = f"{r['gbit_s']:.2f}"
                cpu = f"{r['cpu_s_per_unit']:.3f} s/GiB" if r.get("cpu_s_per_unit") else "-"
                p50 = "-"
            else:
                main_fig = f"{r['rps']:.0f}"
                cpu = f"{r['cpu_s_per_unit'] * 1e6:.1f} us/conn" if r.get("cpu_s_per_unit") else "-"
                p50 = f"{r['p50_ms']:.2f}"
            rss = f"{r['peak_rss_kib'] / 1024:.1f}M" if r.get("peak_rss_kib") else "-"
            print(f"{s:12} {n:11} {main_fig:>16} {p50:>8} {cpu:>14} {rss:>9}")
        key = "gbit_s" if s == "throughput" else "rps"
        peers = [rows[n][key] for n in ("haproxy", "nginx") if n in rows]
        if peers and "pylon" in rows:
            print(f"{'':12} pylon / best peer: {rows['pylon'][key] / max(peers):.2f}x"
                  + (f"; direct: {rows['direct'][key]:.2f}" if "direct" in rows else ""))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    meta = {"date": stamp, "machine": bench.machine(), "rounds": args.rounds, "seconds": args.seconds}
    os.makedirs(os.path.join(bench.HERE, "results"), exist_ok=True)
    with open(os.path.join(bench.HERE, "results", f"l4-{stamp}.json"), "w") as f:
        json.dump({"meta": meta, "results": table}, f, indent=2)
    print(f"\nwrote bench/results/l4-{stamp}.json", file=sys.stderr)


if __name__ == "__main__":
    main()

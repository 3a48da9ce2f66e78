#!/usr/bin/env python3
"""HTTP/3 benchmark: Pylon against Caddy (Debian's 2.6, HTTP/3 on by default), both as
a reverse proxy in front of the same origin (NGINX, `return 200`, one worker), each on
one core (Pylon: worker_threads = 1; Caddy: GOMAXPROCS=1). Scenarios: 10 QUIC
connections x 10 streams of small GETs, 1 MiB downloads on 10 connections, and beside
them the same proxies over HTTPS with HTTP/2 (h2load, 10 x 10). Load client:
bench/wsload (`pylon-bench-load h3`, quinn + h3). Prints requests/s, p50/p99 latency,
proxy CPU-microseconds per request and Pylon's ratio to Caddy; results go to
bench/results/h3-<date>.json."""

import argparse, json, os, subprocess, sys, tempfile, time
from datetime import datetime, timezone

import bench
from bench import Server, cpu_ticks, TICK, ORIGIN

PORT = 18443


def pylon_conf(d):
    return f"""
[server]
worker_threads = 1
[access_log]
enabled = false
[[listeners]]
name = "front"
bind = "127.0.0.1:{PORT}"
protocol = "https"
via = false
request_id = false
http3 = true
tls = {{ certificates = [{{ cert = "{d}/certs/cert.pem", key = "{d}/certs/key.pem" }}] }}
[[routes]]
cluster = "origin"
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:{ORIGIN}"]
pool = {{ max_idle_per_endpoint = 1024 }}
"""


def caddy_conf(d):
    return f"""{{
	admin off
	auto_https off
	default_sni localhost
	servers {{
		protocols h1 h2 h3
	}}
}}
https://localhost:{PORT} {{
	bind 127.0.0.1
	tls {d}/certs/cert.pem {d}/certs/key.pem
	reverse_proxy 127.0.0.1:{ORIGIN}
}}
"""


def start(name, d, pylon):
    conf = os.path.join(d, f"{name}-h3.conf")
    open(conf, "w").write({"pylon": pylon_conf, "caddy": caddy_conf}[name](d))
    if name == "pylon":
        return Server(name, [pylon, "run", "-c", conf], PORT)
    os.environ["GOMAXPROCS"] = "1"
    os.environ["XDG_DATA_HOME"] = d
    os.environ["XDG_CONFIG_HOME"] = d
    return Server(name, ["caddy", "run", "--adapter", "caddyfile", "--config", conf], PORT)


def h3_load(load, d, path, conns, streams, secs, srv):
    pids = srv.pids()
    t0 = cpu_ticks(pids)
    argv = [load, "h3", f"https://localhost:{PORT}{path}", f"127.0.0.1:{PORT}",
            os.path.join(d, "certs", "cert.pem"), str(conns), str(streams), str(secs)]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"load client failed: {out.stderr.strip()}", file=sys.stderr)
        return None
    r = json.loads(out.stdout)
    cpu = (cpu_ticks(pids) - t0) / TICK
    r["cpu_us_per_req"] = cpu * 1e6 / r["requests"] if r["requests"] else None
    return r


def h2_load(secs, srv):
    pids = srv.pids()
    t0 = cpu_ticks(pids)
    r = bench.run_h2load(PORT, secs, scheme="https")
    if r is None:
        sys.exit("h3 bench: h2load gave no figures")
    cpu = (cpu_ticks(pids) - t0) / TICK
    r["cpu_us_per_req"] = cpu * 1e6 / r["requests"] if r["requests"] else None
    return r


SCENARIOS = [
    ("h3_10x10", "HTTP/3 10 conns x 10 streams"),
    ("h3_1mib", "HTTP/3 1 MiB responses, 10 conns"),
    ("https_h2_10x10", "HTTPS HTTP/2 10 conns x 10 streams"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pylon", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="pylon-h3-bench-")
    os.chmod(d, 0o755)
    open(os.path.join(d, "origin.conf"), "w").write(bench.origin_conf(d))
    subprocess.run([args.pylon, "cert", "selfsigned", "--name", "localhost", "--out",
                    os.path.join(d, "certs")], check=True, stdout=subprocess.DEVNULL)
    names = ["pylon", "caddy"]
    results = {s: {n: [] for n in names} for s, _ in SCENARIOS}
    started = time.time()
    with Server("origin", ["nginx", "-c", os.path.join(d, "origin.conf")], ORIGIN):
        for rnd in range(args.rounds):
            for sid, _ in SCENARIOS:
                for name in names:
                    print(f"[{time.time() - started:5.0f}s] round {rnd + 1} {sid} {name}",
                          file=sys.stderr, flush=True)
                    with start(name, d, args.pylon) as srv:
                        # A short warm-up, then the measured run.
                        if sid == "h3_10x10":
                            h3_load(args.load, d, "/", 10, 10, 1, srv)
                            r = h3_load(args.load, d, "/", 10, 10, args.seconds, srv)
                        elif sid == "h3_1mib":
                            r = h3_load(args.load, d, "/1m", 10, 1, args.seconds, srv)
                        else:
                            r = h2_load(args.seconds, srv)
                    results[sid][name].append(r)
    table = {}
    for sid, rows in results.items():
        table[sid] = {}
        for n, rs in rows.items():
            rs = [r for r in rs if r]
            if rs:
                table[sid][n] = {k: bench.median([r.get(k) for r in rs]) for k in rs[0]}
    print(f"\n{'scenario':38} {'proxy':6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11}")
    for sid, title in SCENARIOS:
        for n, r in table[sid].items():
            cpu = r.get("cpu_us_per_req")
            print(f"{title:38} {n:6} {r['rps']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
                  f"{cpu:11.1f}" if cpu else f"{title:38} {n:6} {r['rps']:9.0f}")
        p, c = table[sid].get("pylon"), table[sid].get("caddy")
        if p and c and c["rps"] and p.get("cpu_us_per_req"):
            print(f"{'':38} pylon / caddy: {p['rps'] / c['rps']:.2f}x req/s, "
                  f"{c['cpu_us_per_req'] / p['cpu_us_per_req']:.2f}x CPU per request (higher is better)")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    meta = {"date": stamp, "machine": bench.machine(), "rounds": args.rounds,
            "seconds": args.seconds, "caddy": subprocess.run(["caddy", "version"],
            capture_output=True, text=True).stdout.strip()}
    with open(os.path.join(bench.HERE, "results", f"h3-{stamp}.json"), "w") as f:
        json.dump({"meta": meta, "results": table}, f, indent=2)
    print(f"\nwrote bench/results/h3-{stamp}.json", file=sys.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Cache benchmark: Pylon's cache against NGINX `proxy_cache` and Varnish (Debian's
packages), each pinned to one core (Pylon: worker_threads = 1; NGINX: one worker;
Varnish: one thread pool), the load client on the other. The origin is a small asyncio
server (bench/cache.py --serve-origin) that counts the requests it gets per path.

Scenarios:
- cache hits of a 1 KiB and a 100 KiB object, 50 keep-alive connections (wrk), the
  objects warmed first: requests/s, p50/p99, proxy CPU-microseconds per hit;
- a miss storm: 1,000 concurrent requests (one connection each) for one cold key whose
  origin answer takes 200 ms: how many requests reached the origin, and how long until
  every client had its answer.

Prints one table and Pylon's ratio to the best peer; results go to
bench/results/cache-<date>.json. Never part of the test suite."""

import argparse, asyncio, json, os, subprocess, sys, tempfile, time
from datetime import datetime, timezone

import bench
from bench import Server, cpu_ticks, TICK

ORIGIN = 18090
PROXY = 18091
SIZES = {"/1k": 1024, "/100k": 100 * 1024}


# ---- the origin ----------------------------------------------------------------------

async def serve_origin(port):
    counts = {}

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode()
                path = line.split(" ")[1]
                if path == "/__counts":
                    body = json.dumps(counts).encode()
                    cc = "no-store"
                else:
                    counts[path] = counts.get(path, 0) + 1
                    if path.startswith("/cold"):
                        await asyncio.sleep(0.2)
                    body = b"x" * SIZES.get(path, 64)
                    cc = "max-age=3600"
                writer.write(
                    f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n"
                    f"Cache-Control: {cc}\r\nContent-Type: text/plain\r\n\r\n".encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def origin_counts():
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{ORIGIN}/__counts") as r:
        return json.loads(r.read())


# ---- the proxies ---------------------------------------------------------------------

def pylon_conf(d):
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
idle_timeout = "300s"
[[routes]]
cluster = "origin"
cache = "z"
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:{ORIGIN}"]
response_timeout = "30s"
pool = {{ max_idle_per_endpoint = 1024 }}
[[caches]]
name = "z"
memory = "256MiB"
lock_timeout = "30s"
"""


def nginx_conf(d):
    return f"""
worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/nginx.err;
events {{ worker_connections 65535; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  proxy_cache_path {d}/nginx-cache keys_zone=z:16m max_size=256m inactive=1h;
  upstream origin {{ server 127.0.0.1:{ORIGIN}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{PROXY} backlog=4096;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache z;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 30s;
    }}
  }}
}}"""


def varnish_vcl(d):
    return f"""vcl 4.1;
backend origin {{ .host = "127.0.0.1"; .port = "{ORIGIN}"; }}
"""


def start(name, d, pylon):
    pin = ["taskset", "-c", "1"]
    if name == "pylon":
        conf = os.path.join(d, "pylon-cache.toml")
        open(conf, "w").write(pylon_conf(d))
        return Server(name, pin + [pylon, "run", "-c", conf], PROXY)
    if name == "nginx":
        conf = os.path.join(d, "nginx-cache.conf")
        open(conf, "w").write(nginx_conf(d))
        subprocess.run(["rm", "-rf", os.path.join(d, "nginx-cache")])
        return Server(name, pin + ["nginx", "-c", conf, "-e", os.path.join(d, "nginx.err")], PROXY)
    vcl = os.path.join(d, "cache.vcl")
    open(vcl, "w").write(varnish_vcl(d))
    work = os.path.join(d, "varnish")
    subprocess.run(["rm", "-rf", work])
    return Server(name, pin + ["varnishd", "-F", "-a", f"127.0.0.1:{PROXY}", "-f", vcl,
                               "-s", "malloc,256m", "-n", work, "-p", "thread_pools=1"], PROXY)


# ---- the scenarios -------------------------------------------------------------------

def hits(srv, path, secs):
    for _ in range(3):
        subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{PROXY}{path}"])
    pids = srv.pids()
    t0 = cpu_ticks(pids)
    r = bench.run_wrk(PROXY, 50, secs, path=path)
    if not r:
        return None
    cpu = (cpu_ticks(pids) - t0) / TICK
    r["cpu_us_per_req"] = cpu * 1e6 / r["requests"] if r["requests"] else None
    return r


async def storm_clients(path, n):
    async def one():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", PROXY)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read()
            writer.close()
            return data.startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    t0 = time.time()
    ok = await asyncio.gather(*(one() for _ in range(n)))
    return sum(ok), time.time() - t0


def storm(name, rnd):
    path = f"/cold-{name}-{rnd}"
    ok, took = asyncio.run(storm_clients(path, 1000))
    return {"ok": ok, "seconds": took, "origin_requests": origin_counts().get(path, 0)}


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-origin":
        asyncio.run(serve_origin(int(sys.argv[2])))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--pylon", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="pylon-cache-bench-")
    os.chmod(d, 0o755)
    names = ["pylon", "nginx", "varnish"]
    results = {s: {n: [] for n in names} for s in ["hit_1k", "hit_100k", "storm"]}
    started = time.time()
    origin = Server("origin", ["taskset", "-c", "0", sys.executable, os.path.abspath(__file__),
                               "--serve-origin", str(ORIGIN)], ORIGIN)
    with origin:
        for rnd in range(args.rounds):
            for name in names:
                print(f"[{time.time() - started:5.0f}s] round {rnd + 1} {name}", file=sys.stderr, flush=True)
                with start(name, d, args.pylon) as srv:
                    results["storm"][name].append(storm(name, rnd))
                    results["hit_1k"][name].append(hits(srv, "/1k", args.seconds))
                    results["hit_100k"][name].append(hits(srv, "/100k", args.seconds))
    table = {}
    for sid, rows in results.items():
        table[sid] = {}
        for n, rs in rows.items():
            rs = [r for r in rs if r]
            if rs:
                table[sid][n] = {k: bench.median([r.get(k) for r in rs]) for k in rs[0]}
    titles = {"hit_1k": "cache hits, 1 KiB, 50 conns", "hit_100k": "cache hits, 100 KiB, 50 conns"}
    print(f"\n{'scenario':30} {'proxy':8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11}")
    for sid, title in titles.items():
        for n, r in table[sid].items():
            print(f"{title:30} {n:8} {r['rps']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
                  f"{r['cpu_us_per_req']:11.1f}")
        p = table[sid].get("pylon")
        peers = [r for n, r in table[sid].items() if n != "pylon"]
        if p and peers:
            best = max(peers, key=lambda r: r["rps"])
            cheapest = min(peers, key=lambda r: r["cpu_us_per_req"])
            print(f"{'':30} pylon / best peer: {p['rps'] / best['rps']:.2f}x req/s, "
                  f"{cheapest['cpu_us_per_req'] / p['cpu_us_per_req']:.2f}x CPU per hit (higher is better)")
    print(f"\n{'miss storm: 1,000 requests, one cold key':42} {'origin requests':>16} {'all answered in':>16} {'200s':>6}")
    for n, r in table["storm"].items():
        print(f"{'':42} {n:8} {r['origin_requests']:7.0f} {r['seconds']:14.2f} s {r['ok']:6.0f}")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    versions = {
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
        "varnish": subprocess.run(["varnishd", "-V"], capture_output=True, text=True).stderr.strip().split("\n")[0],
    }
    meta = {"date": stamp, "machine": bench.machine(), "rounds": args.rounds,
            "seconds": args.seconds, "peers": versions}
    with open(os.path.join(bench.HERE, "results", f"cache-{stamp}.json"), "w") as f:
        json.dump({"meta": meta, "results": table}, f, indent=2)
    print(f"\nwrote bench/results/cache-{stamp}.json", file=sys.stderr)


if __name__ == "__main__":
    main()

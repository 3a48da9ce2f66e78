#!/usr/bin/env python3
"""Gateway benchmark: what authentication and rate limits cost per request. Pylon
(worker_threads = 1) and NGINX (one worker) each pinned to one core, the load client
(wrk, 50 keep-alive connections), the origin (NGINX answering a short text) and Redis on
the other.

Scenarios, each on its own route of one Pylon, against a route without them:
- a JWT check, HS256 and ES256 (one token sent again and again: the path of the
  verified-token cache; a signature verification itself is measured by
  `cargo bench -p pylon-proxy --bench jwt`);
- a local rate limit (GCRA, never refusing at this load);
- a global rate limit in Redis (batch = 100), with the Redis round trips counted from
  Pylon's /metrics and Redis's own CPU time;
- NGINX: the same plain route, and `limit_req` (the peer of the local limit);
- with --part2: a 100 KiB JSON answer compressed with gzip (level 6 on both, NGINX
  `gzip on`) and brotli (level 4; Debian's NGINX has no brotli), a static file of 1 KiB
  and of 1 MiB (Pylon `files`, NGINX `root`), and a route split 95/5 between two
  clusters (the cost of an idle canary) beside the plain one.

Prints requests/s, proxy CPU-microseconds per request, and the added cost against the
plain route. That difference is within the run-to-run noise of a 20 us request on a
shared machine, so where `perf` is installed each Pylon scenario is also profiled for a
few seconds and the CPU share of the feature's own functions (self time of the symbols
named in FEATURE_SYMBOLS) is turned into microseconds per request: the "feature us"
column. Results go to bench/results/gateway-<date>.json. Never part of the test suite."""

import argparse, base64, hashlib, hmac, json, os, subprocess, sys, tempfile, time, urllib.request
from datetime import datetime, timezone

import bench
from bench import Server, cpu_ticks, TICK

ORIGIN = bench.ORIGIN
PROXY = bench.PROXY
ADMIN = 18105
REDIS = 18106
SECRET = b"a-benchmark-secret-of-32-bytes!!"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def claims():
    return {"sub": "bench", "iss": "https://issuer.bench", "exp": int(time.time()) + 86400}


def hs256_token():
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    sig = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def es256_token(key):
    """Signed with openssl; its DER (r, s) made into JWS's 64 raw bytes."""
    head = b64(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key],
                         input=f"{head}.{body}".encode(), capture_output=True, check=True).stdout
    i = 2 if der[1] < 0x80 else 3
    ints = []
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        ints.append(int.from_bytes(der[i + 2:i + 2 + n], "big"))
        i += 2 + n
    sig = b"".join(v.to_bytes(32, "big") for v in ints)
    return f"{head}.{body}.{b64(sig)}"


def pylon_conf(d):
    return f"""
[server]
worker_threads = 1
[access_log]
enabled = false
[admin]
bind = "127.0.0.1:{ADMIN}"
[[listeners]]
name = "front"
bind = "127.0.0.1:{PROXY}"
via = false
request_id = false
idle_timeout = "300s"
[[routes]]
path = "/plain"
cluster = "origin"
[[routes]]
path = "/hs256"
cluster = "origin"
auth = ["hs"]
[[routes]]
path = "/es256"
cluster = "origin"
auth = ["es"]
[[routes]]
path = "/local"
cluster = "origin"
rate_limit = ["local"]
[[routes]]
path = "/redis"
cluster = "origin"
rate_limit = ["redis"]
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:{ORIGIN}"]
pool = {{ max_idle_per_endpoint = 1024 }}
[[auth]]
name = "hs"
jwt = {{ algorithms = ["HS256"], key_file = "{d}/hs.key", issuer = "https://issuer.bench" }}
[[auth]]
name = "es"
jwt = {{ algorithms = ["ES256"], key_file = "{d}/es.pub", issuer = "https://issuer.bench" }}
[[routes]]
path = "/data.json"
cluster = "origin"
compression = {{ algorithms = ["gzip"], gzip_level = 6 }}
[[routes]]
path_prefix = "/br/"
prefix_rewrite = "/"
cluster = "origin"
compression = {{ algorithms = ["br"], brotli_level = 4 }}
[[routes]]
path_prefix = "/static/"
files = {{ root = "{d}" }}
[[routes]]
path = "/split"
backends = [{{ cluster = "origin", weight = 95 }}, {{ cluster = "origin-canary", weight = 5 }}]
[[clusters]]
name = "origin-canary"
endpoints = ["127.0.0.1:{ORIGIN}"]
pool = {{ max_idle_per_endpoint = 1024 }}
[[rate_limits]]
name = "local"
rate = 4000000000
per = "1s"
[[rate_limits]]
name = "redis"
key = "route"
rate = 4000000000
per = "1s"
global = {{ redis = "redis://127.0.0.1:{REDIS}", timeout = "200ms", batch = 100 }}
"""


def nginx_conf(d):
    return f"""
worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/nginx.err;
events {{ worker_connections 65535; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 300s; sendfile on; tcp_nopush on;
  limit_req_zone $binary_remote_addr zone=perip:10m rate=1000000r/s;
  upstream origin {{ server 127.0.0.1:{ORIGIN}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{PROXY} backlog=4096;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    location = /plain {{ proxy_pass http://origin; }}
    location = /local {{ limit_req zone=perip burst=1000000 nodelay; proxy_pass http://origin; }}
    location = /data.json {{ gzip on; gzip_comp_level 6; gzip_types application/json; gzip_min_length 256; proxy_pass http://origin; }}
    location /static/ {{ root {d}; }}
  }}
}}"""


# The functions each feature runs, by symbol (self time; the shared hashing, allocation
# and cache code they call is named too).
FEATURE_SYMBOLS = {
    "jwt_hs256": r"filters::auth::|jsonwebtoken|moka::|aws_lc|sip::Hasher|filters::rate_limit::Claims",
    "jwt_es256": r"filters::auth::|jsonwebtoken|moka::|aws_lc|sip::Hasher|filters::rate_limit::Claims",
    "local_limit": r"filters::rate_limit|governor|dashmap|quanta|sip::Hasher",
    "redis_limit": r"filters::rate_limit|redis::|combine::|sip::Hasher|tokio::sync::mutex",
    "split": r"filters::split",
}


def feature_share(pid, path, headers, secs, pattern):
    """The CPU share (0..1) of symbols matching `pattern` while wrk runs, from perf."""
    import re, shutil, threading
    if not shutil.which("perf"):
        return None
    out = os.path.join(tempfile.gettempdir(), f"pylon-gw-{os.getpid()}.perf")
    t = threading.Thread(target=bench.run_wrk, args=(PROXY, 50, secs + 2),
                         kwargs={"path": path, "headers": headers})
    t.start()
    time.sleep(1)
    subprocess.run(["perf", "record", "-F", "1999", "-p", str(pid), "-o", out, "--", "sleep", str(secs)],
                   capture_output=True)
    t.join()
    rep = subprocess.run(["perf", "report", "-i", out, "--no-children", "--sort", "symbol", "--stdio"],
                         capture_output=True, text=True).stdout
    os.unlink(out)
    total = 0.0
    for line in rep.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+\[\.\]\s+(.*)", line)
        if m and re.search(pattern, m.group(2)):
            total += float(m.group(1))
    return total / 100


def metric(name):
    with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def redis_cpu_ticks(pid):
    return cpu_ticks([pid])


def run(srv, path, secs, headers=()):
    pids = srv.pids()
    bench.run_wrk(PROXY, 50, 1, path=path, headers=headers)  # warm
    t0 = cpu_ticks(pids)
    r = bench.run_wrk(PROXY, 50, secs, path=path, headers=headers)
    if not r:
        return None
    cpu = (cpu_ticks(pids) - t0) / TICK
    r["cpu_us_per_req"] = cpu * 1e6 / r["requests"] if r["requests"] else None
    return r


def setup(d):
    """Writes what the gateway's routes and the origin need into `d` (the HS256 secret,
    an ES256 key pair, the JSON document, the static files, the origin's configuration);
    returns the two `Authorization` headers and the origin's configuration file."""
    os.chmod(d, 0o755)
    open(os.path.join(d, "hs.key"), "wb").write(SECRET)
    subprocess.run(["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout",
                    "-out", f"{d}/es.key"], check=True)
    subprocess.run(["openssl", "ec", "-in", f"{d}/es.key", "-pubout", "-out", f"{d}/es.pub"],
                   check=True, capture_output=True)
    hs = f"Authorization: Bearer {hs256_token()}"
    es = f"Authorization: Bearer {es256_token(f'{d}/es.key')}"
    origin_conf = os.path.join(d, "origin.conf")
    os.makedirs(os.path.join(d, "static"), exist_ok=True)
    items = ",".join(f'{{"id": {i}, "name": "item {i}", "price": {i * 7 % 1000}, "tags": ["a", "b"]}}'
                     for i in range(1600))
    doc = ("[" + items + "]").encode()[:100 * 1024]
    os.makedirs(os.path.join(d, "www"), exist_ok=True)
    open(os.path.join(d, "www", "data.json"), "wb").write(doc)
    open(os.path.join(d, "static", "1k.txt"), "wb").write(b"x" * 1024)
    open(os.path.join(d, "static", "1m.bin"), "wb").write(os.urandom(1 << 20))
    conf = bench.origin_conf(d).replace(
        "location = /1m {",
        f"location = /data.json {{ root {d}/www; default_type application/json; }}\n    location = /1m {{")
    open(origin_conf, "w").write(conf)
    return hs, es, origin_conf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pylon", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--part2", action="store_true")
    ap.add_argument("--only", help="comma-separated scenario ids (plain, json_gzip, static_1m, ...)")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="pylon-gateway-bench-")
    hs, es, origin_conf = setup(d)
    scenarios = {
        "pylon": [("plain", "/plain", ()), ("jwt_hs256", "/hs256", (hs,)),
                  ("jwt_es256", "/es256", (es,)), ("local_limit", "/local", ()),
                  ("redis_limit", "/redis", ())],
        "nginx": [("plain", "/plain", ()), ("local_limit", "/local", ())],
    }
    if args.part2:
        gz, br = "Accept-Encoding: gzip", "Accept-Encoding: br"
        scenarios["pylon"] = [("plain", "/plain", ()), ("json_gzip", "/data.json", (gz,)),
                              ("json_br", "/br/data.json", (br,)),
                              ("static_1k", "/static/1k.txt", ()),
                              ("static_1m", "/static/1m.bin", ()), ("split", "/split", ())]
        scenarios["nginx"] = [("plain", "/plain", ()), ("json_gzip", "/data.json", (gz,)),
                              ("static_1k", "/static/1k.txt", ()),
                              ("static_1m", "/static/1m.bin", ())]
    if args.only:
        keep = set(args.only.split(","))
        scenarios = {n: [s for s in sc if s[0] in keep] for n, sc in scenarios.items()}
    results = {n: {s[0]: [] for s in sc} for n, sc in scenarios.items()}
    redis_rows = []
    started = time.time()
    origin = Server("origin", ["taskset", "-c", "0", "nginx", "-c", origin_conf,
                               "-e", os.path.join(d, "origin.err")], ORIGIN)
    redis = Server("redis", ["taskset", "-c", "0", "redis-server", "--port", str(REDIS),
                             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], REDIS)
    with origin, redis:
        for rnd in range(args.rounds):
            for name in ["pylon", "nginx"]:
                print(f"[{time.time() - started:5.0f}s] round {rnd + 1} {name}", file=sys.stderr, flush=True)
                if name == "pylon":
                    conf = os.path.join(d, "pylon.toml")
                    open(conf, "w").write(pylon_conf(d))
                    argv = ["taskset", "-c", "1", args.pylon, "run", "-c", conf]
                else:
                    conf = os.path.join(d, "nginx.conf")
                    open(conf, "w").write(nginx_conf(d))
                    argv = ["taskset", "-c", "1", "nginx", "-c", conf, "-e", os.path.join(d, "nginx.err")]
                with Server(name, argv, PROXY) as srv:
                    for sid, path, headers in scenarios[name]:
                        if sid == "redis_limit":
                            trips0 = metric('pylon_rate_limit_redis_round_trips_total{policy="redis"}') or 0
                            done0 = metric('pylon_rate_limit_admitted_total{policy="redis"}') or 0
                            rcpu0 = redis_cpu_ticks(redis.p.pid)
                        r = run(srv, path, args.seconds, headers)
                        if r and sid == "redis_limit":
                            trips = (metric('pylon_rate_limit_redis_round_trips_total{policy="redis"}') or 0) - trips0
                            done = (metric('pylon_rate_limit_admitted_total{policy="redis"}') or 0) - done0
                            r["redis_round_trips_per_1000"] = trips * 1000 / done if done else None
                            r["redis_cpu_us_per_req"] = (redis_cpu_ticks(redis.p.pid) - rcpu0) / TICK * 1e6 / done if done else None
                        if r and name == "pylon" and sid in FEATURE_SYMBOLS and rnd == 0:
                            share = feature_share(srv.p.pid, path, headers, 4, FEATURE_SYMBOLS[sid])
                            if share is not None:
                                r["feature_us_per_req"] = share * r["cpu_us_per_req"]
                        results[name][sid].append(r)
    table = {}
    for n, rows in results.items():
        table[n] = {}
        for sid, rs in rows.items():
            rs = [r for r in rs if r]
            if rs:
                keys = {k for r in rs for k in r}
                table[n][sid] = {k: bench.median([r.get(k) for r in rs]) for k in keys}
    print(f"\n{'proxy':6} {'scenario':12} {'req/s':>9} {'p99 ms':>7} {'CPU us/req':>11} {'added us':>9} {'feature us':>11} {'non-2xx':>8}")
    for n, rows in table.items():
        base = rows.get("plain", {}).get("cpu_us_per_req")
        for sid, r in rows.items():
            added = r["cpu_us_per_req"] - base if base and sid != "plain" else None
            feat = r.get("feature_us_per_req")
            print(f"{n:6} {sid:12} {r['rps']:9.0f} {r['p99_ms']:7.2f} {r['cpu_us_per_req']:11.2f} "
                  f"{'' if added is None else f'{added:9.2f}':>9} {'' if feat is None else f'{feat:11.2f}':>11} {r['errors']:8.0f}")
    rl = table.get("pylon", {}).get("redis_limit")
    if rl:
        print(f"\nRedis limit: {rl.get('redis_round_trips_per_1000') or 0:.1f} round trips per 1,000 requests, "
              f"Redis CPU {rl.get('redis_cpu_us_per_req') or 0:.2f} us per request")
    p, g = table.get("pylon", {}), table.get("nginx", {})
    if p.get("local_limit") and g.get("local_limit") and p.get("plain") and g.get("plain"):
        pa = p["local_limit"]["cpu_us_per_req"] - p["plain"]["cpu_us_per_req"]
        na = g["local_limit"]["cpu_us_per_req"] - g["plain"]["cpu_us_per_req"]
        print(f"local limit: Pylon adds {pa:.2f} us, NGINX limit_req adds {na:.2f} us; "
              f"with it, Pylon / NGINX: {p['local_limit']['rps'] / g['local_limit']['rps']:.2f}x req/s, "
              f"{g['local_limit']['cpu_us_per_req'] / p['local_limit']['cpu_us_per_req']:.2f}x CPU per request (higher is better)")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    versions = {
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
        "redis": subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip(),
    }
    meta = {"date": stamp, "machine": bench.machine(), "rounds": args.rounds,
            "seconds": args.seconds, "peers": versions}
    with open(os.path.join(bench.HERE, "results", f"gateway-{stamp}.json"), "w") as f:
        json.dump({"meta": meta, "results": table}, f, indent=2)
    print(f"\nwrote bench/results/gateway-{stamp}.json", file=sys.stderr)


if __name__ == "__main__":
    main()

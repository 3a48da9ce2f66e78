#!/usr/bin/env python3
"""Runs Pylon, NGINX and HAProxy in turn on the same scenarios against one fast origin
(NGINX, `return 200`, one worker) and prints one table: requests/s, p50/p99 latency,
proxy CPU-microseconds per request, proxy peak RSS, and Pylon's ratio to the best peer.
Results go to bench/results/<date>.json and bench/results/latest.svg."""

import argparse, asyncio, json, os, platform, re, shutil, signal, socket, subprocess
import ssl, sys, tempfile, time
from datetime import datetime, timezone

ORIGIN = 18080
PROXY = 18081
HERE = os.path.dirname(os.path.abspath(__file__))
TICK = os.sysconf("SC_CLK_TCK")


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port}")


def wait_closed(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                time.sleep(0.02)
        except OSError:
            return


def proc_tree(pid):
    """pid and all its descendants (NGINX and HAProxy fork workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            kids = open(f"/proc/{p}/task/{p}/children").read().split()
        except OSError:
            kids = []
        todo.extend(int(k) for k in kids)
    return out


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except OSError:
            pass
    return total


def rss_kib(pids, field="VmRSS"):
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


# ---------------------------------------------------------------- configurations

def origin_conf(d):
    body = os.path.join(d, "www")
    os.makedirs(body, exist_ok=True)
    with open(os.path.join(body, "1m"), "wb") as f:
        f.write(b"x" * (1 << 20))
    return f"""
worker_processes 1; daemon off; pid {d}/origin.pid; error_log {d}/origin.err;
events {{ worker_connections 65535; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{ORIGIN} backlog=4096;
    location = /1m {{ root {body}; }}
    location / {{ return 200 "hello from the origin\\n"; }}
  }}
}}"""


def nginx_conf(d, mode):
    # `deferred`: TCP_DEFER_ACCEPT, as Pylon's listeners have by default (`defer_accept`).
    listen = f"127.0.0.1:{PROXY} backlog=4096 deferred" + {"h1": "", "h2c": " http2", "tls": " ssl http2"}[mode]
    tls = (f"ssl_certificate {d}/certs/cert.pem; ssl_certificate_key {d}/certs/key.pem; "
           "ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;") if mode == "tls" else ""
    return f"""
worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/nginx.err;
events {{ worker_connections 65535; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  upstream origin {{ server 127.0.0.1:{ORIGIN}; keepalive 128; }}
  server {{
    listen {listen};
    {tls}
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering on;
    }}
  }}
}}"""


def haproxy_conf(d, mode):
    proto = {"h1": "", "h2c": " proto h2", "tls": f" ssl crt {d}/certs/combined.pem alpn h2,http/1.1"}[mode]
    return f"""
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:{PROXY}{proto} defer-accept
  default_backend be
backend be
  server origin 127.0.0.1:{ORIGIN}
"""


def pylon_conf(d, mode):
    tls = f"""protocol = "https"
tls = {{ certificates = [{{ cert = "{d}/certs/cert.pem", key = "{d}/certs/key.pem" }}] }}
""" if mode == "tls" else ""
    return f"""
[server]
worker_threads = 1
[access_log]
enabled = false
[[listeners]]
name = "front"
bind = "127.0.0.1:{PROXY}"
{tls}via = false
request_id = false
idle_timeout = "300s"
[[routes]]
cluster = "origin"
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:{ORIGIN}"]
pool = {{ max_idle_per_endpoint = 1024 }}
"""


class Server:
    def __init__(self, name, argv, port):
        self.name, self.argv, self.port = name, argv, port

    def __enter__(self):
        # Something else on the port would answer in this server's place.
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            sys.exit(f"bench: 127.0.0.1:{self.port} is taken by another process; "
                     f"stop it before running the benchmark ({self.name} listens there)")
        except OSError:
            pass
        self.p = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            wait_port(self.port)
        except RuntimeError:
            # Never came up: stopped here, since the block (and __exit__) will not run.
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
            raise
        return self

    def pids(self):
        return proc_tree(self.p.pid)

    def __exit__(self, *a):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait()
        wait_closed(self.port)


def start_proxy(name, d, mode, pylon):
    if name == "origin":
        return None
    conf = os.path.join(d, f"{name}-{mode}.conf")
    text = {"nginx": nginx_conf, "haproxy": haproxy_conf, "pylon": pylon_conf}[name](d, mode)
    open(conf, "w").write(text)
    argv = {
        "nginx": ["nginx", "-c", conf, "-e", os.path.join(d, "nginx.err")],
        "haproxy": ["haproxy", "-db", "-f", conf],
        "pylon": [pylon, "run", "-c", conf],
    }[name]
    return Server(name, argv, PROXY)


# ---------------------------------------------------------------- load generators

def parse_latency(s):
    m = re.match(r"([\d.]+)(us|ms|s)", s)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v if u == "ms" else v * 1000


def run_wrk(port, conns, secs, path="/", new_conn=False, scheme="http", headers=()):
    for attempt in range(2):
        r = run_wrk_once(port, conns, secs, path, new_conn, scheme, headers)
        if r:
            return r
        time.sleep(2)  # let sockets in TIME_WAIT clear before the retry
    return None


def run_wrk_once(port, conns, secs, path, new_conn, scheme, headers=()):
    argv = ["wrk", "-t", "1", "-c", str(conns), "-d", f"{secs}s", "--latency", "--timeout", "10s"]
    if new_conn:
        argv += ["-H", "Connection: close"]
    for h in headers:
        argv += ["-H", h]
    argv.append(f"{scheme}://127.0.0.1:{port}{path}")
    out = subprocess.run(argv, capture_output=True, text=True).stdout
    # (wrk pads a figure in seconds with a space: "1.46s ".)
    if not re.search(r"^\s+99%\s+[\d.]+(us|ms|s)\s*$", out, re.M) or "Requests/sec" not in out:
        print(f"wrk gave no usable figures:\n{out}", file=sys.stderr)
        return None
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = parse_latency(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = parse_latency(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "requests": reqs, "p50_ms": p50, "p99_ms": p99,
            "errors": int(errors.group(1)) if errors else 0}


def run_h2load(port, secs, scheme="http", path="/"):
    # h2load's summary gives only min, max and mean; its per-request log (start,
    # status, microseconds) gives the percentiles, as wrk's --latency does.
    with tempfile.NamedTemporaryFile(prefix="pylon-bench-h2load-", suffix=".log") as log:
        argv = ["h2load", "-c", "10", "-m", "10", "-t", "1", "-D", str(secs),
                f"--log-file={log.name}", f"{scheme}://127.0.0.1:{port}{path}"]
        out = subprocess.run(argv, capture_output=True, text=True).stdout
        times = sorted(int(row.split("\t")[2]) for row in open(log.name) if row.count("\t") >= 2)
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
    # Requests that failed or errored, and 4xx/5xx answers (wrk's "Non-2xx or 3xx").
    failed = re.search(r"\d+ succeeded, (\d+) failed, (\d+) errored", out)
    codes = re.search(r"status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx, (\d+) 5xx", out)
    errors = sum(int(g) for m in (failed, codes) if m for g in m.groups())
    if not times:
        print(f"h2load gave no usable figures:\n{out}", file=sys.stderr)
        return None
    return {"rps": rps, "requests": done, "p50_ms": percentile(times, 0.50) / 1000,
            "p99_ms": percentile(times, 0.99) / 1000, "errors": errors}


def percentile(sorted_us, q):
    return sorted_us[min(len(sorted_us) - 1, int(len(sorted_us) * q))]


async def hold_idle(port, n, tls=False):
    """Opens n keep-alive connections (TLS ones when `tls`), each completing one request,
    and holds them."""
    conns = []
    sem = asyncio.Semaphore(500)
    ctx = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])

    async def one():
        async with sem:
            r, w = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if tls else None)
            w.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            await w.drain()
            await r.readuntil(b"\r\n\r\n")
            conns.append((r, w))

    await asyncio.gather(*(one() for _ in range(n)))
    return conns


def settled_rss(pids, limit=15.0):
    """RSS once it has stopped moving (three samples a second apart within 1%, at most
    `limit` seconds): what idle connections cost once each server has done what it
    does with idle connections (Pylon parks them after 250 ms; its allocator gives the
    freed pages back within about two seconds)."""
    samples = [rss_kib(pids)]
    end = time.time() + limit
    while time.time() < end:
        time.sleep(1.0)
        samples.append(rss_kib(pids))
        last = samples[-3:]
        if len(last) == 3 and max(last) - min(last) <= 0.01 * max(last):
            break
    return samples[-1]


def idle_memory(server, port, n, tls=False):
    base = rss_kib(server.pids())
    loop = asyncio.new_event_loop()
    conns = loop.run_until_complete(hold_idle(port, n, tls))
    held = settled_rss(server.pids())
    for _, w in conns:
        w.close()
    loop.close()
    return {"rps": 0, "requests": n, "p50_ms": 0, "p99_ms": 0, "errors": 0,
            "rss_per_conn_kib": (held - base) / n, "rss_kib": held}


# ---------------------------------------------------------------- scenarios

# (id, title, downstream mode: h1 | h2c | tls)
SCENARIOS = [
    ("h1_keepalive_50", "HTTP/1.1 keep-alive, 50 conns", "h1"),
    ("h1_new_conn", "HTTP/1.1 new connection per request", "h1"),
    ("h1_1000_conns", "HTTP/1.1, 1,000 conns", "h1"),
    ("h2c_10x10", "h2c 10 conns x 10 streams", "h2c"),
    ("body_1mib", "1 MiB responses, 10 conns", "h1"),
    ("tls_handshake", "TLS 1.3 handshakes (new conn/request)", "tls"),
    ("https_h1_50", "HTTPS HTTP/1.1 keep-alive, 50 conns", "tls"),
    ("https_h2_10x10", "HTTPS HTTP/2 10 conns x 10 streams", "tls"),
    ("idle_8k", "8,000 idle keep-alive conns (RSS)", "h1"),
    ("idle_tls_4k", "4,000 idle TLS conns (RSS)", "tls"),
]
# Scenarios that measure memory per held connection, not requests.
IDLE = ("idle_8k", "idle_tls_4k")


def measure(sid, server, port, secs, idle_n):
    pids = server.pids() if server else []
    t0 = cpu_ticks(pids)
    if sid == "h1_keepalive_50":
        r = run_wrk(port, 50, secs)
    elif sid == "h1_new_conn":
        r = run_wrk(port, 50, secs, new_conn=True)
    elif sid == "h1_1000_conns":
        r = run_wrk(port, 1000, secs)
    elif sid == "h2c_10x10":
        r = run_h2load(port, secs)
    elif sid == "body_1mib":
        r = run_wrk(port, 10, secs, path="/1m")
    elif sid == "tls_handshake":
        r = run_wrk(port, 50, secs, new_conn=True, scheme="https")
    elif sid == "https_h1_50":
        r = run_wrk(port, 50, secs, scheme="https")
    elif sid == "https_h2_10x10":
        r = run_h2load(port, secs, scheme="https")
    elif sid == "idle_tls_4k":
        r = idle_memory(server, port, idle_n // 2, tls=True) if server else None
    else:
        r = idle_memory(server, port, idle_n) if server else None
    if r is None:
        return None
    pids = server.pids() if server else []
    used = (cpu_ticks(pids) - t0) / TICK
    r["cpu_us_per_req"] = used * 1e6 / r["requests"] if (server and r["requests"]) else None
    r["peak_rss_kib"] = rss_kib(pids, "VmHWM") if server else None
    return r


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pylon", required=True)
    ap.add_argument("--quick", action="store_true", help="one short round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--only", help="comma-separated scenario ids")
    args = ap.parse_args()
    rounds, secs, idle_n = (1, 3, 2000) if args.quick else (args.rounds, args.seconds, 8000)
    scen = [s for s in SCENARIOS if not args.only or s[0] in args.only.split(",")]
    names = ["origin", "pylon", "nginx", "haproxy"]
    d = tempfile.mkdtemp(prefix="pylon-bench-")
    os.chmod(d, 0o755)  # NGINX workers run unprivileged and must read the origin's files
    open(os.path.join(d, "origin.conf"), "w").write(origin_conf(d))
    # One ECDSA P-256 certificate for every proxy's TLS scenarios.
    subprocess.run([args.pylon, "cert", "selfsigned", "--name", "localhost", "--out",
                    os.path.join(d, "certs")], check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(d, "certs", "combined.pem"), "w") as f:
        for part in ("cert.pem", "key.pem"):
            f.write(open(os.path.join(d, "certs", part)).read())
    results = {s[0]: {n: [] for n in names} for s in scen}
    started = time.time()
    with Server("origin", ["nginx", "-c", os.path.join(d, "origin.conf")], ORIGIN):
        for rnd in range(rounds):
            for sid, title, mode in scen:
                for name in names:  # interleaved: A, B, C, A, B, C, ...
                    if name == "origin" and sid in IDLE:
                        continue
                    if name == "origin" and mode != "h1":
                        continue  # the origin speaks cleartext HTTP/1.1 only
                    print(f"[{time.time() - started:6.0f}s] round {rnd + 1}/{rounds} {sid:16} {name}",
                          file=sys.stderr, flush=True)
                    ctx = start_proxy(name, d, mode, args.pylon)
                    if ctx is None:
                        results[sid][name].append(measure(sid, None, ORIGIN, secs, idle_n))
                    else:
                        with ctx as srv:
                            results[sid][name].append(measure(sid, srv, PROXY, secs, idle_n))
    shutil.rmtree(d, ignore_errors=True)

    table = {}
    for sid, title, _ in scen:
        table[sid] = {}
        for name in names:
            runs = [r for r in results[sid][name] if r]
            if not runs:
                continue
            keys = runs[0].keys()
            table[sid][name] = {k: median([r.get(k) for r in runs]) for k in keys}
    print(f"Pylon build: {build()}")
    print_table(scen, table)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    meta = {"date": stamp, "machine": machine(), "rounds": rounds, "seconds": secs,
            "quick": args.quick, "pylon_build": build()}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", f"{stamp}.json"), "w") as f:
        json.dump({"meta": meta, "results": table}, f, indent=2)
    svg(scen, table, meta, os.path.join(HERE, "results", "latest.svg"))
    print(f"\nwrote bench/results/{stamp}.json and bench/results/latest.svg", file=sys.stderr)


def machine():
    cpu = "unknown cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}"


def build():
    """Which Pylon build was measured: "pgo" (scripts/build-pgo.sh, what bench/run.sh
    measures by default) or "release" (plain `cargo build --release`), as bench/run.sh
    says in PYLON_BUILD; "unknown" when bench.py was started by hand."""
    return os.environ.get("PYLON_BUILD", "unknown")


def ratio(table_row, key, higher_better):
    p = table_row.get("pylon", {}).get(key)
    peers = [table_row.get(n, {}).get(key) for n in ("nginx", "haproxy")]
    peers = [x for x in peers if x]
    if not p or not peers:
        return None
    best = max(peers) if higher_better else min(peers)
    return p / best if higher_better else best / p


def print_table(scen, table):
    hdr = f"{'scenario':34} {'proxy':8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU-us/req':>10} {'peak RSS':>10}"
    print(hdr)
    print("-" * len(hdr))
    for sid, title, _ in scen:
        for name, r in table[sid].items():
            cpu = f"{r['cpu_us_per_req']:.1f}" if r.get("cpu_us_per_req") else "-"
            rss = f"{r['peak_rss_kib'] / 1024:.1f}M" if r.get("peak_rss_kib") else "-"
            if sid in IDLE:
                print(f"{title:34} {name:8} {'-':>10} {'-':>8} {'-':>8} {'-':>10} {rss:>10}  "
                      f"{r['rss_per_conn_kib']:.2f} KiB/conn")
            else:
                bad = f"  ({r['errors']:.0f} errors)" if r.get("errors") else ""
                print(f"{title:34} {name:8} {r['rps']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {cpu:>10} {rss:>10}{bad}")
        row = table[sid]
        if sid in IDLE:
            parts = [("KiB/conn", ratio(row, "rss_per_conn_kib", False))]
        else:
            parts = [("req/s", ratio(row, "rps", True)), ("p99", ratio(row, "p99_ms", False)),
                     ("CPU/req", ratio(row, "cpu_us_per_req", False))]
        txt = ", ".join(f"{k} {v:.2f}x" for k, v in parts if v)
        print(f"{'':34} pylon vs best peer: {txt}  (>1 means Pylon is better)")


def svg(scen, table, meta, path):
    colors = {"origin": "#999999", "pylon": "#2b7bb9", "nginx": "#3a9a3a", "haproxy": "#c0392b"}
    rows = [(sid, title) for sid, title, _ in scen if sid not in IDLE]
    w, bar, gap = 900, 14, 18
    h = 80 + len(rows) * (4 * bar + gap)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<text x="10" y="20" font-size="15">Requests/s by scenario (median) — {meta["date"]}, {meta["machine"]}, Pylon build: {meta.get("pylon_build", "unknown")}</text>']
    y = 45
    for sid, title in rows:
        vals = {n: r["rps"] for n, r in table[sid].items()}
        top = max(vals.values()) if vals else 1
        out.append(f'<text x="10" y="{y}" font-weight="bold">{title}</text>')
        y += 6
        for n, v in vals.items():
            bw = int(560 * v / top) if top else 0
            out.append(f'<rect x="200" y="{y}" width="{bw}" height="{bar - 2}" fill="{colors[n]}"/>')
            out.append(f'<text x="195" y="{y + bar - 4}" text-anchor="end">{n}</text>')
            out.append(f'<text x="{205 + bw}" y="{y + bar - 4}">{v:,.0f}</text>')
            y += bar
        y += gap
    out.append("</svg>")
    open(path, "w").write("\n".join(out))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Soak: mixed HTTP/1.1, HTTP/2, WebSocket and gRPC traffic through one Pylon for a
while (10 minutes by default), with random origin failures (processes killed and
restarted) and configuration reloads, then a report: client outcomes by cause, Pylon's
proxy-made errors by reason, RSS and open file descriptors over time, connections left
open at the end. Not part of the test suite: bench/run.sh --soak runs it.

Usage: bench/soak.py --pylon target/release/pylon --load target/release/pylon-bench-load
       [--seconds 600] [--seed N]"""

import argparse, json, os, random, signal, subprocess, sys, tempfile, time, urllib.request
from datetime import datetime, timezone

import bench

FRONT, ADMIN = 18180, 18190
HTTP_A, HTTP_B, WS, GRPC = 18181, 18182, 18183, 18184


def nginx_conf(d, port):
    return f"""
worker_processes 1; daemon off; pid {d}/nginx-{port}.pid; error_log {d}/nginx-{port}.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "origin {port}\\n"; }} }}
}}"""


def pylon_conf(variant):
    extra = f'[[routes]]\nname = "extra"\npath = "/extra-{variant}"\nrespond = {{ body = "v{variant}" }}\n'
    return f"""
[server]
drain_timeout = "5s"
reload_grace = "5s"
[admin]
bind = "127.0.0.1:{ADMIN}"
[access_log]
enabled = false
[[listeners]]
name = "front"
bind = "127.0.0.1:{FRONT}"
{extra}
[[routes]]
name = "ws"
path_prefix = "/ws"
cluster = "ws"
[[routes]]
name = "grpc"
path_prefix = "/bench.B/"
grpc = true
cluster = "grpc"
[[routes]]
name = "web"
cluster = "web"
[[clusters]]
name = "web"
endpoints = ["127.0.0.1:{HTTP_A}", "127.0.0.1:{HTTP_B}"]
health_check = {{ path = "/", interval = "500ms", timeout = "500ms" }}
retry = {{ max_retries = 2 }}
outlier_detection = {{ consecutive_failures = 3 }}
pool = {{ idle_timeout = "3s" }}
[[clusters]]
name = "ws"
endpoints = ["127.0.0.1:{WS}"]
[[clusters]]
name = "grpc"
protocol = "h2c"
endpoints = ["127.0.0.1:{GRPC}"]
pool = {{ idle_timeout = "3s" }}
"""


class Proc:
    def __init__(self, name, argv, port):
        self.name, self.argv, self.port, self.p = name, argv, port, None

    def start(self):
        self.p = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        bench.wait_port(self.port)

    def kill(self):
        if self.p and self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
            bench.wait_closed(self.port)


def metrics():
    text = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        k, v = line.rsplit(" ", 1)
        try:
            out[k] = float(v)
        except ValueError:
            pass
    return out


def reload(variant):
    req = urllib.request.Request(f"http://127.0.0.1:{ADMIN}/reload", data=pylon_conf(variant).encode(),
                                 method="POST")
    return json.loads(urllib.request.urlopen(req, timeout=10).read())["status"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pylon", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    d = tempfile.mkdtemp(prefix="pylon-soak-")
    os.chmod(d, 0o755)
    origins = {}
    for port in (HTTP_A, HTTP_B):
        conf = os.path.join(d, f"nginx-{port}.conf")
        open(conf, "w").write(nginx_conf(d, port))
        origins[f"http-{port}"] = Proc(f"http-{port}", ["nginx", "-c", conf], port)
    origins["ws"] = Proc("ws", [args.load, "ws-echo-server", str(WS)], WS)
    origins["grpc"] = Proc("grpc", [args.load, "grpc-server", str(GRPC)], GRPC)
    for o in origins.values():
        o.start()
    conf = os.path.join(d, "pylon.toml")
    open(conf, "w").write(pylon_conf(0))
    pylon = Proc("pylon", [args.pylon, "run", "-c", conf], FRONT)
    pylon.start()
    bench.wait_port(ADMIN)
    client = subprocess.Popen([args.load, "soak", f"127.0.0.1:{FRONT}", str(args.seconds)],
                              stdout=subprocess.PIPE, text=True)
    start = time.time()
    samples, events, reloads = [], [], {"ok": 0, "refused": 0}
    variant, down = 0, {}
    next_sample = start
    print(f"soak: {args.seconds}s, seed {args.seed}", file=sys.stderr)
    while time.time() - start < args.seconds:
        now = time.time()
        if now >= next_sample:
            m = metrics()
            samples.append({"t": round(now - start), "rss_kib": int(m.get("process_resident_memory_bytes", 0) / 1024),
                            "fds": int(m.get("process_open_fds", 0)),
                            "connections": int(m.get("pylon_connections_active", 0))})
            print(f"[{samples[-1]['t']:4}s] {samples[-1]}", file=sys.stderr, flush=True)
            next_sample = now + 10
        for name, until in list(down.items()):
            if now >= until:
                origins[name].start()
                events.append((round(now - start), f"{name} restarted"))
                del down[name]
        action = rnd.random()
        if action < 0.25 and len(down) < 2:
            name = rnd.choice([n for n in origins if n not in down])
            origins[name].kill()
            down[name] = now + rnd.uniform(1, 5)
            events.append((round(now - start), f"{name} killed"))
        elif action < 0.6:
            variant += 1
            reloads["ok" if reload(variant) == "ok" else "refused"] += 1
        time.sleep(rnd.uniform(1, 4))
    out, _ = client.communicate(timeout=60)
    for name in list(down):
        origins[name].start()
    # Longer than reload_grace and the pools' idle timeout: what is open now is a leak.
    time.sleep(10)
    final = metrics()
    samples.append({"t": round(time.time() - start), "rss_kib": int(final.get("process_resident_memory_bytes", 0) / 1024),
                    "fds": int(final.get("process_open_fds", 0)),
                    "connections": int(final.get("pylon_connections_active", 0))})
    proxy_errors = {k.split('"')[1]: int(v) for k, v in final.items()
                    if k.startswith("pylon_proxy_errors_total{") and v > 0}
    report = {
        "meta": {"date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%MZ"), "seconds": args.seconds,
                 "seed": args.seed, "machine": bench.machine()},
        "client": json.loads(out),
        "proxy_errors": proxy_errors,
        "reloads": reloads,
        "origin_events": len(events),
        "rss_kib": {"start": samples[0]["rss_kib"], "end": samples[-1]["rss_kib"],
                    "max": max(s["rss_kib"] for s in samples)},
        "fds": {"start": samples[0]["fds"], "end": samples[-1]["fds"], "max": max(s["fds"] for s in samples)},
        "connections_open_at_end": samples[-1]["connections"],
        "samples": samples,
    }
    pylon.kill()
    for o in origins.values():
        o.kill()
    path = os.path.join(bench.HERE, "results", f"soak-{report['meta']['date']}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    summary = {k: v for k, v in report.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

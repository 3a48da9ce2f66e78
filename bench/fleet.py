#!/usr/bin/env python3
"""Fleet benchmark: what a fleet of Pylon instances asks of etcd and Redis, measured on
one machine so that docs/operations.md can size a fleet of 10 and 100 from figures,
not guesses.

Starts etcd (with its Prometheus metrics), Redis, a demo backend (Pylon answering a
short text) and N instances (default 10) run with --config-source, then measures:
- idle: etcd's requests per second (unary RPCs and lease keep-alive messages), its
  watchers, CPU and memory, with the N instances registered and watching;
- a configuration push: how long until every instance runs the new revision, and the
  writes and watch events it causes in etcd;
- a global rate limit in Redis (key `header:x-user`, 1,000 users, default batch =
  burst / 20): wrk through one instance; requests admitted, Redis round trips, and
  Redis's CPU time and the script's own time (INFO commandstats) per round trip.

Results go to bench/results/fleet-<date>-<N>.json. Never part of the test suite."""

import argparse, json, os, re, socket, subprocess, tempfile, time, urllib.request
from datetime import datetime, timezone

import bench
from bench import cpu_ticks, TICK


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def etcd_metrics(port):
    """Sums of the etcd series this benchmark reads."""
    text = get(f"http://127.0.0.1:{port}/metrics")
    want = {
        "unary": r'^grpc_server_handled_total\{[^}]*grpc_type="unary"',
        "keepalive_msgs": r'^grpc_server_msg_received_total\{[^}]*grpc_method="LeaseKeepAlive"',
        "watch_msgs_sent": r'^grpc_server_msg_sent_total\{[^}]*grpc_method="Watch"',
        "watchers": r"^etcd_debugging_mvcc_watcher_total ",
        "watch_streams": r"^etcd_debugging_mvcc_watch_stream_total ",
        "puts": r"^etcd_mvcc_put_total ",
        "txns": r"^etcd_mvcc_txn_total ",
        "events": r"^etcd_debugging_mvcc_events_total ",
        "rss": r"^process_resident_memory_bytes ",
    }
    out = {k: 0.0 for k in want}
    for line in text.splitlines():
        for k, pat in want.items():
            if re.match(pat, line):
                out[k] += float(line.rsplit(" ", 1)[1])
    return out


def pylon_metric(admin, series):
    for line in get(f"http://{admin}/metrics").splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def admin_addr(log_path, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = re.search(r"admin API on http://(\S+)", open(log_path).read())
        if m:
            return m.group(1)
        time.sleep(0.1)
    raise SystemExit(f"no admin address in {log_path}")


def wait(what, cond, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"gave up waiting for {what}")


def redis_info(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "commandstats"],
                         capture_output=True, text=True, check=True).stdout
    stats = {}
    for line in out.splitlines():
        m = re.match(r"cmdstat_(\w+):calls=(\d+),usec=(\d+)", line)
        if m:
            stats[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return stats


DOC = """
[access_log]
enabled = false
[admin]
bind = "127.0.0.1:0"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
[[rate_limits]]
name = "fleet-wide"
key = "header:x-user"
rate = 100000
per = "1s"
burst = {burst}
global = {{ redis = "redis://127.0.0.1:{redis}", timeout = "200ms" }}
[[routes]]
cluster = "demo"
rate_limit = ["fleet-wide"]
response_headers = {{ set = {{ x-revision = "{revision}" }} }}
[[clusters]]
name = "demo"
endpoints = ["127.0.0.1:{backend}"]
"""

BACKEND = """
[access_log]
enabled = false
[admin]
enabled = false
[[listeners]]
name = "backend"
bind = "127.0.0.1:{port}"
[[routes]]
respond = {{ body = "ok" }}
"""

WRK_USERS = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/", { ["x-user"] = "user-" .. (counter % 1000) })
end
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pylon", default="target/release/pylon")
    ap.add_argument("--instances", type=int, default=10)
    ap.add_argument("--idle-seconds", type=int, default=30)
    ap.add_argument("--load-seconds", type=int, default=10)
    ap.add_argument("--burst", type=int, default=2000)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="pylon-fleet-bench.")
    client, peer, metrics_port = free_port(), free_port(), free_port()
    redis_port, backend_port = free_port(), free_port()
    procs = []

    def spawn(name, argv):
        log = open(os.path.join(d, name + ".log"), "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    try:
        etcd = spawn("etcd", ["etcd", "--name", "bench", "--data-dir", os.path.join(d, "etcd"),
                              "--listen-client-urls", f"http://127.0.0.1:{client}",
                              "--advertise-client-urls", f"http://127.0.0.1:{client}",
                              "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                              "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                              "--initial-cluster", f"bench=http://127.0.0.1:{peer}",
                              "--listen-metrics-urls", f"http://127.0.0.1:{metrics_port}"])
        redis = spawn("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
                                "--save", "", "--appendonly", "no"])
        bench.wait_port(client)
        bench.wait_port(redis_port)
        wait("etcd metrics", lambda: etcd_metrics(metrics_port) is not None)
        open(os.path.join(d, "backend.toml"), "w").write(BACKEND.format(port=backend_port))
        spawn("backend", [a.pylon, "run", "-c", os.path.join(d, "backend.toml")])
        bench.wait_port(backend_port)

        url = f"etcd://127.0.0.1:{client}/fleet-bench"

        def push(revision):
            path = os.path.join(d, f"doc-{revision}.toml")
            open(path, "w").write(DOC.format(burst=a.burst, redis=redis_port,
                                             backend=backend_port, revision=revision))
            subprocess.run([a.pylon, "config", "push", path, url], check=True,
                           capture_output=True)

        push(1)
        admins = []
        for i in range(a.instances):
            name = f"i{i}"
            spawn(name, [a.pylon, "run", "--config-source", url, "--config-cache",
                         os.path.join(d, name + ".cache"), "--instance-name", name])
            admins.append(admin_addr(os.path.join(d, name + ".log")))
        wait("every member listed",
             lambda: all(len(json.loads(get(f"http://{x}/fleet"))["members"]) == a.instances
                         for x in admins))

        # Idle: what N registered, watching instances ask of etcd.
        m0, c0, t0 = etcd_metrics(metrics_port), cpu_ticks([etcd.pid]), time.time()
        time.sleep(a.idle_seconds)
        m1, c1, t1 = etcd_metrics(metrics_port), cpu_ticks([etcd.pid]), time.time()
        secs = t1 - t0
        idle = {
            "instances": a.instances,
            "seconds": round(secs, 1),
            "unary_rpcs_per_s": round((m1["unary"] - m0["unary"]) / secs, 2),
            "keepalive_msgs_per_s": round((m1["keepalive_msgs"] - m0["keepalive_msgs"]) / secs, 2),
            "writes_per_s": round((m1["puts"] + m1["txns"] - m0["puts"] - m0["txns"]) / secs, 3),
            "watchers": m1["watchers"],
            "watch_streams": m1["watch_streams"],
            "etcd_cpu_percent": round(100 * (c1 - c0) / TICK / secs, 2),
            "etcd_rss_mib": round(m1["rss"] / 2**20, 1),
        }
        print("idle:", json.dumps(idle))

        # A push: time until all run it, and what it wrote and sent.
        before = etcd_metrics(metrics_port)
        revision_before = json.loads(get(f"http://{admins[0]}/fleet"))["config_revision"]
        start = time.time()
        push(2)
        wait("the new revision everywhere",
             lambda: all(json.loads(get(f"http://{x}/fleet"))["config_revision"] > revision_before
                         for x in admins))
        applied = time.time() - start
        # The members' entries follow (each instance writes its new revision).
        wait("members at the new revision",
             lambda: all(m["config_revision"] > revision_before
                         for m in json.loads(get(f"http://{admins[0]}/fleet"))["members"]))
        time.sleep(1)
        after = etcd_metrics(metrics_port)
        push_row = {
            "applied_everywhere_s": round(applied, 3),
            "writes": after["puts"] + after["txns"] - before["puts"] - before["txns"],
            "watch_messages_sent": after["watch_msgs_sent"] - before["watch_msgs_sent"],
        }
        print("push:", json.dumps(push_row))

        # Redis: a global limit through one instance.
        web = None
        for line in open(os.path.join(d, "i0.log")):
            m = re.search(r"listening on http://(\S+) \(listener web\)", line)
            if m:
                web = m.group(1)
        script = os.path.join(d, "users.lua")
        open(script, "w").write(WRK_USERS)
        trips_series = 'pylon_rate_limit_redis_round_trips_total{policy="fleet-wide"}'
        admitted_series = 'pylon_rate_limit_admitted_total{policy="fleet-wide"}'
        r0 = redis_info(redis_port)
        rc0 = cpu_ticks([redis.pid])
        trips0 = pylon_metric(admins[0], trips_series)
        adm0 = pylon_metric(admins[0], admitted_series)
        out = subprocess.run(["wrk", "-t", "1", "-c", "50", "-d", f"{a.load_seconds}s",
                              "-s", script, f"http://{web}/"],
                             capture_output=True, text=True, check=True).stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        trips = pylon_metric(admins[0], trips_series) - trips0
        admitted = pylon_metric(admins[0], admitted_series) - adm0
        rc1 = cpu_ticks([redis.pid])
        r1 = redis_info(redis_port)
        script_calls = sum(r1[k][0] - r0.get(k, (0, 0))[0] for k in r1 if k in ("evalsha", "eval"))
        script_usec = sum(r1[k][1] - r0.get(k, (0, 0))[1] for k in r1 if k in ("evalsha", "eval"))
        redis_row = {
            "requests_per_s": rps,
            "admitted": admitted,
            "batch": max(1, min(100, a.burst // 20)),
            "round_trips": trips,
            "round_trips_per_1000_requests": round(1000 * trips / max(admitted, 1), 2),
            "redis_cpu_us_per_round_trip": round((rc1 - rc0) / TICK * 1e6 / max(trips, 1), 1),
            "script_us_per_call": round(script_usec / max(script_calls, 1), 2),
        }
        print("redis:", json.dumps(redis_row))
        result = {"date": datetime.now(timezone.utc).isoformat(), "machine": bench.machine(),
                  "idle": idle, "push": push_row, "redis": redis_row}
        os.makedirs("bench/results", exist_ok=True)
        path = f"bench/results/fleet-{datetime.now(timezone.utc):%Y-%m-%dT%H%MZ}-{a.instances}.json"
        open(path, "w").write(json.dumps(result, indent=1))
        print("saved", path)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, 9)
            except ProcessLookupError:
                pass
            p.wait()


if __name__ == "__main__":
    main()

"""TURN relay benchmark: Pylon against coturn (Debian's `turnserver`), each pinned to one
core with one relay thread, driven by the same client: coturn's `turnutils_uclient`
(many sessions, each sending messages through its allocation's channel to an echo peer,
`turnutils_peer`), client and peer on the other core.

Scenarios: 200-byte and 1,200-byte messages (audio-sized and video-sized datagrams),
UDP between client and server; and allocations per second (sessions that allocate,
bind a channel, send one message and leave). Reported per server: packets relayed per
second (each message crosses the relay twice: to the peer and back), Mbit/s relayed,
server CPU-microseconds per relayed packet, messages lost, and allocations per second.
Results go to bench/results/turn-<date>.json. Never part of the test suite."""

import argparse, json, os, re, shutil, subprocess, sys, tempfile, time
from datetime import datetime, timezone

import bench
from bench import Server, cpu_ticks, TICK

PORT = 18478
PEER = 18480
ADMIN = 18479
USER, PASSWORD, REALM = "alice", "wonderland", "pylon.test"


def pylon_conf(d):
    users = os.path.join(d, "users.txt")
    open(users, "w").write(f"{USER}:{PASSWORD}\n")
    return f"""
[server]
worker_threads = 1
[access_log]
enabled = false
[admin]
bind = "127.0.0.1:{ADMIN}"
[[listeners]]
name = "turn"
bind = "127.0.0.1:{PORT}"
protocol = "turn"
transports = ["udp"]
[listeners.turn]
realm = "{REALM}"
users_file = "{users}"
allowed_peers = ["127.0.0.0/8"]
relay_ports = "40000-49999"
max_allocations = 100000
user_quota = 100000
unauthenticated_rate = 100000
"""


def coturn_argv(d):
    return ["turnserver", "-n", "--listening-ip", "127.0.0.1", "--listening-port", str(PORT),
            "--relay-ip", "127.0.0.1", "--min-port", "40000", "--max-port", "49999",
            "--lt-cred-mech", "--user", f"{USER}:{PASSWORD}", "--realm", REALM,
            "--allow-loopback-peers", "--no-cli", "--no-tls", "--no-dtls",
            "--relay-threads", "1", "--total-quota", "100000", "--user-quota", "100000",
            "--pidfile", os.path.join(d, "turnserver.pid"), "--log-file", os.path.join(d, "coturn.log"),
            "--no-stdout-log"]


def uclient(sessions, messages, length, interval_ms):
    argv = ["taskset", "-c", "0", "turnutils_uclient", "-c", "-m", str(sessions), "-n", str(messages),
            "-l", str(length), "-z", str(interval_ms), "-u", USER, "-w", PASSWORD,
            "-e", "127.0.0.1", "-r", str(PEER), "-p", str(PORT), "127.0.0.1"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    return out.stdout + out.stderr


def totals(out):
    sent = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\n", out)
    lost = re.search(r"Total lost packets (\d+)", out)
    if not sent:
        return None
    s, r = map(int, sent[-1])
    return {"sent": s, "received": r, "lost": int(lost.group(1)) if lost else None}


def relay_run(srv, sessions, messages, length, interval):
    pids = srv.pids()
    t0, c0 = time.time(), cpu_ticks(pids)
    out = uclient(sessions, messages, length, interval)
    secs = time.time() - t0
    cpu = (cpu_ticks(pids) - c0) / TICK
    t = totals(out)
    if not t:
        print(out[-2000:], file=sys.stderr)
        return None
    relayed = t["sent"] + t["received"]
    return {
        "secs": secs,
        "packets_per_s": relayed / secs,
        "mbit_per_s": relayed * length * 8 / secs / 1e6,
        "cpu_us_per_packet": cpu * 1e6 / relayed if relayed else None,
        "lost": t["lost"],
        "sent": t["sent"],
    }


def alloc_run(srv, sessions):
    """Sessions that each allocate, bind a channel and relay one message."""
    pids = srv.pids()
    t0, c0 = time.time(), cpu_ticks(pids)
    out = uclient(sessions, 1, 100, 1)
    secs = time.time() - t0
    cpu = (cpu_ticks(pids) - c0) / TICK
    t = totals(out)
    return {"allocations_per_s": sessions / secs, "cpu_us_per_allocation": cpu * 1e6 / sessions,
            "completed": t["received"] if t else 0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pylon", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--messages", type=int, default=2000)
    args = ap.parse_args()
    for tool in ("turnserver", "turnutils_uclient", "turnutils_peer"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install coturn")
    d = tempfile.mkdtemp(prefix="pylon-turn-bench-")
    conf = os.path.join(d, "pylon.toml")
    open(conf, "w").write(pylon_conf(d))
    servers = {
        "pylon": ["taskset", "-c", "1", args.pylon, "run", "-c", conf],
        "coturn": ["taskset", "-c", "1"] + coturn_argv(d),
    }
    scenarios = [("udp_200", 200), ("udp_1200", 1200)]
    results = {n: {s: [] for s, _ in scenarios + [("allocations", 0)]} for n in servers}
    peer = subprocess.Popen(["taskset", "-c", "0", "turnutils_peer", "-L", "127.0.0.1", "-p", str(PEER)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for rnd in range(args.rounds):
            for name, argv in servers.items():
                print(f"round {rnd + 1} {name}", file=sys.stderr, flush=True)
                # Ready once it answers on TCP: Pylon's admin port, coturn's TCP listener.
                with Server(name, argv, ADMIN if name == "pylon" else PORT) as srv:
                    for sid, length in scenarios:
                        r = relay_run(srv, args.sessions, args.messages, length, 1)
                        results[name][sid].append(r)
                    results[name]["allocations"].append(alloc_run(srv, 500))
    finally:
        peer.kill()
    table = {}
    for n, rows in results.items():
        table[n] = {}
        for sid, rs in rows.items():
            rs = [r for r in rs if r]
            if rs:
                keys = {k for r in rs for k in r}
                table[n][sid] = {k: bench.median([r.get(k) for r in rs]) for k in keys}
    print(f"\n{'server':7} {'scenario':12} {'packets/s':>10} {'Mbit/s':>8} {'CPU us/pkt':>11} {'lost':>6} {'allocs/s':>9}")
    for n, rows in table.items():
        for sid, r in rows.items():
            if sid == "allocations":
                print(f"{n:7} {sid:12} {'':>10} {'':>8} {r['cpu_us_per_allocation']:11.1f} {'':>6} {r['allocations_per_s']:9.0f}")
            else:
                print(f"{n:7} {sid:12} {r['packets_per_s']:10.0f} {r['mbit_per_s']:8.1f} "
                      f"{r['cpu_us_per_packet']:11.2f} {r['lost'] or 0:6.0f}")
    for sid, _ in scenarios:
        p, c = table["pylon"].get(sid), table["coturn"].get(sid)
        if p and c:
            print(f"{sid}: Pylon vs coturn: packets/s {p['packets_per_s'] / c['packets_per_s']:.2f}x, "
                  f"CPU per packet {c['cpu_us_per_packet'] / p['cpu_us_per_packet']:.2f}x (>1: Pylon better)")
    out = os.path.join(os.path.dirname(__file__), "results",
                       f"turn-{datetime.now(timezone.utc).strftime('%Y-%m-%dT%H%M')}.json")
    json.dump({"machine": bench.machine(), "table": table}, open(out, "w"), indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""TURN relay benchmark: Pylon against coturn (Debian's `turnserver`), each pinned to one
core with one relay thread, driven by the same client, `pylon-bench-load turn` (CLIENTS
allocations, each with a channel bound to an echo peer of the load process, keeping
WINDOW ChannelData messages in flight), on the other core.

Scenarios: 200-byte and 1,200-byte messages (audio-sized and video-sized datagrams),
UDP between client and server; and allocations per second (`turn-alloc`: allocate with
the 401 challenge, then Refresh with lifetime 0, 16 clients at once). Reported per
server: packets relayed per second (each message crosses the relay twice: to the peer
and back), Mbit/s relayed, server CPU-microseconds per relayed packet, and allocations
per second with the CPU each costs.
Results go to bench/results/turn-<date>.json. Never part of the test suite."""

import argparse, json, os, re, shutil, subprocess, sys, tempfile, time
from datetime import datetime, timezone

import bench
from bench import Server, cpu_ticks, TICK

PORT = 18478
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


def load(args, *rest):
    argv = ["taskset", "-c", "0", args.load] + [str(x) for x in rest]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    return out.stdout + out.stderr


def relay_run(args, srv, length):
    pids = srv.pids()
    t0, c0 = time.time(), cpu_ticks(pids)
    out = load(args, "turn", f"127.0.0.1:{PORT}", USER, PASSWORD, args.clients, length,
               args.seconds, args.window)
    cpu = (cpu_ticks(pids) - c0) / TICK
    m = re.search(r"relayed_packets_per_s=(\d+) echoed=(\d+) sent=(\d+) secs=([\d.]+)", out)
    if not m:
        print(out[-2000:], file=sys.stderr)
        return None
    pps, echoed, sent, secs = float(m.group(1)), int(m.group(2)), int(m.group(3)), float(m.group(4))
    relayed = 2 * echoed
    return {
        "packets_per_s": pps,
        "mbit_per_s": pps * length * 8 / 1e6,
        "cpu_us_per_packet": cpu * 1e6 / relayed if relayed else None,
        "lost": sent - echoed,
    }


def alloc_run(args, srv):
    pids = srv.pids()
    c0 = cpu_ticks(pids)
    out = load(args, "turn-alloc", f"127.0.0.1:{PORT}", USER, PASSWORD, args.seconds, 16)
    cpu = (cpu_ticks(pids) - c0) / TICK
    m = re.search(r"allocations_per_s=(\d+)", out)
    if not m:
        print(out[-2000:], file=sys.stderr)
        return None
    rate = float(m.group(1))
    return {"allocations_per_s": rate,
            "cpu_us_per_allocation": cpu * 1e6 / (rate * args.seconds) if rate else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pylon", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--load", required=True, help="the pylon-bench-load binary")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=8)
    args = ap.parse_args()
    for tool in ("turnserver",):
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
    for rnd in range(args.rounds):
        for name, argv in servers.items():
            print(f"round {rnd + 1} {name}", file=sys.stderr, flush=True)
            # Ready once it answers on TCP: Pylon's admin port, coturn's TCP listener.
            with Server(name, argv, ADMIN if name == "pylon" else PORT) as srv:
                for sid, length in scenarios:
                    results[name][sid].append(relay_run(args, srv, length))
                results[name]["allocations"].append(alloc_run(args, srv))
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
                print(f"{n:7} {sid:12} {'':>10} {'':>8} {r['cpu_us_per_allocation'] or 0:11.1f} {'':>6} {r['allocations_per_s']:9.0f}")
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

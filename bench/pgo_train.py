#!/usr/bin/env python3
"""The training run of a profile-guided build (scripts/build-pgo.sh): drives an
instrumented Pylon through the work its benchmarks measure, a few seconds each, so the
compiler learns which code is hot. It uses the benchmark's own configurations and load
clients (HTTP/1.1 keep-alive, new connections and 1,000 connections, 1 MiB bodies,
idle keep-alive connections, h2c, TLS handshakes, HTTPS HTTP/1.1 and HTTP/2, HTTP/3,
Layer 4 with and without splice, the gateway's routes (JWT HS256 and ES256, local and
Redis rate limits, gzip and brotli, static files, a weighted split), TURN relaying and
allocations, WebSocket echo, CONNECT, cache hits, gRPC unary and streaming). Pylon alone runs here, never a peer. Each Pylon is stopped with SIGTERM, so it
exits normally and writes its profile (to LLVM_PROFILE_FILE, set by the caller)."""

import argparse, asyncio, os, re, signal, subprocess, sys, tempfile, threading, time

import bench
import cache as cache_bench
import gateway as gateway_bench
import grpc as grpc_bench
import h3 as h3_bench
import l4 as l4_bench
import tunnel as tunnel_bench
import turn as turn_bench
from bench import Server, ORIGIN, PROXY


class Pylon(Server):
    """A Pylon that exits normally when the block ends, so its profile is written."""

    def __exit__(self, *a):
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
            # Longer than a drain can take (drain_timeout is 30 s by default).
            self.p.wait(timeout=45)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
            sys.exit("pgo_train: Pylon did not stop within 45 s of SIGTERM; its profile is lost")
        if self.p.returncode != 0:
            sys.exit(f"pgo_train: Pylon exited with status {self.p.returncode}")
        bench.wait_closed(self.port)


def pylon(binary, d, name, text, port=PROXY):
    conf = os.path.join(d, f"train-{name}.toml")
    open(conf, "w").write(text)
    return Pylon(name, [binary, "run", "-c", conf], port)


def step(started, what):
    print(f"[{time.time() - started:5.0f}s] {what}", file=sys.stderr, flush=True)


def hold_idle(port, n, tls):
    loop = asyncio.new_event_loop()
    conns = loop.run_until_complete(bench.hold_idle(port, n, tls))
    time.sleep(1)  # long enough for Pylon to park them
    for _, w in conns:
        w.close()
    loop.close()


def wrk(port, conns, secs, **kw):
    """A wrk run that must succeed, every answer a 2xx or 3xx: a training run whose
    requests failed would teach the compiler the error paths."""
    r = bench.run_wrk(port, conns, secs, **kw)
    if not r or r["errors"]:
        sys.exit(f"pgo_train: wrk through port {port} {kw} failed: {r}")


def h2(port, secs, scheme="http"):
    """An h2load run (10 connections x 10 streams) in which every request succeeds."""
    r = bench.run_h2load(port, secs, scheme=scheme)
    need(r and r["requests"] and not r["errors"], f"h2load through port {port} ({r})")


def need(ok, what):
    if not ok:
        sys.exit(f"pgo_train: {what} failed")


def load(argv, done):
    """A pylon-bench-load run that exits normally and whose printed count `done` (a
    regular expression with one number) is above zero."""
    out = subprocess.run(argv, capture_output=True, text=True)
    m = re.search(done, out.stdout)
    if out.returncode != 0 or not m or float(m.group(1)) <= 0:
        sys.exit(f"pgo_train: {' '.join(argv)} failed: {out.stdout.strip()} {out.stderr.strip()}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pylon", required=True, help="the instrumented binary")
    ap.add_argument("--load", required=True, help="the pylon-bench-load binary")
    ap.add_argument("--seconds", type=int, default=3, help="length of each load")
    args = ap.parse_args()
    if "LLVM_PROFILE_FILE" not in os.environ:
        sys.exit("pgo_train: set LLVM_PROFILE_FILE to where the profiles go")
    s, binary, ld = args.seconds, args.pylon, args.load
    d = tempfile.mkdtemp(prefix="pylon-pgo-")
    os.chmod(d, 0o755)
    open(os.path.join(d, "origin.conf"), "w").write(bench.origin_conf(d))
    subprocess.run([binary, "cert", "selfsigned", "--name", "localhost", "--out",
                    os.path.join(d, "certs")], check=True, stdout=subprocess.DEVNULL)
    started = time.time()

    with Server("origin", ["nginx", "-c", os.path.join(d, "origin.conf")], ORIGIN):
        step(started, "HTTP/1.1")
        with pylon(binary, d, "h1", bench.pylon_conf(d, "h1")):
            wrk(PROXY, 50, s)
            wrk(PROXY, 50, s, new_conn=True)
            wrk(PROXY, 1000, s)
            wrk(PROXY, 10, s, path="/1m")
            hold_idle(PROXY, 500, tls=False)
        step(started, "h2c")
        with pylon(binary, d, "h2c", bench.pylon_conf(d, "h2c")):
            h2(PROXY, s)
        step(started, "TLS")
        with pylon(binary, d, "tls", bench.pylon_conf(d, "tls")):
            wrk(PROXY, 50, s, new_conn=True, scheme="https")
            wrk(PROXY, 50, s, scheme="https")
            h2(PROXY, s, scheme="https")
            hold_idle(PROXY, 200, tls=True)
        step(started, "HTTP/3")
        with pylon(binary, d, "h3", h3_bench.pylon_conf(d), port=h3_bench.PORT) as srv:
            for path, streams in (("/", 10), ("/1m", 1)):
                r = h3_bench.h3_load(ld, d, path, 10, streams, s, srv)
                need(r and r["requests"] and not r.get("errors"), f"HTTP/3 load of {path}")
        step(started, "Layer 4")
        with Server("iperf3", ["iperf3", "-s", "-p", str(l4_bench.IPERF)], l4_bench.IPERF):
            for name, splice in (("l4-splice", True), ("l4-copy", False)):
                conf = l4_bench.pylon_tcp(d, l4_bench.IPERF, splice=splice)
                with pylon(binary, d, name, conf):
                    need(l4_bench.iperf(PROXY, s), f"iperf3 through {name}")
        with pylon(binary, d, "l4-origin", l4_bench.pylon_tcp(d, ORIGIN)):
            wrk(PROXY, 50, s, new_conn=True)

    step(started, "gateway")
    g = os.path.join(d, "gateway")
    os.makedirs(g)
    hs, es, origin_conf = gateway_bench.setup(g)
    redis = Server("redis", ["redis-server", "--port", str(gateway_bench.REDIS), "--bind",
                             "127.0.0.1", "--save", "", "--appendonly", "no"], gateway_bench.REDIS)
    with Server("origin", ["nginx", "-c", origin_conf], ORIGIN), redis:
        with pylon(binary, d, "gateway", gateway_bench.pylon_conf(g)):
            for path, headers in (("/hs256", (hs,)), ("/es256", (es,)), ("/local", ()),
                                  ("/redis", ()), ("/data.json", ("Accept-Encoding: gzip",)),
                                  ("/br/data.json", ("Accept-Encoding: br",)),
                                  ("/static/1k.txt", ()), ("/static/1m.bin", ()),
                                  ("/split", ())):
                wrk(PROXY, 50, s, path=path, headers=headers)

    step(started, "TURN")
    turn = f"127.0.0.1:{turn_bench.PORT}"
    user, password = turn_bench.USER, turn_bench.PASSWORD
    with pylon(binary, d, "turn", turn_bench.pylon_conf(d), port=turn_bench.ADMIN):
        load([ld, "turn", turn, user, password, "50", "200", str(s), "8"], r"echoed=(\d+)")
        load([ld, "turn-alloc", turn, user, password, str(s), "16"], r"allocations_per_s=(\d+)")

    ws = Server("ws-origin", [ld, "ws-echo-server", str(tunnel_bench.WS_ORIGIN)], tunnel_bench.WS_ORIGIN)
    sink = Server("sink", [ld, "sink-server", str(tunnel_bench.SINK)], tunnel_bench.SINK)
    with ws, sink:
        step(started, "WebSocket")
        with pylon(binary, d, "ws", tunnel_bench.pylon_ws(d)):
            load([ld, "ws", f"ws://127.0.0.1:{PROXY}/", "50", str(s)], r'"messages": (\d+)')
        step(started, "CONNECT")
        with pylon(binary, d, "forward", tunnel_bench.pylon_forward(d)):
            load([ld, "connect", f"127.0.0.1:{PROXY}", f"127.0.0.1:{tunnel_bench.SINK}", str(s)],
                 r'"bytes": (\d+)')

    step(started, "cache")
    threading.Thread(target=asyncio.run, args=(cache_bench.serve_origin(cache_bench.ORIGIN),),
                     daemon=True).start()
    bench.wait_port(cache_bench.ORIGIN)
    with pylon(binary, d, "cache", cache_bench.pylon_conf(d), port=cache_bench.PROXY):
        for path in cache_bench.SIZES:
            wrk(cache_bench.PROXY, 50, s, path=path)

    origin = grpc_bench.ORIGIN
    with Server("grpc-origin", [ld, "grpc-server", str(origin)], origin):
        step(started, "gRPC")
        with pylon(binary, d, "grpc", grpc_bench.pylon_grpc(d)):
            load([ld, "grpc-unary", f"http://127.0.0.1:{PROXY}", "10", str(s)], r'"calls": (\d+)')
            load([ld, "grpc-stream", f"http://127.0.0.1:{PROXY}", str(s)], r'"bytes": (\d+)')
    step(started, "done")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A small HTTP/3 client on aioquic (`pip install aioquic`), to try Pylon's HTTP/3:

    python3 examples/h3_client.py --cacert examples/certs/cert.pem https://localhost:8443/

Each URL is fetched in turn on one QUIC connection; for each, the status line, the
response fields, a blank line and the body are printed. `--data N` sends N bytes ("y")
as the body of a POST, in `--pieces` writes, followed by `--trailer name=value` fields.
Pylon's tests use this same client."""

import argparse
import asyncio
import ssl
import sys
from urllib.parse import urlsplit

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.answers = {}

    def quic_event_received(self, event):
        for e in self.h3.handle_event(event):
            if not isinstance(e, (HeadersReceived, DataReceived)):
                continue
            fut, answer = self.answers[e.stream_id]
            if isinstance(e, HeadersReceived):
                answer["fields"].append([(k.decode(), v.decode()) for k, v in e.headers])
            else:
                answer["body"] += e.data
            if e.stream_ended and not fut.done():
                fut.set_result(answer)

    async def request(self, fields, body=b"", pieces=1, trailers=()):
        sid = self._quic.get_next_available_stream_id()
        fut = asyncio.get_running_loop().create_future()
        self.answers[sid] = (fut, {"fields": [], "body": b""})
        self.h3.send_headers(sid, fields, end_stream=not body and not trailers)
        if body:
            step = max(1, -(-len(body) // pieces))
            for i in range(0, len(body), step):
                last = i + step >= len(body) and not trailers
                self.h3.send_data(sid, body[i : i + step], end_stream=last)
                self.transmit()
                await asyncio.sleep(0)
        if trailers:
            self.h3.send_headers(sid, list(trailers), end_stream=True)
        self.transmit()
        return await asyncio.wait_for(fut, 30)


async def main(args):
    first = urlsplit(args.urls[0])
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=first.hostname)
    if args.cacert:
        config.load_verify_locations(args.cacert)
    config.verify_mode = ssl.CERT_REQUIRED if not args.insecure else ssl.CERT_NONE
    host = args.connect or first.hostname
    async with connect(host, first.port or 443, configuration=config, create_protocol=Client) as c:
        for url in args.urls:
            u = urlsplit(url)
            path = (u.path or "/") + (f"?{u.query}" if u.query else "")
            method = b"POST" if args.data else b"GET"
            fields = [
                (b":method", method),
                (b":scheme", b"https"),
                (b":authority", u.netloc.encode()),
                (b":path", path.encode()),
                (b"user-agent", b"aioquic"),
            ]
            trailers = [tuple(t.encode().split(b"=", 1)) for t in args.trailer]
            if trailers:
                fields.append((b"te", b"trailers"))
            got = await c.request(fields, b"y" * args.data, args.pieces, trailers)
            head, *rest = got["fields"]
            status = dict(head)[":status"]
            print(f"HTTP/3 {status}")
            for k, v in head:
                if not k.startswith(":"):
                    print(f"{k}: {v}")
            print()
            sys.stdout.write(got["body"].decode(errors="replace"))
            if not got["body"].endswith(b"\n"):
                print()
            for t in rest:
                for k, v in t:
                    print(f"trailer {k}: {v}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("urls", nargs="+", metavar="URL")
    p.add_argument("--cacert", help="CA certificates (PEM) to verify the server with")
    p.add_argument("--insecure", "-k", action="store_true", help="do not verify the server")
    p.add_argument("--connect", help="address to connect to instead of the URL's host")
    p.add_argument("--data", type=int, default=0, help="POST this many bytes")
    p.add_argument("--pieces", type=int, default=1, help="in this many writes")
    p.add_argument("--trailer", action="append", default=[], help="name=value, after the body")
    asyncio.run(main(p.parse_args()))

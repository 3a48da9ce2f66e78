#!/usr/bin/env python3
"""A small HTTP/3 client on aioquic (`pip install aioquic`), to try Pylon's HTTP/3:

    python3 examples/h3_client.py --cacert examples/certs/cert.pem https://localhost:8443/

Each URL is fetched in turn on one QUIC connection; for each, the status line, the
response fields, a blank line and the body are printed. `--data N` sends N bytes ("y")
as the body of a POST, in `--pieces` writes, followed by `--trailer name=value` fields.

With `--websocket MESSAGE` (repeatable), each URL is opened as a WebSocket over HTTP/3
(RFC 9220: an extended CONNECT with `:protocol = websocket`, which the server must offer
in its SETTINGS); each MESSAGE goes as a text message and the answer to it is printed
(`message: ...`), then the client closes with 1000 and prints the server's close code
(`close: ...`). Pylon's tests use this same client."""

import argparse
import asyncio
import os
import ssl
import struct
import sys
from urllib.parse import urlsplit

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection, Setting
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.answers = {}
        self.tunnels = {}
        # Set once the server's SETTINGS have arrived.
        self.settings = asyncio.Event()

    def quic_event_received(self, event):
        for e in self.h3.handle_event(event):
            if not isinstance(e, (HeadersReceived, DataReceived)):
                continue
            if e.stream_id in self.tunnels:
                self.tunnels[e.stream_id].put_nowait(e)
                continue
            fut, answer = self.answers[e.stream_id]
            if isinstance(e, HeadersReceived):
                answer["fields"].append([(k.decode(), v.decode()) for k, v in e.headers])
            else:
                answer["body"] += e.data
            if e.stream_ended and not fut.done():
                fut.set_result(answer)
        if self.h3.received_settings is not None:
            self.settings.set()

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

    async def websocket(self, fields, messages):
        """A WebSocket over HTTP/3: the answer's fields, and the lines to print."""
        try:
            await asyncio.wait_for(self.settings.wait(), 10)
        except asyncio.TimeoutError:
            pass
        if not (self.h3.received_settings or {}).get(Setting.ENABLE_CONNECT_PROTOCOL):
            raise SystemExit("the server does not offer extended CONNECT (RFC 9220)")
        sid = self._quic.get_next_available_stream_id()
        events = self.tunnels[sid] = asyncio.Queue()
        self.h3.send_headers(sid, fields + [(b"sec-websocket-version", b"13")])
        self.transmit()
        head = await asyncio.wait_for(events.get(), 30)
        head = [(k.decode(), v.decode()) for k, v in head.headers]
        if not dict(head)[":status"].startswith("2"):
            return head, []
        frames = Frames(events)
        lines = []
        for m in messages:
            self.send_frame(sid, 0x1, m.encode())
            opcode, payload = await frames.next()
            lines.append(f"message: {payload.decode()}")
        self.send_frame(sid, 0x8, struct.pack("!H", 1000) + b"bye")
        while True:
            opcode, payload = await frames.next()
            if opcode == 0x8:
                lines.append(f"close: {struct.unpack('!H', payload[:2])[0]}")
                break
        self.h3.send_data(sid, b"", end_stream=True)
        self.transmit()
        return head, lines

    def send_frame(self, sid, opcode, payload):
        """One masked frame, as a client sends it (RFC 6455 §5.2)."""
        n = len(payload)
        if n < 126:
            size = struct.pack("!B", 0x80 | n)
        elif n < 1 << 16:
            size = struct.pack("!BH", 0x80 | 126, n)
        else:
            size = struct.pack("!BQ", 0x80 | 127, n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.h3.send_data(sid, bytes([0x80 | opcode]) + size + mask + masked, end_stream=False)
        self.transmit()


class Frames:
    """WebSocket frames from a server (unmasked), out of a tunnel's DATA."""

    def __init__(self, events):
        self.events = events
        self.buf = b""

    async def next(self):
        frame = self.parse()
        while frame is None:
            e = await asyncio.wait_for(self.events.get(), 30)
            if isinstance(e, DataReceived):
                self.buf += e.data
            frame = self.parse()
            if frame is None and e.stream_ended:
                raise SystemExit("the tunnel ended")
        return frame

    def parse_size(self):
        """Where the first frame's payload starts and its length, once known."""
        b = self.buf
        if len(b) < 2:
            return None
        n, at = b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, at = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, at = struct.unpack("!Q", b[2:10])[0], 10
        return at, n

    def parse(self):
        size = self.parse_size()
        if size is None or len(self.buf) < size[0] + size[1]:
            return None
        at, n = size
        opcode, payload = self.buf[0] & 0x0F, self.buf[at : at + n]
        self.buf = self.buf[at + n :]
        return opcode, payload

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
            if args.websocket:
                fields[0] = (b":method", b"CONNECT")
                fields.insert(1, (b":protocol", b"websocket"))
                head, lines = await c.websocket(fields, args.websocket)
                print(f"HTTP/3 {dict(head)[':status']}")
                for k, v in head:
                    if not k.startswith(":"):
                        print(f"{k}: {v}")
                print()
                for line in lines:
                    print(line)
                continue
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
    p.add_argument("--websocket", action="append", default=[], metavar="MESSAGE",
                   help="open the URL as a WebSocket over HTTP/3 and send MESSAGE")
    asyncio.run(main(p.parse_args()))

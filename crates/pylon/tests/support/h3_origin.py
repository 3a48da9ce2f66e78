"""An HTTP/3 origin on aioquic for Pylon's upstream tests: listens on 127.0.0.1, port 0,
prints the port it got, and answers every request with a JSON description of it
(method, path, authority, headers, body length, trailers)."""

import asyncio
import json
import sys

from aioquic.asyncio import serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Origin(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.requests = {}

    def quic_event_received(self, event):
        for e in self.h3.handle_event(event):
            if isinstance(e, HeadersReceived):
                r = self.requests.get(e.stream_id)
                fields = [(k.decode(), v.decode()) for k, v in e.headers]
                if r is None:
                    r = self.requests[e.stream_id] = {"fields": fields, "len": 0, "trailers": None}
                else:
                    r["trailers"] = [f"{k}={v}" for k, v in fields]
            elif isinstance(e, DataReceived):
                r = self.requests.setdefault(e.stream_id, {"fields": [], "len": 0, "trailers": None})
                r["len"] += len(e.data)
            else:
                continue
            if e.stream_ended:
                self.answer(e.stream_id)

    def answer(self, sid):
        r = self.requests.pop(sid)
        pseudo = {k: v for k, v in r["fields"] if k.startswith(":")}
        headers = {}
        for k, v in r["fields"]:
            if not k.startswith(":"):
                headers.setdefault(k, []).append(v)
        body = json.dumps({
            "server": "aioquic",
            "method": pseudo.get(":method"),
            "path": pseudo.get(":path"),
            "authority": pseudo.get(":authority"),
            "headers": headers,
            "body_len": r["len"],
            "trailers": r["trailers"],
        }).encode()
        self.h3.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/json"),
                                   (b"content-length", str(len(body)).encode())])
        self.h3.send_data(sid, body, end_stream=True)
        self.transmit()


async def main(cert, key):
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    config.load_cert_chain(cert, key)
    server = await serve("127.0.0.1", 0, configuration=config, create_protocol=Origin)
    port = server._transport.get_extra_info("sockname")[1]
    print(port, flush=True)
    await asyncio.Future()


asyncio.run(main(sys.argv[1], sys.argv[2]))

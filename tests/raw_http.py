"""Raw HTTP/1.1 for tests: the request line and headers written byte for byte (no client library cleans
them up), one request per connection, the answer parsed with h11."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import h11


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, Any]:
        return dict(json.loads(self.body)["error"])


def _request_bytes(method: str, raw_target: bytes, headers: Sequence[tuple[str, str | bytes]]) -> bytes:
    lines = [method.encode() + b" " + raw_target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    for name, value in headers:
        lines.append(name.encode() + b": " + (value if isinstance(value, bytes) else value.encode()))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _parse(method: str, data: bytes) -> Answer:
    # h11 parses the answer; it is told of a request like the one written, not sent one.
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "x"), ("Connection", "close")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    status, got, body = 0, {}, b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            status = event.status_code
            got = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        else:
            assert isinstance(event, h11.EndOfMessage), event
            return Answer(status, got, body)


def send_raw(port: int, method: str, raw_target: bytes, headers: Sequence[tuple[str, str | bytes]]) -> Answer:
    """One request on its own connection, the request line and headers exactly as given."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(_request_bytes(method, raw_target, headers))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return _parse(method, data)


async def asend_raw(
    port: int, method: str, raw_target: bytes, headers: Sequence[tuple[str, str | bytes]]
) -> Answer:
    """`send_raw` for a sidecar running in the test's own event loop."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request_bytes(method, raw_target, headers))
    data = await asyncio.wait_for(reader.read(), 15)
    writer.close()
    return _parse(method, data)

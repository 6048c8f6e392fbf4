"""Slow and vanishing clients, and what aiohttp refuses before any handler runs, against a running sidecar:
a head that dribbles is cut off, a stalled body is 408, a caller that hangs up or a shutdown that gives up
on a call still leaves a closed audit record, and the process keeps serving others. Small timeouts come
from settings, so this runs in seconds."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import orjson
import pytest

from tests.conftest import ACME_KEY, MakeSidecar, Upstream, eventually
from tests.hostile_fixtures import (
    BODY_TIMEOUT,
    FAST,
    HEADER_TIMEOUT,
    KEEPALIVE,
    UPLOAD_START,
    chain_is_closed,
    closed_within,
    doc,
    ends,
    is_openai_error,
    json_head,
    open_connection,
    post,
    reached,
    read_response,
    refused,
)


async def test_slow_request_heads_are_cut_off(make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(**FAST)
    silent_reader, silent = await open_connection(sc)  # connects, sends nothing
    reader, writer = await open_connection(sc)
    writer.write(b"POST /v1/responses HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()

    async def dribble() -> None:
        with pytest.raises(ConnectionError):
            for n in range(100):
                writer.write(b"X-Slow-%d: y\r\n" % n)
                await writer.drain()
                await asyncio.sleep(0.1)

    dribbling = asyncio.create_task(dribble())
    # Meanwhile, others are served.
    status, _, _ = await post(sc, orjson.dumps(doc()))
    assert status == 200
    assert await asyncio.wait_for(reader.read(), HEADER_TIMEOUT + 2) == b""  # closed, without an answer
    assert time.monotonic() - started < HEADER_TIMEOUT + 1.0
    await asyncio.wait_for(dribbling, 5)
    assert await closed_within(silent_reader, 2) < 2
    writer.close()
    silent.close()

    # A kept-alive connection may idle longer than the head timeout, then sends a whole request in time.
    reader, writer = await open_connection(sc)
    body = orjson.dumps(doc())
    writer.write(json_head(len(body)) + body)
    assert (await read_response(reader))[0] == 200
    await asyncio.sleep(HEADER_TIMEOUT * 1.5)
    writer.write(json_head(len(body)) + body)
    assert (await read_response(reader))[0] == 200
    idle = await closed_within(reader, KEEPALIVE + 2)  # then it idles out
    assert idle > KEEPALIVE - 0.5
    writer.close()
    chain_is_closed(sc)


async def test_a_stalled_body_is_408(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    sc = await make_sidecar(**FAST)
    reader, writer = await open_connection(sc)
    writer.write(json_head(100) + b'{"model":')
    started = time.monotonic()
    status, headers, body = await read_response(reader)
    assert status == 408 and BODY_TIMEOUT <= time.monotonic() - started < BODY_TIMEOUT + 2
    is_openai_error(json.loads(body), "request_timeout")
    assert headers["connection"] == "close"
    await refused(sc, upstream, headers, 408, "request_timeout")
    writer.close()

    # An upload stalls while it is already streaming upstream: still the caller's 408, not a 502.
    reader, writer = await open_connection(sc)
    writer.write(UPLOAD_START)
    status, headers, body = await read_response(reader)
    assert status == 408
    is_openai_error(json.loads(body), "request_timeout")
    end = ends(sc)[headers["x-request-id"]]
    assert end["error"] == {"status": 408, "code": "request_timeout"} and end["outcome"] == "refused"
    writer.close()
    chain_is_closed(sc)


async def test_a_caller_that_hangs_up_mid_body_is_audited(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    sc = await make_sidecar(**FAST)
    before = len(sc.audit())
    _, writer = await open_connection(sc)
    writer.write(json_head(5000) + b'{"model":"gpt-4o-mini","input":"')
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()

    async def ended() -> bool:
        return len(sc.audit()) > before

    await eventually(ended)
    (end,) = sc.audit()[before:]
    assert end["phase"] == "end" and end["outcome"] == "client_disconnected" and end["error"] is None
    assert await reached(upstream, end["decision_id"]) == []
    assert (await post(sc, orjson.dumps(doc())))[0] == 200  # and the sidecar carries on

    # The same while an upload streams upstream (its head did reach the upstream: uploads stream).
    before = len(sc.audit())
    _, writer = await open_connection(sc)
    writer.write(UPLOAD_START + b'{"a":1}\n' * 50)
    await writer.drain()

    async def streaming() -> bool:
        return any(r["phase"] == "start" for r in sc.audit()[before:])

    await eventually(streaming)
    writer.close()

    async def closed() -> bool:
        return any(r["phase"] == "end" for r in sc.audit()[before:])

    await eventually(closed)
    _, end = sc.audit()[before:]
    assert end["outcome"] == "client_disconnected" and end["request"]["operation"] == "files.create"
    chain_is_closed(sc)


# --- what aiohttp refuses before the handler, and what the handler never expected ----------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\x00 / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    ],
    ids=["request-line", "header-too-long", "header-name", "te-and-cl"],
)
async def test_low_level_refusals_are_openai_shaped(make_sidecar: MakeSidecar, raw: bytes) -> None:
    sc = await make_sidecar(**FAST)
    reader, writer = await open_connection(sc)
    writer.write(raw)
    status, headers, body = await read_response(reader)
    assert status == 400
    is_openai_error(json.loads(body), "invalid_request")
    assert headers["x-request-id"].startswith("req_") and headers["content-type"] == "application/json"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection is closed
    writer.close()


async def test_malformed_chunked_framing(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    sc = await make_sidecar(**FAST)
    start = (
        f"POST /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACME_KEY}\r\n"
        'Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n'
    ).encode()
    # In one packet, aiohttp's parser refuses the request before any handler sees it.
    reader, writer = await open_connection(sc)
    writer.write(start + b"zz\r\n")
    status, headers, body = await read_response(reader)
    assert status == 400
    is_openai_error(json.loads(body), "invalid_request")
    assert headers["x-request-id"] not in ends(sc)  # no call, so no audit record
    writer.close()
    # Mid-body, the parser does not fail the body being read: it stalls, and the stall timeout ends it.
    reader, writer = await open_connection(sc)
    writer.write(start)
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.write(b"zz\r\n")
    status, headers, body = await read_response(reader)
    assert status == 408
    await refused(sc, upstream, headers, 408, "request_timeout")
    assert headers["connection"] == "close"
    writer.close()
    chain_is_closed(sc)


async def test_a_call_cut_short_by_the_shutdown_is_audited(make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(**FAST, SIDECAR_SHUTDOWN_TIMEOUT="0.3")
    slow = asyncio.create_task(post(sc, orjson.dumps(doc()), {"x-dev-upstream-delay-ms": "4000"}))

    async def started() -> bool:
        return any(r["phase"] == "start" for r in sc.audit())

    await eventually(started)
    await sc.runners[0].cleanup()  # the drain gives up on the call after the shutdown timeout
    with pytest.raises(aiohttp.ClientError):
        await slow
    (end,) = [r for r in sc.audit() if r["phase"] == "end"]
    assert end["outcome"] == "cancelled"
    chain_is_closed(sc)

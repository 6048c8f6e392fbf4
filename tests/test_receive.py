"""Reading hostile bodies: random JSON-ish bytes through `read_payload` on a real listener
(sidecar.listener, as the data listener runs it) give the re-serialised document or an OpenAI-shaped 4xx,
never anything else; the depth check agrees with a plain recursive count."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import threading
import zlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sidecar import config
from sidecar.errors import SidecarError, error_response
from sidecar.listener import GuardedRunner
from sidecar.pipeline.inspect import parse_json_body, read_payload, within_depth
from tests.conftest import free_port

LIMIT, DEPTH = 4096, 8
SETTINGS = config.load(
    environ={
        "SIDECAR_MAX_BODY_BYTES": str(LIMIT),
        "SIDECAR_MAX_JSON_DEPTH": str(DEPTH),
        "SIDECAR_CLIENT_BODY_TIMEOUT": "5",
    },
    require_keys=False,
)


def depth_of(value: Any) -> int:
    """Containers nested in `value`, counted the obvious way (0 for a scalar)."""
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


async def _stage(request: web.Request) -> web.Response:
    try:
        payload = await read_payload(request, SETTINGS)
    except SidecarError as err:
        return error_response(err, "req_test")
    return web.json_response({"kind": payload.kind, "size": payload.size, "raw": payload.raw.decode()})


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("the prompt was: olivia.brandt@example.net")


@pytest.fixture(scope="module")
def listener() -> Iterator[int]:
    """The stage behind the data listener's own runner, in a thread with its own loop."""
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    app = web.Application()
    app.router.add_post("/", _stage)
    app.router.add_get("/boom", _boom)
    runner = GuardedRunner(app, header_timeout=5, handler_args={"auto_decompress": False})

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()))
    thread.start()
    assert ready.wait(10)
    yield port
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
TRICKS = [b"NaN", b"Infinity", b"1e999", b'"\\ud800"', b"\xff", b"\xef\xbb\xbf", b'"a":1,"a":2', b"[" * 12]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["doc", "nested", "mutated", "trick", "binary"]))
    doc = {"model": "gpt-4o-mini", "x": draw(json_values)}
    raw = json.dumps(doc, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 1]))).encode()
    if kind == "nested":
        depth = draw(st.integers(0, 12))
        return b'{"a":' + b"[" * depth + raw + b"]" * depth + b"}"
    if kind == "mutated" and raw:
        at = draw(st.integers(0, len(raw) - 1))
        return raw[:at] + draw(st.binary(max_size=3)) + raw[at + draw(st.integers(0, 3)) :]
    if kind == "trick":
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.sampled_from(TRICKS)) + raw[at:]
    if kind == "binary":
        return draw(st.binary(max_size=64))
    return raw


def _expected(body: bytes) -> tuple[int, bytes | None]:
    """What an identity-encoded body must get: the status, and for 200 the re-serialised bytes."""
    if not body:
        return 200, None
    if len(body) > LIMIT:
        return 413, None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 400, None
    if not isinstance(doc, dict) or depth_of(doc) > DEPTH:
        return 400, None
    return 200, orjson.dumps(doc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=bodies(),
    coding=st.sampled_from(["identity", "gzip", "deflate", "gzip-corrupt", "zstd", "gzip, gzip"]),
    content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain"]),
)
def test_any_body_is_forwarded_as_judged_or_refused_cleanly(
    listener: int, body: bytes, coding: str, content_type: str
) -> None:
    sent = body
    if coding in ("gzip", "gzip-corrupt"):
        sent = gzip.compress(body)
        if coding == "gzip-corrupt":
            sent = sent[:12] + bytes([sent[12] ^ 0xFF]) + sent[13:]
    elif coding == "deflate":
        sent = zlib.compress(body)
    headers = {"Content-Type": content_type, "Content-Encoding": coding.removesuffix("-corrupt")}
    status, doc = _post(listener, sent, headers)
    event(f"{coding} -> {status}")

    assert status in (200, 400, 413, 415), (status, doc)
    if status != 200:
        assert set(doc["error"]) == {"message", "type", "param", "code"}
        assert doc["error"]["code"] in ("invalid_request", "request_too_large", "unsupported_encoding")
        assert doc["error"]["message"]
    if not sent:  # no body: nothing to decode or parse
        assert status == 200 and doc["kind"] == "none"
        return
    if coding in ("zstd", "gzip, gzip"):
        assert status == 415
        return
    if content_type == "text/plain":
        assert status == 400
        return
    want, raw = _expected(body)
    if coding == "identity" or status == 200 or want == 200:
        # Encoded bodies can fail only in their coding (corrupt) or their decoded size; never otherwise.
        if coding == "gzip-corrupt" and status == 400:
            return
        assert status == want, (body, coding, doc)
    if status == 200 and raw is not None:
        assert doc["kind"] == "json" and doc["raw"].encode() == raw and doc["size"] == len(raw)


@settings(max_examples=300, deadline=None)
@given(value=json_values, wrap=st.integers(0, 10))
def test_the_depth_check_counts_like_recursion(value: Any, wrap: int) -> None:
    doc: dict[str, Any] = {"x": value}
    for _ in range(wrap):
        doc = {"x": [doc]}
    expected = depth_of(doc)
    for limit in (1, 2, 5, 10, 30):
        assert within_depth(doc, limit) == (expected <= limit)
    raw = json.dumps(doc).encode()  # (integers beyond 64 bits included: orjson reads them as doubles)
    if expected <= 30:
        parsed = orjson.loads(raw)
        assert parse_json_body(raw, 30) == (parsed, orjson.dumps(parsed))
    else:
        with pytest.raises(SidecarError) as caught:
            parse_json_body(raw, 30)
        assert caught.value.status == 400


def test_config_refuses_unusable_limits() -> None:
    for env in (
        {"SIDECAR_MAX_JSON_DEPTH": "0"},
        {"SIDECAR_MAX_JSON_DEPTH": "255"},
        {"SIDECAR_CLIENT_HEADER_TIMEOUT": "0"},
        {"SIDECAR_CLIENT_BODY_TIMEOUT": "-1"},
        {"SIDECAR_CLIENT_KEEPALIVE_TIMEOUT": "0"},
    ):
        with pytest.raises(config.ConfigError):
            config.load(environ=env, require_keys=False)
    defaults = config.load(environ={}, require_keys=False)
    assert defaults.max_json_depth == 64 and defaults.client_header_timeout == 10
    assert defaults.client_body_timeout == 60 and defaults.client_keepalive_timeout == 75


def test_a_handler_bug_is_an_openai_shaped_500_without_its_text(
    listener: int, caplog: pytest.LogCaptureFixture
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", listener, timeout=10)
    conn.request("GET", "/boom")
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 500 and body["error"]["code"] == "internal_error"
    assert resp.getheader("x-request-id", "").startswith("req_")
    assert "olivia" not in json.dumps(body) and "olivia" not in caplog.text
    (line,) = [r for r in caplog.records if r.getMessage() == "unexpected error"]
    assert line.__dict__["error"] == "RuntimeError" and "_boom" in line.__dict__["at"][-1]

"""Hostile bodies against a running sidecar: every one gets an OpenAI-shaped answer, an audit end record
with its outcome, and the upstream gets nothing, or exactly the bytes the policy judged. Slow and vanishing
clients are in test_e2e_slow_clients.py."""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import MakeSidecar, Upstream
from tests.hostile_fixtures import (
    AUTH,
    CAP,
    FAST,
    chain_is_closed,
    doc,
    ends,
    forwarded_body,
    is_openai_error,
    nested,
    post,
    reached,
    refused,
)

# --- JSON bodies -------------------------------------------------------------------------------------


async def test_nesting_is_limited_before_anything_reads_the_body(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    sc = await make_sidecar(SIDECAR_PII_MODE="patterns", SIDECAR_PII_WORKERS="1")
    status, headers, _ = await post(sc, nested(64))  # the default limit, exactly
    assert status == 200
    assert await forwarded_body(sc, upstream, headers) == orjson.dumps(orjson.loads(nested(64))).decode()
    for depth in (65, 300, 1000, 1100):  # orjson alone would take 1,000 and refuse 1,100
        status, headers, body = await post(sc, nested(depth))
        assert status == 400, depth
        is_openai_error(body, "invalid_request")
        await refused(sc, upstream, headers, 400, "invalid_request")
    small = await make_sidecar(**FAST, SIDECAR_MAX_JSON_DEPTH="5")
    assert (await post(small, nested(5)))[0] == 200
    status, headers, body = await post(small, nested(6))
    assert status == 400 and "deeper than 5" in body["error"]["message"]
    chain_is_closed(sc)
    chain_is_closed(small)


async def test_the_upstream_gets_the_document_the_policy_judged(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    sc = await make_sidecar(**FAST)
    cases = [
        # duplicate keys: the last one wins, and only it is sent on
        b'{"model":"o1-pro","input":"first","model":"gpt-4o-mini","input":"second"' + CAP + b"}",
        # beyond 64 bits: the double orjson reads is what is judged and sent; 2**64-1 stays exact
        b'{"model":"gpt-4o-mini","input":"x","metadata":{"big":123456789012345678901234567890,'
        b'"u64":18446744073709551615,"neg":-9223372036854775809}' + CAP + b"}",
        # whitespace, escapes and charset=utf-8 normalise away
        b'{ "model" : "gpt-4o-mini",\n "input" : "caf\\u00e9 \\ud83d\\ude00"' + CAP + b" }",
    ]
    for raw in cases:
        headers_in = {"Content-Type": "application/json; charset=UTF-8"}
        status, headers, _ = await post(sc, raw, headers_in)
        assert status == 200, raw
        sent = await forwarded_body(sc, upstream, headers)
        assert sent == orjson.dumps(orjson.loads(raw)).decode()
    first = json.loads(await forwarded_body(sc, upstream, (await post(sc, cases[0]))[1]))
    assert first == {"model": "gpt-4o-mini", "input": "second", "max_output_tokens": 50}
    # The same trick the other way round: the policy sees the model that is sent, and refuses it.
    status, headers, _ = await post(sc, b'{"model":"gpt-4o-mini","input":"x","model":"o1-pro"}')
    assert status == 403
    assert await reached(upstream, headers["x-request-id"]) == []
    chain_is_closed(sc)


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b'{"model":"gpt-4o-mini","input":NaN}', "application/json"),
        (b'{"model":"gpt-4o-mini","input":Infinity}', "application/json"),
        (b'{"model":"gpt-4o-mini","n":1e400}', "application/json"),
        (b'{"model":"gpt-4o-mini","input":"\xff\xfe"}', "application/json"),
        (b'{"model":"gpt-4o-mini","input":"\\ud800"}', "application/json"),
        (b'\xef\xbb\xbf{"model":"gpt-4o-mini","input":"bom"}', "application/json"),
        ('{"model":"gpt-4o-mini","input":"x"}'.encode("utf-16"), "application/json; charset=utf-16"),
        (b'{"model":"gpt-4o-mini","input":"x"}', "application/json; charset=latin-1"),
        (b'{"model":"gpt-4o-mini"} trailing', "application/json"),
    ],
    ids=[
        "nan",
        "infinity",
        "overflow",
        "invalid-utf8",
        "lone-surrogate",
        "bom",
        "utf16",
        "latin1",
        "trailing",
    ],
)
async def test_bodies_the_sidecar_will_not_reserialise_are_400(
    make_sidecar: MakeSidecar, upstream: Upstream, raw: bytes, content_type: str
) -> None:
    sc = await make_sidecar(**FAST)
    status, headers, body = await post(sc, raw, {"Content-Type": content_type})
    assert status == 400
    is_openai_error(body, "invalid_request")
    await refused(sc, upstream, headers, 400, "invalid_request")
    chain_is_closed(sc)


# --- Content-Encoding ---------------------------------------------------------------------------------


async def test_content_encodings(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    sc = await make_sidecar(**FAST, SIDECAR_MAX_BODY_BYTES=str(1 << 20))
    plain = json.dumps(doc(), indent=2).encode()
    expected = orjson.dumps(doc()).decode()
    for coding, data in (
        ("gzip", gzip.compress(plain)),
        ("x-gzip", gzip.compress(plain)),
        ("deflate", zlib.compress(plain)),
        ("identity", plain),
        ("GZIP, identity", gzip.compress(plain)),
    ):
        status, headers, _ = await post(sc, data, {"Content-Encoding": coding})
        assert status == 200, coding
        assert await forwarded_body(sc, upstream, headers) == expected  # decoded, and says so upstream

    packed = gzip.compress(plain)
    bomb = gzip.compress(b" " * (64 << 20), 9)  # 64 MiB of whitespace in ~64 KiB
    refusals = [
        ("gzip", packed[:20] + b"\x00garbage\x00" + packed[28:], 400, "invalid_request"),
        ("gzip", packed[:-6], 400, "invalid_request"),  # truncated
        ("gzip", packed + b"more", 400, "invalid_request"),  # data after the end
        ("deflate", packed, 400, "invalid_request"),  # gzip bytes labelled deflate
        ("gzip", bomb, 413, "request_too_large"),
        ("zstd", plain, 415, "unsupported_encoding"),
        ("br", plain, 415, "unsupported_encoding"),
        ("x-unknown", plain, 415, "unsupported_encoding"),
        ("gzip, gzip", gzip.compress(packed), 415, "unsupported_encoding"),
    ]
    for coding, data, status_expected, code in refusals:
        status, headers, body = await post(sc, data, {"Content-Encoding": coding})
        assert status == status_expected, (coding, body)
        is_openai_error(body, code)
        await refused(sc, upstream, headers, status_expected, code)

    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", gzip.compress(b'{"a":1}\n'), filename="f.jsonl")
    async with (
        aiohttp.ClientSession() as s,
        s.post(sc.url + "/files", data=form, headers={**AUTH, "Content-Encoding": "gzip"}) as r,
    ):
        assert r.status == 415  # uploads are streamed as sent: never encoded
        is_openai_error(await r.json(), "unsupported_encoding")
        await refused(sc, upstream, r.headers, 415, "unsupported_encoding")
    chain_is_closed(sc)


# --- what the handler never expected ----------------------------------------------------------------


class _Secret(RuntimeError):
    pass


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        (_Secret("the prompt was: olivia.brandt@example.net"), 500, "internal_error"),
        (web.HTTPRequestEntityTooLarge(max_size=10, actual_size=20), 413, "request_too_large"),
        (KeyError("olivia.brandt@example.net"), 500, "internal_error"),
    ],
    ids=["bug", "aiohttp-413", "key-error"],
)
async def test_unexpected_errors_are_openai_shaped_audited_and_logged_without_content(
    make_sidecar: MakeSidecar,
    upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
    fault: Exception,
    status: int,
    code: str,
) -> None:
    sc = await make_sidecar(**FAST)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise fault  # a fault injected into a real stage: a bug the sidecar did not foresee

    sc.sidecar.proxy.decider.decide = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO):
        got, headers, body = await post(sc, orjson.dumps(doc(input="olivia.brandt@example.net")))
    assert got == status
    is_openai_error(body, code)
    assert headers["x-request-id"].startswith("req_")
    end = ends(sc)[headers["x-request-id"]]
    assert end["outcome"] == ("error" if status >= 500 else "refused")
    assert end["error"] == {"status": status, "code": code}
    assert await reached(upstream, headers["x-request-id"]) == []
    assert "olivia" not in caplog.text and "olivia" not in json.dumps(body)
    if status == 500:
        (line,) = [r for r in caplog.records if r.getMessage() == "unexpected error"]
        assert line.__dict__["error"] == type(fault).__name__ and line.__dict__["at"]
    chain_is_closed(sc)

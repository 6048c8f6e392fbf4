"""Each pipeline stage on its own, with pytest-aiohttp's test client."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from sidecar import config
from sidecar.errors import SidecarError
from sidecar.pipeline.authenticate import StaticKeys
from sidecar.pipeline.context import Call
from sidecar.pipeline.decide import build_input
from sidecar.pipeline.enforce import Plan, apply_output_cap
from sidecar.pipeline.forward import Forwarder
from sidecar.pipeline.inspect import read_payload, summarize
from sidecar.pipeline.settle import usage_from_event, usage_from_json_body
from sidecar.pipeline.stream import SseSplitter, event_data

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


def _settings(tmp_path: Path, **env: str) -> config.Settings:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"ck-1": {"sub": "bot", "tenant": "acme", "groups": ["g"]}}))
    return config.load(environ={"SIDECAR_STATIC_KEYS_FILE": str(keys), **env})


def _echo_stage(stage: Callable[[web.Request], Awaitable[Any]]) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        try:
            result = await stage(request)
        except SidecarError as err:
            return web.json_response(err.body(), status=err.status)
        return web.json_response(result)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def test_authenticate(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    auth = StaticKeys(_settings(tmp_path).static_keys_file)

    async def stage(request: web.Request) -> Any:
        subject = await auth.authenticate(request)
        return {"sub": subject.sub, "tenant": subject.tenant, "groups": list(subject.groups)}

    client = await aiohttp_client(_echo_stage(stage))
    ok = await client.get("/", headers={"Authorization": "Bearer ck-1"})
    assert await ok.json() == {"sub": "bot", "tenant": "acme", "groups": ["g"]}
    for headers in [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic ck-1"},
        {"Authorization": "Bearer "},
    ]:
        resp = await client.get("/", headers=headers)
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthenticated"


async def test_inspect_reads_and_summarises(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    settings = _settings(tmp_path, SIDECAR_MAX_BODY_BYTES="200")

    async def stage(request: web.Request) -> Any:
        payload = await read_payload(request, settings)
        summary = summarize(payload)
        return {"kind": payload.kind, "size": payload.size, "model": summary.model, "stream": summary.stream,
                "limit": summary.max_output_tokens, "field": summary.output_limit_field, "tools": summary.tools}  # fmt: skip

    client = await aiohttp_client(_echo_stage(stage))
    body = {
        "model": "gpt-4o",
        "stream": True,
        "max_tokens": 9,
        "tools": [{"type": "function"}, {"type": "web_search"}],
    }
    got = await (await client.post("/", json=body)).json()
    assert got == {"kind": "json", "size": len(json.dumps(body, separators=(",", ":"))), "model": "gpt-4o", "stream": True, "limit": 9,
                   "field": "max_tokens", "tools": ["function", "web_search"]}  # fmt: skip
    assert (await (await client.get("/")).json())["kind"] == "none"
    form_data = aiohttp.FormData()
    form_data.add_field("purpose", "x")
    form_data.add_field("file", b"a" * 500, filename="f.jsonl")
    form = await (await client.post("/", data=form_data)).json()
    assert form["kind"] == "stream"  # multipart is not read here, whatever its size
    too_big = await client.post(
        "/", data=b"{" + b" " * 300 + b"}", headers={"Content-Type": "application/json"}
    )
    assert too_big.status == 413


async def test_forward_replaces_credentials_and_strips_hop_by_hop(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}

    async def upstream(request: web.Request) -> web.Response:
        seen.update(headers=dict(request.headers), path=request.path_qs, body=await request.read())
        return web.json_response(
            {"ok": True},
            headers={"Set-Cookie": "track=1", "x-request-id": "up-1", "Connection": "keep-alive"},
        )

    up = web.Application()
    up.router.add_post("/v1/responses", upstream)
    up_client = await aiohttp_client(up)
    settings = _settings(
        tmp_path, SIDECAR_UPSTREAM_URL=str(up_client.make_url("/v1")), SIDECAR_UPSTREAM_API_KEY="sk-prov"
    )
    forwarder = Forwarder(settings)
    await forwarder.start()
    call = Call(
        id="req_1", method="POST", path="/v1/responses", query="x=1", trace_id="a" * 32, span_id="b" * 16
    )
    try:
        request = _mocked("POST", "/v1/responses?x=1", {
            "Authorization": "Bearer ck-1", "Cookie": "s=1", "X-End-User-Token": "t", "Connection": "close",
            "Keep-Alive": "5", "Accept-Encoding": "gzip", "User-Agent": "Agents/Python", "x-stainless-retry-count": "0",
        })  # fmt: skip
        upstream_resp = await forwarder.send(request, call, Plan(body=b'{"a":1}', doc={"a": 1}))
        from sidecar.pipeline.forward import downstream_headers

        down = downstream_headers(upstream_resp, call)
        upstream_resp.release()
    finally:
        await forwarder.close()
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["authorization"] == "Bearer sk-prov"
    assert "cookie" not in headers and "x-end-user-token" not in headers and "keep-alive" not in headers
    assert headers["accept-encoding"] == "identity" and headers["user-agent"] == "Agents/Python"
    assert (
        headers["x-client-request-id"] == "req_1" and headers["traceparent"] == f"00-{'a' * 32}-{'b' * 16}-01"
    )
    assert seen["path"] == "/v1/responses?x=1" and seen["body"] == b'{"a":1}'
    assert "set-cookie" not in {k.lower() for k in down} and down["x-request-id"] == "req_1"
    assert down["x-upstream-request-id"] == "up-1"


def _mocked(method: str, path: str, headers: dict[str, str]) -> web.Request:
    from aiohttp.test_utils import make_mocked_request

    return make_mocked_request(method, path, headers=headers)


def test_policy_input_never_holds_credentials(tmp_path: Path) -> None:
    settings = _settings(tmp_path, SIDECAR_INPUT_HEADERS="x-tenant-id,user-agent")
    request = _mocked("POST", "/v1/responses", {
        "Authorization": "Bearer ck-1", "Cookie": "c", "X-Tenant-Id": "acme", "X-End-User-Token": "jwt",
    })  # fmt: skip
    from sidecar.pipeline.inspect import Payload

    body = {"model": "gpt-4o", "input": "my secret prompt"}
    payload = Payload("json", "application/json", 30, body, json.dumps(body).encode())
    doc = build_input(
        Call(id="req_9", method="POST", path="/v1/responses"), request, payload, summarize(payload), settings
    )
    text = json.dumps(doc)
    assert "ck-1" not in text and "jwt" not in text and "my secret prompt" not in text
    assert doc["request"]["headers"] == {"x-tenant-id": "acme"}
    assert set(doc) >= {"version", "request", "subject", "pii", "budget", "approval", "time"}
    assert doc["request"]["model"] == "gpt-4o" and doc["request"]["estimated_input_tokens"] > 0


@pytest.mark.parametrize(
    ("operation", "requested", "field", "cap", "expect"),
    [
        ("responses.create", None, None, 100, {"max_output_tokens": 100}),
        ("chat.completions.create", None, None, 100, {"max_completion_tokens": 100}),
        ("chat.completions.create", 500, "max_tokens", 100, {"max_tokens": 100}),
        ("responses.create", 50, "max_output_tokens", 100, {}),
        ("embeddings.create", None, None, 100, {}),
        ("responses.create", 500, "max_output_tokens", None, {}),
    ],
)
def test_output_cap(
    operation: str, requested: int | None, field: str | None, cap: int | None, expect: dict[str, int]
) -> None:
    from sidecar.pipeline.inspect import Summary

    doc: dict[str, Any] = {}
    changed = apply_output_cap(doc, Summary("m", False, requested, field, []), operation, cap)
    assert doc == expect and changed == bool(expect)


EVENTS = [
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hi"}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\r\n\r\n',
    b'event: response.completed\ndata: {"type":"response.completed","response":{"usage":{"input_tokens":5,"output_tokens":6}}}\n\n',
    b"data: [DONE]\n\n",
]


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_sse_splitter_finds_events_across_any_chunking(cuts: list[int]) -> None:
    stream = b"".join(EVENTS)
    chunks, pos = [], 0
    for cut in cuts:
        chunks.append(stream[pos : pos + cut])
        pos += cut
    chunks.append(stream[pos:])
    splitter = SseSplitter()
    events = [e for chunk in chunks for e in splitter.feed(chunk)]
    assert events == EVENTS and splitter.tail() == b""


def test_usage_from_every_shape() -> None:
    usages = [usage_from_event(event_data(e)) for e in EVENTS]
    assert [(u.input_tokens, u.output_tokens) if u else None for u in usages] == [None, (3, 4), (5, 6), None]
    assert usage_from_json_body(b'{"usage": {"input_tokens": 1, "output_tokens": 2}}').total == 3  # type: ignore[union-attr]
    assert usage_from_json_body(b'{"usage": {"prompt_tokens": 1, "completion_tokens": 2}}').total == 3  # type: ignore[union-attr]
    assert usage_from_json_body(b'{"no": "usage"}') is None
    assert usage_from_json_body(b'{"usage": ') is None


def test_input_tokens_are_counted_with_the_models_tokenizer() -> None:
    from sidecar.pipeline.inspect import Payload, encoding_for, estimate_input_tokens

    body = {"model": "gpt-4o", "input": "The quick brown fox jumps over the lazy dog. " * 50}
    raw = json.dumps(body).encode()
    payload = Payload("json", "application/json", len(raw), body, raw)
    counted = estimate_input_tokens(payload, "gpt-4o")
    assert counted == len(encoding_for("gpt-4o").encode(raw.decode()))
    assert len(encoding_for("gpt-4o").encode("hello world")) == 2  # o200k: [24912, 2375]
    assert 450 <= counted <= 600  # ~10 tokens a sentence, plus the JSON around it
    assert estimate_input_tokens(Payload("stream", "multipart/form-data", 10_000), "gpt-4o") == 0

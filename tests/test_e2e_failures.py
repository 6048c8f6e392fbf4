"""Bad input, upstream failures, disconnects and policy failures: each gets a clear OpenAI-shaped error
and leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import ACME_KEY, MakeSidecar, Upstream, eventually, free_port

AUTH = {"Authorization": f"Bearer {ACME_KEY}"}


async def _post(
    url: str, data: Any = None, headers: dict[str, str] | None = None, **kw: Any
) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(url, data=data, headers={**AUTH, **(headers or {})}, **kw) as r,
    ):
        body = await r.read()
        return r.status, r.headers, json.loads(body) if body else None


def _is_openai_error(body: Any, code: str) -> None:
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b'{"model": "gpt-4o", "input": ', "application/json", 400, "invalid_request"),
        (b"[1, 2, 3]", "application/json", 400, "invalid_request"),
        (b'"just a string"', "application/json", 400, "invalid_request"),
        (b"model=gpt-4o", "text/plain", 400, "invalid_request"),
        (b"model=gpt-4o", "application/x-www-form-urlencoded", 400, "invalid_request"),
    ],
)
async def test_bad_bodies(
    make_sidecar: MakeSidecar, upstream: Upstream, data: bytes, content_type: str, status: int, code: str
) -> None:
    sc = await make_sidecar()
    await upstream.clear()
    got, headers, body = await _post(sc.url + "/responses", data, {"Content-Type": content_type})
    assert got == status
    _is_openai_error(body, code)
    assert headers["x-request-id"].startswith("req_")
    assert await upstream.requests() == []


async def test_oversized_bodies_get_413(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    sc = await make_sidecar(SIDECAR_MAX_BODY_BYTES="1000")
    big = json.dumps({"model": "gpt-4o", "input": "x" * 2000}).encode()
    status, _, body = await _post(sc.url + "/responses", big, {"Content-Type": "application/json"})
    assert status == 413
    _is_openai_error(body, "request_too_large")

    async def chunked() -> Any:  # no Content-Length: the limit holds while reading
        for _ in range(10):
            yield b" " * 500

    status, _, body = await _post(sc.url + "/responses", chunked(), {"Content-Type": "application/json"})
    assert status == 413
    _is_openai_error(body, "request_too_large")
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.responses.create(model="gpt-4o", input="y" * 5000)
    assert caught.value.status_code == 413


async def test_unknown_paths(make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar()
    status, headers, body = await _post(
        sc.url + "/not-an-endpoint", b"{}", {"Content-Type": "application/json"}
    )
    assert status == 403  # operation `unknown`: denied by default
    _is_openai_error(body, "policy_violation")
    assert headers["x-should-retry"] == "false"
    root = sc.url.removesuffix("/v1")
    async with aiohttp.ClientSession() as s, s.get(root + "/admin/secret") as r:
        assert r.status == 404
        _is_openai_error(await r.json(), "unknown_path")
        assert r.headers["x-request-id"].startswith("req_")


async def test_upstream_errors_pass_through_unchanged(make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.responses.create(model="gpt-4o", input="x", extra_headers={"x-dev-upstream-fail": "429"})
    assert caught.value.status_code == 429
    assert caught.value.response.headers["x-request-id"].startswith("req_")
    assert caught.value.response.headers.get("x-upstream-request-id")
    end = sc.audit()[-1]
    assert end["upstream"]["status"] == 429 and end["outcome"] == "forwarded"


async def test_upstream_timeout_is_504(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    sc = await make_sidecar(SIDECAR_UPSTREAM_READ_TIMEOUT="0.5")
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        await client.responses.create(
            model="gpt-4o", input="x", extra_headers={"x-dev-upstream-delay-ms": "3000"}
        )
    assert caught.value.status_code == 504 and caught.value.code == "upstream_timeout"
    assert sc.audit()[-1]["error"] == {"status": 504, "code": "upstream_timeout"}


async def test_upstream_refusal_is_502(make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(SIDECAR_UPSTREAM_URL=f"http://127.0.0.1:{free_port()}")
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.responses.create(model="gpt-4o", input="x")
    assert caught.value.status_code == 502 and caught.value.code == "upstream_unavailable"


async def test_upstream_dropping_mid_request_is_502(make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar()
    status, _, body = await _post(
        sc.url + "/responses",
        json={"model": "gpt-4o", "input": "x"},
        headers={"x-dev-upstream-drop": "1"},
    )
    assert status == 502
    _is_openai_error(body, "upstream_unavailable")


async def test_client_disconnect_cancels_the_upstream_stream(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    sc = await make_sidecar()
    await upstream.clear()
    body = {"model": "gpt-4o", "input": "tell me a long story " * 20, "stream": True}
    headers = {**AUTH, "x-dev-upstream-stream-delay-ms": "100"}
    async with aiohttp.ClientSession() as s:
        resp = await s.post(sc.url + "/responses", json=body, headers=headers)
        first = await resp.content.readline()
        assert first.startswith(b"event: response.created")
        assert (await upstream.stats())["streams_completed"] == 0  # relayed before the upstream finished
        resp.close()

    async def cancelled() -> bool:
        return (await upstream.stats())["streams_cancelled"] == 1

    await eventually(cancelled)
    stats = await upstream.stats()
    assert stats["streams_completed"] == 0

    async def audited() -> bool:
        ends = [r for r in sc.audit() if r["phase"] == "end"]
        return bool(ends) and ends[-1]["outcome"] == "client_disconnected"

    await eventually(audited)


async def test_chat_usage_chunk_is_hidden_unless_asked(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    sc = await make_sidecar()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    messages: Any = [{"role": "user", "content": "hi"}]
    plain = [
        c async for c in await client.chat.completions.create(model="gpt-4o", messages=messages, stream=True)
    ]
    assert all(c.usage is None for c in plain) and all(c.choices for c in plain)
    asked = [
        c
        async for c in await client.chat.completions.create(
            model="gpt-4o", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    ]
    assert asked[-1].choices == [] and asked[-1].usage is not None and asked[-1].usage.total_tokens > 0
    ends = [r for r in sc.audit() if r["phase"] == "end"]
    assert ends[-2]["budget"]["used"] == ends[-1]["budget"]["used"] > 0  # usage learnt either way


def _bundle(tmp_path: Path, rego: str) -> str:
    folder = tmp_path / "bundle"
    folder.mkdir(exist_ok=True)
    (folder / "policy.rego").write_text(rego)
    return str(folder)


@pytest.mark.parametrize(
    "rego",
    [
        'package sidecar\n\ndecision := {"allow": true} if { input.request.model == "never" }\n',
        'package sidecar\n\ndecision := {"allow": "yes"}\n',
        'package sidecar\n\ndecision := ["allow"]\n',
        'package sidecar\n\ndecision := {"allow": true, "max_output_tokens": -5}\n',
    ],
    ids=["undefined", "non-boolean-allow", "not-an-object", "bad-cap"],
)
async def test_undefined_or_malformed_decision_is_deny(
    make_sidecar: MakeSidecar, upstream: Upstream, tmp_path: Path, rego: str
) -> None:
    sc = await make_sidecar(SIDECAR_BUNDLE=_bundle(tmp_path, rego))
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await client.responses.create(model="gpt-4o", input="x")
    assert caught.value.code == "policy_violation"
    assert await upstream.requests() == []


async def test_engine_error_is_503_policy_unavailable(
    make_sidecar: MakeSidecar, upstream: Upstream, tmp_path: Path
) -> None:
    # A conflict at evaluation time: the engine cannot answer for this input.
    rego = (
        'package sidecar\n\ndecision := {"allow": true} if { input.request.model }\n'
        'decision := {"allow": false} if { input.request.stream == false }\n'
    )
    sc = await make_sidecar(SIDECAR_BUNDLE=_bundle(tmp_path, rego))
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        await client.responses.create(model="gpt-4o", input="x")
    assert caught.value.status_code == 503 and caught.value.code == "policy_unavailable"
    assert await upstream.requests() == []


async def test_daemon_down_fails_closed_or_open(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    closed = await make_sidecar(SIDECAR_OPA_URL=dead)
    client = openai.AsyncOpenAI(base_url=closed.url, api_key=ACME_KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        await client.responses.create(model="gpt-4o", input="x")
    assert caught.value.status_code == 503 and caught.value.code == "policy_unavailable"
    async with aiohttp.ClientSession() as s, s.get(closed.admin + "/readyz") as r:
        assert r.status == 503 and (await r.json())["ready"] is False

    opened = await make_sidecar(SIDECAR_OPA_URL=dead, SIDECAR_FAIL_MODE="open")
    client = openai.AsyncOpenAI(base_url=opened.url, api_key=ACME_KEY, max_retries=0)
    answer = await client.responses.create(model="gpt-4o", input="x")
    assert answer.output_text
    assert opened.audit()[-1]["fail_open"] == ["policy"]


async def test_many_concurrent_calls_each_get_their_own_answer(make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    # 40 calls: each reserves its prompt plus acme's 4096-token output cap, within the 200k minute budget.
    answers = await asyncio.gather(
        *[client.responses.create(model="gpt-4o", input=f"question {i}") for i in range(40)]
    )
    assert [a.output_text for a in answers] == [f"Echo: question {i}" for i in range(40)]

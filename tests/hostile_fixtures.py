"""Helpers for the hostile-input end-to-end tests (test_e2e_hostile_body.py, test_e2e_slow_clients.py):
requests written byte for byte, and the checks every refusal must pass (OpenAI-shaped, audited with its
outcome, nothing sent upstream)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from tests.conftest import ACME_KEY, RunningSidecar, Upstream

AUTH = {"Authorization": f"Bearer {ACME_KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}
HEADER_TIMEOUT, BODY_TIMEOUT, KEEPALIVE = 0.8, 0.6, 2.5
FAST = {
    "SIDECAR_PII_MODE": "off",
    "SIDECAR_CLIENT_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    "SIDECAR_CLIENT_BODY_TIMEOUT": str(BODY_TIMEOUT),
    "SIDECAR_CLIENT_KEEPALIVE_TIMEOUT": str(KEEPALIVE),
}


CAP = b',"max_output_tokens":50'  # under the policy's output cap: the enforce stage leaves the body alone


def doc(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "input": "hello", "max_output_tokens": 50, **extra}


def nested(depth: int) -> bytes:
    """A request body whose deepest container is `depth` levels down (the body itself is level 1)."""
    inner = b"[" * (depth - 1) + b"]" * (depth - 1)
    return b'{"model":"gpt-4o-mini","input":"hello"' + CAP + b',"metadata_blob":' + inner + b"}"


async def post(
    sc: RunningSidecar, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.post(sc.url + "/responses", data=body, headers={**JSON, **(headers or {})}) as r,
    ):
        raw = await r.read()
        return r.status, r.headers, json.loads(raw) if raw else None


def is_openai_error(body: Any, code: str) -> None:
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def ends(sc: RunningSidecar) -> dict[str, dict[str, Any]]:
    return {r["decision_id"]: r for r in sc.audit() if r["phase"] == "end"}


def chain_is_closed(sc: RunningSidecar) -> None:
    """Every call has exactly one end record, after its start (if any), and none is left pending."""
    phases: dict[str, list[str]] = {}
    for record in sc.audit():
        phases.setdefault(record["decision_id"], []).append(record["phase"])
        if record["phase"] == "end":
            assert record["outcome"] != "pending", record
    for request_id, seen in phases.items():
        assert seen in (["end"], ["start", "end"]), (request_id, seen)


async def reached(upstream: Upstream, request_id: str) -> list[dict[str, Any]]:
    return [r for r in await upstream.requests() if r["headers"].get("x-client-request-id") == request_id]


async def refused(sc: RunningSidecar, upstream: Upstream, headers: Any, status: int, code: str) -> None:
    """The call was refused by the sidecar: audited as such, and nothing reached the upstream."""
    request_id = headers["x-request-id"]
    end = ends(sc)[request_id]
    assert end["outcome"] == "refused" and end["error"] == {"status": status, "code": code}, end
    assert await reached(upstream, request_id) == []


async def forwarded_body(sc: RunningSidecar, upstream: Upstream, headers: Any) -> str:
    """The call was forwarded: audited as such; the body the upstream received."""
    request_id = headers["x-request-id"]
    assert ends(sc)[request_id]["outcome"] == "forwarded"
    (got,) = await reached(upstream, request_id)
    assert "content-encoding" not in got["headers"]
    return str(got["body"])


# --- raw connections ---------------------------------------------------------------------------------


async def open_connection(sc: RunningSidecar) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", sc.sidecar.settings.port)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = raw.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), seconds) == b""
    return time.monotonic() - started


BOUNDARY = "b0undary"
UPLOAD_START = (  # an upload's head and first part, announcing far more than is sent
    f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACME_KEY}\r\n"
    f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 100000\r\n\r\n"
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="f.jsonl"\r\n'
    "Content-Type: application/octet-stream\r\n\r\n"
).encode()


def json_head(length: int, path: str = "/v1/responses") -> bytes:
    """A JSON request head announcing `length` body bytes."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACME_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()

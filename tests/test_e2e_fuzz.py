"""Random bytes against a live `sidecar serve` process: it survives, answers in OpenAI's shape, and lets
nothing unexpected through to the upstream.

The attack: a compromised agent controls every byte of its requests — header values, the request target,
the query and the body — and uses whatever the sidecar does not look at. Each example is one raw HTTP/1.1
request on its own connection (written byte for byte, so nothing in a client library cleans it up), and
checks that:
- the process is still running and answering;
- the response is well-formed HTTP, carries `x-request-id`, and any error is an OpenAI error body;
- whatever reached the upstream for this call (matched by `x-client-request-id`) carries the provider key
  and only allowlisted headers, a request target that is canonical, and, for JSON, a valid object;
- nothing reaches the upstream for a call the sidecar refused itself.

`make test` runs a bounded number of examples. A longer run (see docs/security.md):
`SIDECAR_FUZZ_EXAMPLES=5000 .venv/bin/pytest -q tests/test_e2e_fuzz.py -p no:cacheprovider`.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.pipeline.canonical import canonical_target
from sidecar.pipeline.canonical import target as target_of
from tests.conftest import (
    ACME_KEY,
    PROVIDER_KEY,
    Served,
    Upstream,
    sidecar_process,
)

EXAMPLES = int(os.environ.get("SIDECAR_FUZZ_EXAMPLES", "120"))
# Request headers the upstream may see: the sidecar's forwarding allowlist plus what it sets itself.
UPSTREAM_HEADERS = {
    "accept",
    "accept-encoding",
    "authorization",
    "content-length",
    "content-type",
    "host",
    "idempotency-key",
    "openai-beta",
    "openai-organization",
    "openai-project",
    "traceparent",
    "tracestate",
    "user-agent",
    "x-client-request-id",
}
UPSTREAM_HEADER_PREFIXES = ("x-stainless-",)
TALLY = {"forwarded": 0, "refused": 0, "answered": 0}  # what the examples exercised (checked below)
AMBIGUOUS = ("%2f", "%25", "/./", "/../", "//", "\\", "%2e")


@pytest.fixture(scope="module")
def served(upstream: Upstream, keys_file: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with sidecar_process(upstream, keys_file, tmp_path_factory.mktemp("fuzz")) as running:
        yield running


# --- the attacker's inputs ---------------------------------------------------------------------------

OPERATIONS = [
    ("POST", "/v1/responses"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/files/file-abc"),
    ("GET", "/v1/files/file-abc/content"),
    ("DELETE", "/v1/vector_stores/vs_1/files/file-1"),
    ("POST", "/v1/fine_tuning/jobs"),
]
target_noise = st.binary(max_size=24).map(
    lambda b: bytes(c for c in b if c not in b" \r\n")  # these end the request line: framing, not target
)
header_value = st.one_of(
    st.binary(max_size=40).map(lambda b: bytes(c for c in b if c not in b"\r\n\x00")),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.encode),
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["json", "responses", "responses", "responses", "bytes", "empty", "deep"]))
    if kind == "responses":
        doc = {"model": "gpt-4o-mini", "input": draw(st.text(max_size=40)), "extra": draw(json_value)}
        return json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()
    if kind == "json":
        return json.dumps(draw(json_value)).encode()
    if kind == "deep":
        depth = draw(st.integers(1, 3000))
        return b'{"model":"gpt-4o-mini","input":' + b"[" * depth + b"]" * depth + b"}"
    if kind == "empty":
        return b""
    return draw(st.binary(max_size=200))


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, bytes]:
    method, path = draw(st.sampled_from(OPERATIONS))
    if draw(st.integers(0, 3)) == 0:
        method = draw(st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"]))
    target = path.encode()
    where = draw(st.sampled_from(["none", "none", "none", "path", "query", "both"]))
    if where in ("path", "both"):
        cut = draw(st.integers(0, len(target)))
        target = target[:cut] + draw(target_noise) + target[cut:]
    if where in ("query", "both"):
        target += b"?" + draw(target_noise)
    body = draw(bodies())
    headers = [
        (b"Host", b"127.0.0.1"),
        (b"Authorization", b"Bearer " + ACME_KEY.encode()),
        (b"Connection", b"close"),
    ]
    content_type = draw(
        st.sampled_from([b"application/json"] * 4 + [b"application/json; charset=utf-8", b"text/plain", b""])
    )
    if content_type:
        headers.append((b"Content-Type", content_type))
    if body and draw(st.integers(0, 4)) == 0:
        body = gzip.compress(body)
        headers.append((b"Content-Encoding", b"gzip"))
    for name in draw(
        st.lists(
            st.sampled_from(
                [
                    b"User-Agent",
                    b"X-Tenant-Id",
                    b"OpenAI-Organization",
                    b"OpenAI-Project",
                    b"X-HTTP-Method-Override",
                    b"X-Forwarded-For",
                    b"Content-Encoding",
                    b"traceparent",
                    b"X-Stainless-Retry-Count",
                ]
            ),
            max_size=3,
        )
    ):
        headers.append((name, draw(header_value)))
    if body or method in ("POST", "PUT", "PATCH"):
        headers.append((b"Content-Length", str(len(body)).encode()))
    head = b"%s %s HTTP/1.1\r\n" % (method.encode(), target) + b"".join(
        b"%s: %s\r\n" % (k, v) for k, v in headers
    )
    return method, target, head + b"\r\n" + body


# --- one exchange --------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def exchange(port: int, raw: bytes, method: str) -> Answer:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        conn = h11.Connection(h11.CLIENT)
        # h11 must know what was asked to frame the answer (HEAD has no body); the bytes went out raw.
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        status, headers, body = 0, {}, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return Answer(status, headers, bytes(body))


def _alive(served: Served) -> None:
    assert served.proc.poll() is None, f"sidecar died with exit code {served.proc.returncode}"
    with urllib.request.urlopen(f"http://127.0.0.1:{served.admin}/healthz", timeout=10) as resp:
        assert resp.status == 200


def _is_openai_error(answer: Answer) -> dict[str, Any]:
    doc = json.loads(answer.body)
    error = doc["error"]
    assert isinstance(error["message"], str) and error["message"], doc
    assert isinstance(error["type"], str), doc
    assert "code" in error and "param" in error, doc
    return dict(error)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("SIDECAR_FUZZ_RANDOM") != "1",  # CI: the same examples every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(req=requests())
def test_random_bytes_never_crash_confuse_or_leak(
    served: Served, upstream: Upstream, req: tuple[str, bytes, bytes]
) -> None:
    method, target, raw = req
    seen = len(upstream.requests_sync())
    answer = exchange(served.port, raw, method)
    _alive(served)

    assert 200 <= answer.status < 600, answer
    assert PROVIDER_KEY.encode() not in answer.body and PROVIDER_KEY[-4:] not in answer.body.decode(
        "utf-8", "replace"
    ), "the provider key leaked into a response"
    error = _is_openai_error(answer) if answer.status >= 400 else None
    request_id = answer.headers.get("x-request-id")
    assert request_id, f"no x-request-id on {answer.status}"

    reached = [
        r for r in upstream.requests_sync()[seen:] if r["headers"].get("x-client-request-id") == request_id
    ]
    TALLY["answered"] += 1
    TALLY["forwarded" if reached else "refused"] += 1
    if error is not None and "x-upstream-request-id" not in answer.headers:
        assert reached == [], f"refused by the sidecar ({error['code']}) but the upstream got it"
    for got in reached:
        assert got["method"] == method
        assert got["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"
        extra = {h for h in got["headers"] if h not in UPSTREAM_HEADERS}
        assert all(h.startswith(UPSTREAM_HEADER_PREFIXES) for h in extra), extra
        sent_target = got["raw_path"]
        lowered = sent_target.split("?")[0].lower()
        assert not any(mark in lowered for mark in AMBIGUOUS), sent_target
        # What the upstream got is already canonical: the one spelling the policy judged.
        assert target_of(*canonical_target(sent_target)) == sent_target, sent_target
        assert canonical_target(target.decode("latin-1")) == canonical_target(sent_target), (
            target,
            sent_target,
        )
        if got["headers"].get("content-type", "").startswith("application/json") and got["body"]:
            assert isinstance(json.loads(got["body"]), dict)


def test_the_fuzz_reached_both_sides() -> None:
    """The examples above must both be forwarded and be refused, or their checks proved nothing."""
    assert TALLY["answered"] >= min(EXAMPLES, 50), TALLY
    assert TALLY["forwarded"] >= TALLY["answered"] // 20, TALLY
    assert TALLY["refused"] >= TALLY["answered"] // 20, TALLY

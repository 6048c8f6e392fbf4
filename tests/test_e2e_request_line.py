"""One canonical request, end to end: raw HTTP/1.1 requests (written byte for byte, so no client library
cleans them up) against a running sidecar in front of the dev upstream.

- Every class of ambiguous target is a 400 `invalid_request` that never reaches the upstream and is
  audited as refused; so is a header value that is not UTF-8, and the process keeps serving.
- Property: for any target the sidecar accepts, the upstream's raw request target is the canonical path
  and query, byte for byte, and the operation judged (the audit's) is `classify` of that canonical path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sidecar.errors import SidecarError
from sidecar.pipeline.canonical import PCHAR_SAFE, canonical_target, target
from sidecar.pipeline.classify import classify
from tests.conftest import (
    ACME_KEY,
    MakeSidecar,
    Served,
    Upstream,
    sidecar_process,
)
from tests.raw_http import asend_raw, send_raw

AUTH = [("Authorization", f"Bearer {ACME_KEY}")]


def _seen_upstream(upstream: Upstream, request_id: str) -> list[dict[str, Any]]:
    return [e for e in upstream.requests_sync() if e["headers"].get("x-client-request-id") == request_id]


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


# --- every class of ambiguous target ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "raw_target"),
    [
        ("GET", b"/v1/files/file-abc%2Fcontent"),
        ("GET", b"/v1/files/file-abc%252Fcontent"),
        ("DELETE", b"/v1/vector_stores/../files/file-123"),
        ("GET", b"/v1/files/%2e%2e/models"),
        ("GET", b"/v1/files/./file-1"),
        ("GET", b"/v1//models"),
        ("GET", b"/v1/models/"),
        ("GET", b"/v1/files\\file-1"),
        ("GET", b"/v1/files/file-1%5Ccontent"),
        ("GET", b"/v1/models#frag"),
        ("GET", b"/v1/files/a%3Fb"),
        ("GET", b"http://127.0.0.1/v1/models"),
    ],
    ids=[
        "encoded-slash",
        "encoded-percent",
        "dot-segment",
        "encoded-dot-segment",
        "single-dot",
        "empty-segment",
        "trailing-slash",
        "backslash",
        "encoded-backslash",
        "fragment",
        "encoded-question-mark",
        "absolute-form",
    ],
)
async def test_ambiguous_target_is_400_and_never_forwarded(
    make_sidecar: MakeSidecar, upstream: Upstream, method: str, raw_target: bytes
) -> None:
    sc = await make_sidecar(SIDECAR_PII_MODE="off")
    await upstream.clear()
    answer = await asend_raw(_port(sc.url), method, raw_target, AUTH)
    assert answer.status == 400, answer.body
    assert answer.error()["code"] == "invalid_request" and answer.error()["type"] == "invalid_request_error"
    assert answer.headers["x-should-retry"] == "false" and answer.headers["x-request-id"].startswith("req_")
    assert await upstream.requests() == []
    end = sc.audit()[-1]
    assert end["decision_id"] == answer.headers["x-request-id"] and end["outcome"] == "refused"
    assert (
        end["error"] == {"status": 400, "code": "invalid_request"}
        and end["request"]["operation"] == "unknown"
    )
    assert end["request"]["path"].isascii() and end["request"]["path"].isprintable()
    # Refused before authentication: a caller without a credential gets the same 400, not a 401.
    assert (await asend_raw(_port(sc.url), method, raw_target, [])).status == 400


async def test_other_spellings_are_forwarded_in_canonical_form(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    sc = await make_sidecar(SIDECAR_PII_MODE="off")
    await upstream.clear()
    answer = await asend_raw(_port(sc.url), "GET", b"/v%31/%66iles/file-%61bc?limit=%31%30&after=%2b", AUTH)
    assert answer.status == 404  # the dev upstream has no such file: it was forwarded
    [seen] = await upstream.requests()
    assert seen["raw_path"] == "/v1/files/file-abc?limit=10&after=%2B" and seen["method"] == "GET"
    end = sc.audit()[-1]
    assert end["request"]["operation"] == "files.retrieve" and end["request"]["path"] == "/v1/files/file-abc"


# --- a live process, and any target --------------------------------------------------------------------

PERMISSIVE = 'package sidecar\n\ndecision := {"allow": true}\n'


@pytest.fixture(scope="module")
def served(upstream: Upstream, keys_file: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`sidecar serve`, allowing every call: what is judged is then always what is forwarded."""
    folder = tmp_path_factory.mktemp("request-line")
    (folder / "bundle").mkdir()
    (folder / "bundle" / "policy.rego").write_text(PERMISSIVE)
    with sidecar_process(
        upstream, keys_file, folder, SIDECAR_BUNDLE=str(folder / "bundle"), SIDECAR_PII_MODE="off"
    ) as running:
        yield running


def test_header_that_is_not_utf8_is_400_and_the_process_lives(served: Served, upstream: Upstream) -> None:
    for name, value in [
        ("User-Agent", b"agent\x85"),
        ("X-Agent-Name", b"\xc3\x28"),
        ("traceparent", b"\xff"),
    ]:
        answer = send_raw(served.port, "GET", b"/v1/models", [*AUTH, (name, value)])
        assert answer.status == 400 and answer.error()["code"] == "invalid_request", answer.body
        assert name in answer.error()["message"]
        assert _seen_upstream(upstream, answer.headers["x-request-id"]) == []
        [end] = served.audited(answer.headers["x-request-id"])
        assert end["outcome"] == "refused" and end["error"]["code"] == "invalid_request"
    assert served.proc.poll() is None
    fine = send_raw(served.port, "GET", b"/v1/models", [*AUTH, ("User-Agent", "agent ☕".encode())])
    assert fine.status == 200 and len(_seen_upstream(upstream, fine.headers["x-request-id"])) == 1


_BYTES = st.sampled_from(list(b"aZ09-._~!$&'()*+,;=:@/?#%\\\x00\x80\xc3\xa9 \"<>[]{}|"))


@st.composite
def spelled(draw: st.DrawFn, min_size: int = 1) -> str:
    """A segment: bytes each written raw (when HTTP allows it in a target) or escaped in either case."""
    out = []
    for byte in draw(st.lists(_BYTES, min_size=min_size, max_size=6)):
        char, style = chr(byte), draw(st.sampled_from(["raw", "lower", "upper"]))
        if style == "raw" and (char.isalnum() or char in "-._~" + PCHAR_SAFE + "/\\.") and byte < 0x80:
            out.append(char)
        else:
            out.append(f"%{byte:02x}" if style == "lower" else f"%{byte:02X}")
    return "".join(out)


TEMPLATES = [
    ("GET", "/v1/files/{}"),
    ("GET", "/v1/files/{}/content"),
    ("DELETE", "/v1/vector_stores/{}/files/{}"),
    ("GET", "/v1/models/{}"),
]


@st.composite
def targets(draw: st.DrawFn) -> tuple[str, str]:
    method, template = draw(st.sampled_from(TEMPLATES))
    path = template.format(*(draw(spelled()) for _ in range(template.count("{}"))))
    if draw(st.booleans()):
        path = path.replace("/v1/", draw(st.sampled_from(["/v1/", "/v%31/", "/v1/./", "/v1//", "/v1/x/../"])))
    query = ""
    if draw(st.booleans()):
        query = "?" + "&".join(
            f"{draw(st.sampled_from(['limit', 'after', 'order', 'include[]']))}={draw(spelled(0))}"
            for _ in range(draw(st.integers(1, 3)))
        )
    return method, path + query


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(targets())
def test_what_is_judged_is_what_the_upstream_receives(
    served: Served, upstream: Upstream, case: tuple[str, str]
) -> None:
    method, raw = case
    answer = send_raw(served.port, method, raw.encode(), AUTH)
    request_id = answer.headers["x-request-id"]
    seen = _seen_upstream(upstream, request_id)
    try:
        path, query = canonical_target(raw)
    except SidecarError:
        event("refused")
        # Refused in the process as in the function, and nothing of it reached the upstream.
        assert answer.status == 400 and answer.error()["code"] == "invalid_request", (raw, answer.body)
        assert seen == []
        return
    assert answer.status != 400 or answer.error()["code"] != "invalid_request", (raw, answer.body)
    event("forwarded")
    [forwarded] = seen
    assert forwarded["raw_path"] == target(path, query) and forwarded["method"] == method
    judged = served.audited(request_id)[0]["request"]
    assert judged["path"] == path and judged["operation"] == classify(method, path)

"""Red-team reproductions for issue 15 ("what the policy judges is exactly what is sent").

Each test states the property the sidecar should hold against a hostile agent holding a valid caller
key; each failed on the code it was written against. Real parts: the dev upstream, the sidecar built
as `serve` builds it, the `openai` client and raw HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from multidict import CIMultiDict

from tests.conftest import ACME_KEY, BUNDLE, GLOBEX_KEY, MakeSidecar, RunningSidecar, Upstream

AUTH = {"Authorization": f"Bearer {ACME_KEY}"}
BOUNDARY = "redteam-0123456789"


def form(fields: dict[str, str], file_field: str = "image") -> bytes:
    """A multipart/form-data body: the text fields, then one small file part."""
    out = b""
    for name, value in fields.items():
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    out += (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{file_field}"; filename="a.png"\r\n'
        f"Content-Type: image/png\r\n\r\nPNG\r\n--{BOUNDARY}--\r\n"
    ).encode()
    return out


MULTIPART = {**AUTH, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def bundle_with(tmp_path: Path, rego: str) -> str:
    """The shipped bundle plus one extra policy file."""
    folder = tmp_path / "bundle"
    shutil.copytree(BUNDLE, folder)
    (folder / "redteam.rego").write_text("package sidecar\n\n" + rego + "\n")
    return str(folder)


async def post(sc: RunningSidecar, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(sc.url + path, data=body, headers=headers) as r:
        return r.status, await r.text()


# --- 1. a model the policy blocks reaches the upstream inside a multipart form -----------------------


@pytest.mark.xfail(
    strict=True,
    reason="open: multipart text fields (model, purpose) reach the policy with issue 10's streamed multipart parser",
)
async def test_a_blocked_model_in_a_multipart_form_is_judged(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    """`o1-pro` is on the shipped bundle's `models.deny`. As JSON (images.generate) it is refused; as
    the `model` field of a multipart images.edit (or audio.transcriptions) the policy sees model=null and
    the call is forwarded with it."""
    sc = await make_sidecar(SIDECAR_PII_MODE="off")
    status, _ = await post(
        sc, "/images/generations", json.dumps({"model": "o1-pro", "prompt": "x"}).encode(),
        {**AUTH, "Content-Type": "application/json"},
    )  # fmt: skip
    assert status == 403  # the control: the policy does block this model
    await upstream.clear()
    status, text = await post(sc, "/images/edits", form({"model": "o1-pro", "prompt": "x"}), MULTIPART)
    forwarded = [r for r in await upstream.requests() if r["path"] == "/v1/images/edits"]
    assert forwarded == [], f"a blocked model went upstream in a multipart form ({status} {text[:120]})"
    assert status == 403


# --- 2. a JSON operation sent as multipart is never inspected --------------------------------------


async def test_a_json_operation_sent_as_multipart_is_refused(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    """moderations.create takes JSON. Sent as multipart its body is never parsed, PII-scanned, or shown to
    the policy, and it streams upstream as is; on an approval-gated operation (batches.create) the same
    trick makes the sidecar spool up to SIDECAR_MAX_UPLOAD_BYTES (512 MiB) per call before refusing."""
    sc = await make_sidecar(SIDECAR_PII_MODE="off")
    await upstream.clear()
    status, _ = await post(sc, "/moderations", form({"model": "o1-pro", "input": "x"}, "file"), MULTIPART)
    assert [r["path"] for r in await upstream.requests()] == []
    assert status in (400, 415)
    status, text = await post(sc, "/batches", form({"input_file_id": "file-1"}, "file"), MULTIPART)
    assert status in (400, 415), text[:200]  # today: 403 approval_required, after spooling the body


# --- 3. a header the policy sees once is forwarded twice ------------------------------------------


async def test_a_policy_visible_header_sent_twice_is_judged_whole(
    make_sidecar: MakeSidecar, upstream: Upstream, tmp_path: Path
) -> None:
    """`openai-beta` is in the default SIDECAR_INPUT_HEADERS and in the forward allowlist. The policy
    input holds only the first value (`headers[name]`); the upstream gets every value."""
    bundle = bundle_with(
        tmp_path, 'deny contains "beta" if input.request.headers["openai-beta"] == "assistants=v1"'
    )
    sc = await make_sidecar(SIDECAR_PII_MODE="off", SIDECAR_BUNDLE=bundle)
    async with aiohttp.ClientSession() as http:
        async with http.get(sc.url + "/models", headers={**AUTH, "OpenAI-Beta": "assistants=v1"}) as r:
            assert r.status == 403  # the control: the policy denies this value
        await upstream.clear()
        twice = CIMultiDict(
            [*AUTH.items(), ("OpenAI-Beta", "responses=v1"), ("OpenAI-Beta", "assistants=v1")]
        )
        async with http.get(sc.url + "/models", headers=twice) as r:
            status = r.status
    seen = [r["headers"].get("openai-beta") for r in await upstream.requests()]
    assert not any("assistants=v1" in (v or "") for v in seen), f"{status}: upstream got {seen}"


# --- 4. the query string is sent but never judged -------------------------------------------------


async def test_the_policy_sees_the_query_it_forwards(
    make_sidecar: MakeSidecar, upstream: Upstream, tmp_path: Path
) -> None:
    """The upstream acts on query parameters (`GET /v1/responses/{id}?stream=true`, `include[]=`, list
    filters); the sidecar forwards the canonical query but the policy input has no `request.query`."""
    bundle = bundle_with(
        tmp_path, 'deny contains "query" if contains(object.get(input.request, "query", ""), "stream=true")'
    )
    sc = await make_sidecar(SIDECAR_PII_MODE="off", SIDECAR_BUNDLE=bundle)
    await upstream.clear()
    async with aiohttp.ClientSession() as http, http.get(sc.url + "/models?stream=true", headers=AUTH) as r:
        status = r.status
    assert [r["query"] for r in await upstream.requests()] == [], status
    assert status == 403


# --- 5. agent-chosen model strings become metric labels, kept forever ------------------------------


async def test_model_strings_cannot_grow_the_metrics_without_bound(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    """The shipped allowlist is a prefix (`gpt-4o-mini*`), so any `gpt-4o-mini<anything>` is allowed and
    reserved before the upstream says the model does not exist. Budgets.tokens keys (tenant, model, kind)
    on the raw string, never forgets it, and /metrics exports it as a label: a few calls with
    200 KB model names leak megabytes per call and blow up the scrape."""
    sc = await make_sidecar(SIDECAR_PII_MODE="off")
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    for i in range(5):
        # The upstream has no such model; the label is recorded before it says so.
        with contextlib.suppress(openai.APIStatusError):
            await client.chat.completions.create(
                model=f"gpt-4o-mini-{i}" + "x" * 200_000, messages=[{"role": "user", "content": "hi"}]
            )
    async with aiohttp.ClientSession() as http, http.get(sc.admin + "/metrics") as r:
        metrics = await r.read()
    budgets = sc.sidecar.budgets
    assert budgets is not None
    held = sum(len(model) for _, model, _ in budgets.tokens)
    assert held < 10_000, f"{held} characters of agent-chosen model names held as metric labels"
    assert len(metrics) < 200_000, f"/metrics is {len(metrics)} bytes"


# --- 6. the reservation ignores `n` -----------------------------------------------------------------


@pytest.mark.xfail(
    strict=True, reason="open: issue 10 item 2: the reservation bounds what the upstream can bill (n choices)"
)
async def test_the_reservation_covers_every_choice(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    """Chat `n` makes the upstream generate n choices of up to the output cap each (OpenAI bills them
    all); the reservation counts one. Concurrent calls with n=128 each fit the budget check while using
    128x what was reserved."""
    sc = await make_sidecar(SIDECAR_PII_MODE="off")
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    messages: Any = [{"role": "user", "content": "hi"}]
    await client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_completion_tokens=100)
    await client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, max_completion_tokens=100, n=8
    )
    one, eight = [r["budget"]["reserved"] for r in sc.audit() if r["phase"] == "end"][-2:]
    assert eight - one >= 7 * 100, f"n=1 reserved {one}, n=8 reserved {eight}"


# --- 7. an agent's slow bodies hold every admission slot ---------------------------------------------


async def test_slow_bodies_of_one_caller_do_not_shed_everyone_else(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    """A call holds its admission slot while the sidecar waits for the caller's body, and the body timeout
    bounds silence, not the total. One agent dribbling a byte every < 60 s on SIDECAR_MAX_CONCURRENCY
    connections holds every slot indefinitely: every other caller (here another tenant) gets 503
    `overloaded`, attributed to load."""
    sc = await make_sidecar(SIDECAR_PII_MODE="off", SIDECAR_MAX_CONCURRENCY="2", SIDECAR_QUEUE_TIMEOUT="1")
    host, port = sc.url.removeprefix("http://").removesuffix("/v1").split(":")
    held = []
    for _ in range(2):
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACME_KEY}\r\n"
            'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"mo'.encode()
        )
        await writer.drain()
        held.append(writer)
    await asyncio.sleep(0.3)
    victim = openai.AsyncOpenAI(base_url=sc.url, api_key=GLOBEX_KEY, max_retries=0)
    try:
        listed = await victim.models.list()
        assert listed.data
    except openai.APIStatusError as exc:
        raise AssertionError(
            f"another tenant was shed by one caller's slow bodies: {exc.status_code}"
        ) from None
    finally:
        for writer in held:
            writer.close()


# --- 8. content the model reads that the PII scan never looks at ----------------------------------

CARD = "4111 1111 1111 1111"  # a valid test card number: CREDIT_CARD is on the shipped deny_entities


@pytest.mark.xfail(strict=True, reason="open: issue 10 item 1: PII in every string field")
async def test_a_denied_entity_cannot_ride_in_fields_the_scan_skips(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    """The scan reads an allowlist of fields (messages' content, Responses `input`/`instructions`, ...).
    The model also reads `prediction.content`, tool and schema descriptions, `prompt.variables`: a card
    number there is forwarded raw although the same number in a message is denied."""
    sc = await make_sidecar(SIDECAR_PII_MODE="patterns")
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    try:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"card {CARD}"}]
        )
        raise AssertionError("control: a card number in a message must be denied")
    except openai.PermissionDeniedError:
        pass
    await upstream.clear()
    hidden: list[dict[str, Any]] = [
        {"prediction": {"type": "content", "content": f"card {CARD}"}},
        {"tools": [{"type": "function", "function": {"name": "f", "description": f"card {CARD}",
                                                      "parameters": {"type": "object"}}}], "tool_choice": "none"},
    ]  # fmt: skip
    for extra in hidden:
        with contextlib.suppress(openai.APIStatusError):
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_body=extra
            )
    leaked = [r["body"] for r in await upstream.requests() if CARD in r["body"]]
    assert leaked == [], f"{len(leaked)} request(s) carried the card number upstream"


# --- 9. forwarded headers the approval does not bind ----------------------------------------------


async def test_an_approval_binds_the_headers_it_forwards(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    """An approval binds method, path, query, tenant, account, content type and body, but not the request
    headers that are forwarded (`OpenAI-Beta`, `Accept`, `Idempotency-Key`, `x-stainless-*`, and every
    SIDECAR_FORWARD_HEADERS name, which an operator adds precisely because the upstream acts on it). The
    approved request plus such a header (here the dev upstream's `x-dev-upstream-reply`, forwarded by
    the test settings) uses the approval."""
    from tests.test_e2e_approval_binding import approve, held
    from tests.test_e2e_approvals import client

    sc = await make_sidecar(SIDECAR_PII_MODE="off")

    def job(**headers: str) -> Any:
        return client(sc).fine_tuning.jobs.create(
            model="gpt-4o-mini", training_file="file-abc", extra_headers=headers or None
        )

    approval = await held(job())
    await approve(sc, approval)
    await upstream.clear()
    try:
        await job(**{"x-dev-upstream-reply": "something else", "OpenAI-Beta": "other=v9"})
    except openai.PermissionDeniedError as exc:
        assert exc.code == "approval_required"
        return
    except openai.APIStatusError:
        pass
    seen = [r["headers"].get("openai-beta") for r in await upstream.requests()]
    raise AssertionError(f"the approval let a request with other forwarded headers through: {seen}")


# --- 10. responses outside the data path's error shape --------------------------------------------


async def test_asterisk_and_authority_targets_get_an_openai_shaped_answer(make_sidecar: MakeSidecar) -> None:
    """`OPTIONS *` and `CONNECT host:port` never reach the proxy handler: aiohttp answers a plain-text
    404 without x-request-id (the fuzz property: every response is OpenAI-shaped)."""
    from tests.raw_http import asend_raw

    sc = await make_sidecar(SIDECAR_PII_MODE="off")
    port = int(sc.url.rsplit(":", 1)[1].split("/", 1)[0])
    for method, raw_target in (("OPTIONS", b"*"), ("CONNECT", b"127.0.0.1:443")):
        answer = await asend_raw(port, method, raw_target, [("Authorization", f"Bearer {ACME_KEY}")])
        assert answer.headers.get("content-type", "").startswith("application/json"), (method, answer)
        assert "x-request-id" in answer.headers
        assert answer.error()["code"]

"""The sidecar, not the agent, chooses the headers the upstream acts on, end to end (the real `openai`
client and raw requests against a running sidecar in front of the dev upstream):

- request headers go upstream by allowlist: method overrides, `X-Forwarded-*`, other credentials,
  hop-by-hop and unknown headers are dropped;
- OpenAI-Organization / OpenAI-Project come from settings or the decision's `upstream`; an agent's own
  is refused with 400 unless the policy saw it and named it;
- the provider key, and any fragment of it, never comes back in an error body or a header, and neither
  do the upstream's account headers;
- a forwarded body's headers describe it: no Content-Encoding after decoding, a Content-Length that is
  the length sent.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import ACME_KEY, MakeSidecar, Upstream
from tests.raw_http import asend_raw

AUTH = {"Authorization": f"Bearer {ACME_KEY}"}
SDK_KEPT = {"user-agent", "x-stainless-lang", "x-stainless-retry-count", "openai-beta", "idempotency-key"}


async def _last(upstream: Upstream) -> dict[str, Any]:
    seen = await upstream.requests()
    assert len(seen) == 1, seen
    return seen[0]


# --- request headers by allowlist -----------------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [
        {"X-HTTP-Method-Override": "DELETE", "X-HTTP-Method": "DELETE", "X-Method-Override": "DELETE"},
        {
            "X-Forwarded-For": "10.0.0.1",
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Proto": "http",
            "Forwarded": "for=10.0.0.1;host=evil.example",
            "Via": "1.1 evil",
            "X-Real-IP": "10.0.0.1",
        },
        {
            "X-Api-Key": "sk-agent-own",
            "Api-Key": "sk-agent-own",
            "Cookie": "s=1",
            "Proxy-Authorization": "Basic eA==",
        },
        {"X-Custom": "1", "OpenAI-Version": "2020-10-01", "X-Original-URL": "/v1/files/f/content"},
    ],
    ids=["method-override", "x-forwarded", "other-credentials", "unknown"],
)
async def test_only_allowlisted_headers_reach_the_upstream(
    make_sidecar: MakeSidecar, upstream: Upstream, sent: dict[str, str]
) -> None:
    sc = await make_sidecar(SIDECAR_PII_MODE="off")
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    sdk = {"OpenAI-Beta": "responses=v1", "Idempotency-Key": "idem-1"}
    answer = await client.responses.create(model="gpt-4o", input="hi", extra_headers={**sent, **sdk})
    assert answer.output_text
    seen = await _last(upstream)
    assert seen["method"] == "POST" and seen["raw_path"] == "/v1/responses"
    assert not {name.lower() for name in sent} & set(seen["headers"]), seen["headers"]
    assert set(seen["headers"]) >= SDK_KEPT and seen["headers"]["idempotency-key"] == "idem-1"


async def test_operators_add_forwarded_headers(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    sc = await make_sidecar(SIDECAR_PII_MODE="off", SIDECAR_FORWARD_HEADERS="x-custom")
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    await client.models.list(extra_headers={"X-Custom": "yes", "X-Other": "no"})
    headers = (await _last(upstream))["headers"]
    assert headers["x-custom"] == "yes" and "x-other" not in headers


async def test_hop_by_hop_headers_are_dropped(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    sc = await make_sidecar(SIDECAR_PII_MODE="off")
    await upstream.clear()
    port = int(sc.url.rsplit(":", 1)[1].split("/", 1)[0])
    hop = [("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("Trailer", "X-Late"), ("X-Smuggle", "1")]
    answer = await asend_raw(port, "GET", b"/v1/models", [("Authorization", AUTH["Authorization"]), *hop])
    assert answer.status == 200
    headers = (await _last(upstream))["headers"]
    assert not {"keep-alive", "te", "trailer", "x-smuggle"} & set(headers)


# --- organization and project ----------------------------------------------------------------------

# Routes tenant acme to its own project; echoes a caller's OpenAI-Project when it is one acme may use.
TENANT_POLICY = """package sidecar

acme_projects := {"proj_acme_a", "proj_acme_b"}

upstream := {"project": input.request.headers["openai-project"]} if {
	acme_projects[input.request.headers["openai-project"]]
} else := {"project": "proj_tenant_acme"} if {
	input.subject.tenant == "acme"
} else := {}

decision := {"allow": true, "upstream": upstream}
"""


def _bundle(tmp_path: Path, rego: str) -> str:
    folder = tmp_path / "bundle"
    folder.mkdir(exist_ok=True)
    (folder / "policy.rego").write_text(rego)
    return str(folder)


@pytest.mark.parametrize(("organization", "project"), [("org-evil", None), (None, "proj_evil")])
async def test_agent_cannot_choose_the_account(
    make_sidecar: MakeSidecar, upstream: Upstream, organization: str | None, project: str | None
) -> None:
    sc = await make_sidecar(SIDECAR_PII_MODE="off", SIDECAR_UPSTREAM_ORGANIZATION="org-acme")
    await upstream.clear()
    client = openai.AsyncOpenAI(
        base_url=sc.url, api_key=ACME_KEY, max_retries=0, organization=organization, project=project
    )
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="gpt-4o", input="hi")
    assert caught.value.code == "invalid_request" and "OpenAI-" in caught.value.message.replace(
        "openai-", "OpenAI-"
    )
    assert await upstream.requests() == []


async def test_settings_choose_the_account_and_the_caller_never_sees_it(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    sc = await make_sidecar(
        SIDECAR_PII_MODE="off", SIDECAR_UPSTREAM_ORGANIZATION="org-acme", SIDECAR_UPSTREAM_PROJECT="proj_acme"
    )
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    raw = await client.responses.with_raw_response.create(model="gpt-4o", input="hi")
    headers = (await _last(upstream))["headers"]
    assert headers["openai-organization"] == "org-acme" and headers["openai-project"] == "proj_acme"
    assert "openai-organization" not in raw.headers and "openai-project" not in raw.headers


async def test_the_decision_routes_a_tenant_to_its_project(
    make_sidecar: MakeSidecar, upstream: Upstream, tmp_path: Path
) -> None:
    sc = await make_sidecar(
        SIDECAR_PII_MODE="off",
        SIDECAR_BUNDLE=_bundle(tmp_path, TENANT_POLICY),
        SIDECAR_UPSTREAM_ORGANIZATION="org-acme",
        SIDECAR_UPSTREAM_PROJECT="proj_default",
    )
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    await client.responses.create(model="gpt-4o", input="hi")
    headers = (await _last(upstream))["headers"]
    assert headers["openai-project"] == "proj_tenant_acme"  # the decision wins over the setting
    assert headers["openai-organization"] == "org-acme"  # the decision named none: the setting's


async def test_an_agent_account_header_passes_only_when_the_policy_saw_and_named_it(
    make_sidecar: MakeSidecar, upstream: Upstream, tmp_path: Path
) -> None:
    bundle = _bundle(tmp_path, TENANT_POLICY)
    shown = await make_sidecar(
        SIDECAR_PII_MODE="off", SIDECAR_BUNDLE=bundle, SIDECAR_INPUT_HEADERS="user-agent,openai-project"
    )
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=shown.url, api_key=ACME_KEY, max_retries=0, project="proj_acme_b")
    await client.responses.create(model="gpt-4o", input="hi")
    assert (await _last(upstream))["headers"]["openai-project"] == "proj_acme_b"

    await upstream.clear()
    other = openai.AsyncOpenAI(base_url=shown.url, api_key=ACME_KEY, max_retries=0, project="proj_globex")
    with pytest.raises(openai.BadRequestError) as caught:
        await other.responses.create(model="gpt-4o", input="hi")  # seen, but the decision named another
    assert caught.value.code == "invalid_request" and await upstream.requests() == []

    unseen = await make_sidecar(SIDECAR_PII_MODE="off", SIDECAR_BUNDLE=bundle)
    client = openai.AsyncOpenAI(base_url=unseen.url, api_key=ACME_KEY, max_retries=0, project="proj_acme_b")
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="gpt-4o", input="hi")  # not in SIDECAR_INPUT_HEADERS
    assert caught.value.code == "invalid_request" and await upstream.requests() == []


async def test_a_malformed_upstream_decision_is_a_deny(
    make_sidecar: MakeSidecar, upstream: Upstream, tmp_path: Path
) -> None:
    rego = 'package sidecar\n\ndecision := {"allow": true, "upstream": {"organisation": "org-acme"}}\n'
    sc = await make_sidecar(SIDECAR_PII_MODE="off", SIDECAR_BUNDLE=_bundle(tmp_path, rego))
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await client.responses.create(model="gpt-4o", input="hi")
    assert caught.value.code == "policy_violation" and await upstream.requests() == []


# Asks for an approval, then names another project once one exists: the approval bound the first.
SWITCHING_POLICY = """package sidecar

project := "proj_before" if input.approval.status == "none"

project := "proj_after" if input.approval.status != "none"

decision := {
	"allow": true, "require_approval": true, "approvers": ["group:ml-leads"],
	"upstream": {"project": project},
}

approver := {"allow": true, "reasons": []}
"""


async def test_the_account_an_approval_was_asked_for_cannot_change(
    make_sidecar: MakeSidecar, upstream: Upstream, tmp_path: Path
) -> None:
    sc = await make_sidecar(SIDECAR_PII_MODE="off", SIDECAR_BUNDLE=_bundle(tmp_path, SWITCHING_POLICY))
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as held:
        await client.models.list()
    assert held.value.code == "approval_required"
    approval_id = held.value.response.headers["x-approval-id"]
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer ck-ml-lead-key"}) as http:
        resp = await http.post(f"{sc.admin}/v1/approvals/{approval_id}/approve", json={"reason": "ok"})
        assert resp.status == 200 and (await resp.json())["extra"]["project"] == "proj_before"
    with pytest.raises(openai.PermissionDeniedError) as switched:
        await client.models.list()
    assert switched.value.code == "policy_violation" and "approval" in switched.value.message
    assert await upstream.requests() == []


# --- the provider key in what comes back ------------------------------------------------------------

WRONG_KEY = "sk-wrongkey-Qx7Vb2Zt9Lm4Np8Rw3Ks"


async def test_the_upstream_key_echo_is_scrubbed_from_body_and_headers(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    # The dev upstream, asked directly with that key, quotes it as OpenAI does.
    async with aiohttp.ClientSession() as session:
        direct = await session.get(
            upstream.url + "/v1/models", headers={"Authorization": f"Bearer {WRONG_KEY}"}
        )
        echoed = await direct.text() + json.dumps(dict(direct.headers))
    assert f"{WRONG_KEY[:8]}" in echoed and f"{WRONG_KEY[-4:]}" in echoed

    sc = await make_sidecar(SIDECAR_PII_MODE="off", SIDECAR_UPSTREAM_API_KEY=WRONG_KEY)
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    for call in (client.models.list(), client.responses.create(model="gpt-4o", input="hi", stream=True)):
        with pytest.raises(openai.AuthenticationError) as caught:
            await call
        shown = caught.value.response.text + json.dumps(dict(caught.value.response.headers))
        assert (
            "[redacted]" in caught.value.message
            and "[redacted]" in caught.value.response.headers["www-authenticate"]
        )
        for fragment in (WRONG_KEY, WRONG_KEY[:8], WRONG_KEY[-4:], WRONG_KEY[8:16]):
            assert fragment not in shown
        assert "openai-organization" not in caught.value.response.headers


async def test_a_text_error_body_is_scrubbed_too(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    sc = await make_sidecar(SIDECAR_PII_MODE="off", SIDECAR_UPSTREAM_API_KEY=WRONG_KEY)
    port = int(sc.url.rsplit(":", 1)[1].split("/", 1)[0])
    sent = [("Authorization", AUTH["Authorization"]), ("Accept", "text/plain")]
    answer = await asend_raw(port, "GET", b"/v1/models", sent)
    assert answer.status == 401 and answer.headers["content-type"].startswith("text/plain")
    assert (
        b"Incorrect API key provided: [redacted]" in answer.body and WRONG_KEY[:8].encode() not in answer.body
    )
    assert WRONG_KEY[-4:] not in json.dumps(answer.headers)


# --- the body's own headers ------------------------------------------------------------------------


async def test_a_decoded_body_goes_upstream_without_its_content_encoding(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    sc = await make_sidecar(SIDECAR_PII_MODE="off")
    await upstream.clear()
    body = json.dumps({"model": "gpt-4o", "input": "zipped " * 50}).encode()
    headers = {**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with aiohttp.ClientSession() as session:
        resp = await session.post(sc.url + "/responses", data=gzip.compress(body), headers=headers)
        assert resp.status == 200, await resp.text()
    seen = await _last(upstream)
    assert "content-encoding" not in seen["headers"]
    assert int(seen["headers"]["content-length"]) == seen["body_bytes"] == len(seen["body"].encode())
    assert json.loads(seen["body"])["input"] == "zipped " * 50


async def test_a_multipart_upload_is_framed_by_what_is_sent(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    sc = await make_sidecar(SIDECAR_PII_MODE="off")
    await upstream.clear()
    content = b'{"prompt": "x"}\n' * 5_000
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    uploaded = await client.files.create(file=("train.jsonl", content), purpose="fine-tune")
    declared = await _last(upstream)
    assert uploaded.bytes == len(content) and "transfer-encoding" not in declared["headers"]
    assert int(declared["headers"]["content-length"]) == declared["body_bytes"] > len(content)

    await upstream.clear()  # sent chunked (no length declared): forwarded chunked, never with a guess
    form = aiohttp.FormData()
    form.add_field("purpose", "fine-tune")
    form.add_field("file", content, filename="train.jsonl", content_type="application/jsonl")
    payload = form()
    boundary_type = payload.content_type

    async def chunks() -> AsyncIterator[bytes]:
        class Sink:
            def __init__(self) -> None:
                self.data = b""

            async def write(self, data: bytes) -> None:
                self.data += data

        sink = Sink()
        await payload.write(sink)  # type: ignore[arg-type]
        for i in range(0, len(sink.data), 10_000):
            yield sink.data[i : i + 10_000]

    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            sc.url + "/files", data=chunks(), headers={**AUTH, "Content-Type": boundary_type}
        )
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["bytes"] == len(content)
    chunked = await _last(upstream)
    assert (
        chunked["headers"].get("transfer-encoding") == "chunked"
        and "content-length" not in chunked["headers"]
    )

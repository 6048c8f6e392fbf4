"""Both engines, one bundle: the embedded regorus engine and a real `opa run --server` must agree."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import openai
import pytest

from sidecar.documents import Decision
from sidecar.pipeline.classify import TABLE
from sidecar.policy import bundle as bundles
from sidecar.policy.daemon import DaemonEngine
from sidecar.policy.embedded import EmbeddedEngine
from sidecar.policy.engine import EngineError
from tests.conftest import ACME_KEY, BUNDLE, MakeSidecar, Upstream, free_port

OPERATIONS = [*sorted({op for _, _, op in TABLE}), "unknown", "organization.users.read"]
MODELS = [None, "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4-turbo", "o1-pro", "gpt-4-32k", "text-embedding-3-small",
          "omni-moderation-latest", "", "GPT-4O", "gpt-4o-2024-08-06"]  # fmt: skip
TENANTS = ["acme", "globex", "initech", None, ""]
ENTITIES = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "PERSON", "US_SSN", "IBAN_CODE"]


def make_input(rng: random.Random, n: int) -> dict[str, Any]:
    tenant = rng.choice(TENANTS)
    windows = {}
    for window in rng.sample(["minute", "hour", "day", "month"], rng.randint(0, 3)):
        limit = rng.choice([1000, 200_000, 2_000_000])
        used = rng.randint(0, limit)
        windows[window] = {
            "limit": limit,
            "used": used,
            "remaining": limit - used,
            "resets_at": "2026-11-25T00:00:00Z",
        }
    user = rng.choice([None, None, {"sub": "u1", "email": None, "groups": ["staff"]}])
    return {
        "version": 1,
        "request": {
            "id": f"req_{n}",
            "method": rng.choice(["POST", "GET", "DELETE"]),
            "path": "/v1/x",
            "operation": rng.choice(OPERATIONS),
            "model": rng.choice(MODELS),
            "stream": rng.random() < 0.5,
            "max_output_tokens": rng.choice([None, 16, 1024, 5000, 100_000]),
            "tools": rng.sample(["function", "file_search", "web_search", "code_interpreter", "computer_use"], rng.randint(0, 2)),
            "body_bytes": rng.randint(0, 300_000),
            "estimated_input_tokens": rng.randint(0, 100_000),
            "headers": {},
        },
        "subject": {
            "authenticated": rng.random() < 0.9,
            "sub": rng.choice(["sa:bot", None]),
            "tenant": tenant,
            "groups": rng.sample(["agents", "ml-leads", "admins"], rng.randint(0, 2)),
            "issuer": "static",
            "user": user,
        },
        "pii": {"request": {e: rng.randint(1, 3) for e in rng.sample(ENTITIES, rng.randint(0, 2))}},
        "budget": {"tenant": tenant, "windows": windows},
        "approval": {"id": rng.choice([None, "apr_1"]), "status": rng.choice(["none", "pending", "approved", "denied", "expired"])},
        "time": {"now": "2026-11-24T10:00:00Z"},
    }  # fmt: skip


HAND_WRITTEN: list[dict[str, Any]] = [
    {},
    {"version": 1},
    {
        "request": {"operation": "responses.create", "model": "gpt-4o"},
        "subject": {"authenticated": True, "tenant": "acme"},
    },
]


def corpus() -> list[dict[str, Any]]:
    rng = random.Random(20261124)
    base = make_input(rng, 0)
    hand = list(HAND_WRITTEN)
    for op, model, user in [
        ("responses.create", "gpt-4o", None),
        ("responses.create", "gpt-4-turbo", {"sub": "u", "email": None, "groups": []}),
        ("chat.completions.create", "gpt-4o", {"sub": "u", "email": None, "groups": []}),
        ("responses.create", "o1-pro", None),
        ("fine_tuning.jobs.create", "gpt-4o-mini", None),
        ("files.content", None, None),
        ("realtime.client_secrets.create", "gpt-4o", None),
        ("organization.users.read", None, None),
        ("unknown", None, None),
    ]:
        doc = json.loads(json.dumps(base))
        doc["request"].update(operation=op, model=model)
        doc["subject"].update(authenticated=True, tenant="acme", user=user)
        doc["approval"] = {"id": None, "status": "none"}
        hand.append(doc)
    return hand + [make_input(rng, n) for n in range(1, 600)]


def test_shipped_policy_passes_its_tests_on_the_embedded_engine() -> None:
    from sidecar.policy import testrunner

    results = testrunner.run(str(BUNDLE))
    assert len(results) >= 30
    assert [r for r in results if r.outcome != "PASS"] == []


async def test_engines_agree_on_every_input(opa_daemon: str) -> None:
    embedded = EmbeddedEngine(bundles.load(BUNDLE), "sidecar/decision")
    daemon = DaemonEngine(opa_daemon, "sidecar/decision", timeout=5)
    await daemon.start()
    try:
        docs = corpus()
        gate = asyncio.Semaphore(8)  # a steady stream of queries, not 600 at once on a 2-core machine

        async def ask(doc: dict[str, Any]) -> Any:
            async with gate:
                return await daemon.evaluate(doc)  # type: ignore[arg-type]

        theirs = await asyncio.gather(*[ask(doc) for doc in docs])
        allowed = 0
        for doc, remote in zip(docs, theirs, strict=True):
            local = await embedded.evaluate(doc)  # type: ignore[arg-type]
            assert local == remote, json.dumps(doc)
            Decision.parse(local)  # the shipped policy always answers with a valid decision
            allowed += local["allow"]
        # The corpus exercises both outcomes, not one branch.
        assert 30 < allowed < len(docs) - 30
        assert {d["require_approval"] for d in theirs} == {True, False}
        ready, detail = await daemon.ready()
        assert ready and "sidecar-policy" in daemon.revision, detail
    finally:
        await daemon.close()


async def test_daemon_engine_errors_are_engine_errors() -> None:
    daemon = DaemonEngine(f"http://127.0.0.1:{free_port()}", "sidecar/decision", timeout=0.5)
    await daemon.start()
    try:
        with pytest.raises(EngineError):
            await daemon.evaluate({})  # type: ignore[arg-type]
        assert (await daemon.ready())[0] is False
    finally:
        await daemon.close()


async def test_daemon_mode_end_to_end(make_sidecar: MakeSidecar, upstream: Upstream, opa_daemon: str) -> None:
    sc = await make_sidecar(SIDECAR_OPA_URL=opa_daemon)
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    answer = await client.responses.create(model="gpt-4o", input="hello daemon")
    assert answer.output_text == "Echo: hello daemon"
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await client.responses.create(model="o1-pro", input="x")
    assert caught.value.code == "policy_violation"
    records = sc.audit()
    assert all("sidecar-policy" in r["bundle"]["revision"] for r in records)
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(sc.admin + "/readyz") as r:
        doc = await r.json()
        assert r.status == 200 and doc["policy"]["engine"] == "daemon" and doc["ready"]

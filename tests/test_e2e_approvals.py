"""Human approvals end to end, with the real `openai` client: held with an id, approved by an approver the
policy names, passed exactly once, and needing a new approval for a changed body, after denial or expiry."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import sys
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from sidecar.pipeline.audit import verify
from tests.conftest import ACME_KEY, PROVIDER_KEY, MakeSidecar, RunningSidecar, Upstream, free_port
from tests.identity_fixtures import Idp, rsa_key

LEAD_KEY = "ck-ml-lead-key"  # alice, group ml-leads: an approver in the shipped bundle
STAFF_KEY = "ck-staff-key"  # mallory, not an approver


def client(sidecar: RunningSidecar) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sidecar.url, api_key=ACME_KEY, max_retries=0)


async def create_batch(sidecar: RunningSidecar, file_id: str = "file-abc", **extra: Any) -> Any:
    return await client(sidecar).batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", **extra
    )


async def held(sidecar: RunningSidecar, file_id: str = "file-abc", **extra: Any) -> tuple[str, str]:
    """(code, approval id) of a held call."""
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await create_batch(sidecar, file_id, **extra)
    err = caught.value
    assert err.response.headers["x-should-retry"] == "false"
    return str(err.code), err.response.headers["x-approval-id"]


async def admin(
    sidecar: RunningSidecar, method: str, path: str, key: str = LEAD_KEY, body: Any = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http,
        http.request(method, sidecar.admin + path, json=body) as resp,
    ):
        return resp.status, await resp.json()


async def batches_seen(upstream: Upstream) -> int:
    return sum(1 for r in await upstream.requests() if r["path"] == "/v1/batches")


async def test_held_approved_passes_once_then_needs_a_new_approval(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    sidecar = await make_sidecar()
    await upstream.clear()
    code, approval_id = await held(sidecar)
    assert code == "approval_required" and approval_id.startswith("apr_")
    assert await held(sidecar) == ("approval_required", approval_id)  # still pending: the same approval
    assert await batches_seen(upstream) == 0
    async with aiohttp.ClientSession() as http, http.get(sidecar.admin + "/metrics") as resp:
        assert 'sidecar_approvals_pending{tenant="acme"} 1.0' in await resp.text()

    status, listed = await admin(sidecar, "GET", "/v1/approvals?status=pending")
    assert status == 200 and [a["id"] for a in listed["data"]] == [approval_id]
    entry = listed["data"][0]
    assert entry["operation"] == "batches.create" and entry["tenant"] == "acme"
    assert entry["sub"] == "system:serviceaccount:agents:support-bot" and entry["approvers"] == [
        "group:ml-leads"
    ]

    status, decided = await admin(
        sidecar, "POST", f"/v1/approvals/{approval_id}/approve", body={"reason": "ok"}
    )
    assert status == 200 and decided["status"] == "approved" and decided["decided_by"] == "alice"

    batch = await create_batch(sidecar)  # the identical request passes
    assert batch.id.startswith("batch_") and await batches_seen(upstream) == 1
    code, second = await held(sidecar)  # single use: the next one needs a new approval
    assert code == "approval_required" and second != approval_id
    assert await batches_seen(upstream) == 1
    status, used = await admin(sidecar, "GET", f"/v1/approvals/{approval_id}")
    assert status == 200 and used["status"] == "used"

    audit = sidecar.audit()
    assert [r["approval"]["status"] for r in audit if r["phase"] == "start"] == ["approved"]
    assert any(r["phase"] == "approval" and r["approver"]["sub"] == "alice" for r in audit)
    assert verify(str(sidecar.audit_path))[0]


async def test_a_changed_body_needs_its_own_approval(make_sidecar: MakeSidecar) -> None:
    sidecar = await make_sidecar()
    _, first = await held(sidecar, "file-one")
    await admin(sidecar, "POST", f"/v1/approvals/{first}/approve")
    _, changed = await held(sidecar, "file-two")
    assert changed != first
    assert (await create_batch(sidecar, "file-one")).id.startswith("batch_")


async def test_denied_and_expired_approvals(make_sidecar: MakeSidecar) -> None:
    sidecar = await make_sidecar(SIDECAR_APPROVAL_TTL="1")
    _, denied = await held(sidecar, "file-deny")
    status, doc = await admin(sidecar, "POST", f"/v1/approvals/{denied}/deny", body={"reason": "not today"})
    assert status == 200 and doc["status"] == "denied"
    assert await held(sidecar, "file-deny") == ("approval_denied", denied)

    _, pending = await held(sidecar, "file-late")
    await asyncio.sleep(1.2)
    assert await held(sidecar, "file-late") == ("approval_expired", pending)
    status, late = await admin(sidecar, "POST", f"/v1/approvals/{pending}/approve")
    assert status == 409 and late["error"]["code"] == "approval_expired"
    code, renewed = await held(sidecar, "file-late")  # asking again starts a new approval
    assert code == "approval_required" and renewed != pending


async def test_only_approvers_the_policy_names_may_decide(make_sidecar: MakeSidecar) -> None:
    sidecar = await make_sidecar()
    _, approval_id = await held(sidecar)
    status, doc = await admin(sidecar, "POST", f"/v1/approvals/{approval_id}/approve", key=STAFF_KEY)
    assert status == 403 and "not among the approvers" in doc["error"]["message"]
    status, doc = await admin(sidecar, "POST", f"/v1/approvals/{approval_id}/approve", key=ACME_KEY)
    assert status == 403  # the agent itself: not an approver, and not of its own request
    status, doc = await admin(sidecar, "POST", f"/v1/approvals/{approval_id}/approve", key="ck-wrong")
    assert status == 401 and doc["error"]["code"] == "unauthenticated"
    status, doc = await admin(sidecar, "POST", "/v1/approvals/apr_nope/approve")
    assert status == 404 and doc["error"]["code"] == "approval_not_found"
    assert (await held(sidecar))[0] == "approval_required"  # nothing was approved


async def test_a_failed_call_does_not_use_up_the_approval(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    sidecar = await make_sidecar()
    _, approval_id = await held(sidecar, "file-flaky")
    await admin(sidecar, "POST", f"/v1/approvals/{approval_id}/approve")
    # The identical request fails upstream (a changed header would be another request: it is bound).
    await upstream.fail_next(500)
    with pytest.raises(openai.InternalServerError):
        await create_batch(sidecar, "file-flaky")
    status, doc = await admin(sidecar, "GET", f"/v1/approvals/{approval_id}")
    assert status == 200 and doc["status"] == "approved"
    assert (await create_batch(sidecar, "file-flaky")).id.startswith("batch_")  # the retry passes, once
    assert (await held(sidecar, "file-flaky"))[0] == "approval_required"


async def test_the_webhook_is_told_without_content(make_sidecar: MakeSidecar) -> None:
    received: list[tuple[bytes, str]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.read(), request.headers.get("x-sidecar-signature", "")))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        sidecar = await make_sidecar(
            SIDECAR_APPROVAL_WEBHOOK_URL=f"http://127.0.0.1:{port}/hook",
            SIDECAR_APPROVAL_WEBHOOK_SECRET="s3cret",
        )
        secret_meta = {"owner": "jane.doe@example.com"}
        _, approval_id = await held(sidecar, "file-hook", metadata=secret_meta)
        for _ in range(50):
            if received:
                break
            await asyncio.sleep(0.05)
        assert len(received) == 1
        body, signature = received[0]
        assert signature == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        event = json.loads(body)
        assert event["type"] == "approval.requested" and event["approval"]["id"] == approval_id
        assert b"jane.doe" not in body and b"file-hook" not in body and PROVIDER_KEY.encode() not in body
    finally:
        await runner.cleanup()


async def test_cli_lists_and_approves_through_the_admin_api(make_sidecar: MakeSidecar) -> None:
    sidecar = await make_sidecar()
    _, approval_id = await held(sidecar, "file-cli")
    base = [sys.executable, "-m", "sidecar", "approvals"]
    common = ["--admin-url", sidecar.admin, "--token", LEAD_KEY]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args, *common], capture_output=True, text=True, timeout=60, check=False
        )

    listed = await asyncio.to_thread(run, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [a["id"] for a in json.loads(listed.stdout)] == [approval_id]
    approved = await asyncio.to_thread(run, "approve", approval_id, "--reason", "reviewed")
    assert approved.returncode == 0, approved.stderr
    assert approval_id in approved.stdout and "approved" in approved.stdout
    again = await asyncio.to_thread(run, "deny", approval_id)
    assert again.returncode == 1 and "approval_conflict" in again.stderr
    assert (await create_batch(sidecar, "file-cli")).id.startswith("batch_")


async def test_cli_acts_on_the_shared_store_under_the_approver_policy(
    make_sidecar: MakeSidecar, redis_url: str
) -> None:
    first = await make_sidecar(SIDECAR_REDIS_URL=redis_url)
    second = await make_sidecar(SIDECAR_REDIS_URL=redis_url)  # another replica sharing the store
    _, approval_id = await held(first, "file-shared")
    assert await held(second, "file-shared") == ("approval_required", approval_id)
    env = {"SIDECAR_REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sidecar", "approvals", *args], capture_output=True, text=True, timeout=60,
            env=env, check=False,
        )  # fmt: skip

    refused = await asyncio.to_thread(run, "approve", approval_id, "--as", "mallory", "--group", "staff")
    assert refused.returncode == 1 and "not among the approvers" in refused.stderr
    ok = await asyncio.to_thread(run, "approve", approval_id, "--as", "bob", "--group", "ml-leads", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)[0]["status"] == "approved"
    assert (await create_batch(second, "file-shared")).id.startswith("batch_")  # approved on any replica
    assert (await held(first, "file-shared"))[0] == "approval_required"  # and used up everywhere


async def test_approvers_authenticate_with_jwts_for_the_admin_audience(make_sidecar: MakeSidecar) -> None:
    idp = await Idp([rsa_key("key-1")]).start()
    try:
        sidecar = await make_sidecar(**idp.settings(SIDECAR_ADMIN_JWT_AUDIENCE="sidecar-admin"))
        agent = openai.AsyncOpenAI(base_url=sidecar.url, api_key=idp.token(), max_retries=0)
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await agent.batches.create(
                input_file_id="file-jwt", endpoint="/v1/chat/completions", completion_window="24h"
            )
        approval_id = caught.value.response.headers["x-approval-id"]
        path = f"/v1/approvals/{approval_id}/approve"
        caller_token = idp.token(
            sub="bob", groups=["ml-leads"]
        )  # the data path's audience: not an admin token
        status, doc = await admin(sidecar, "POST", path, key=caller_token)
        assert status == 401 and doc["error"]["code"] == "unauthenticated"
        approver_token = idp.token(sub="bob", groups=["ml-leads"], aud="sidecar-admin")
        status, doc = await admin(sidecar, "POST", path, key=approver_token)
        assert status == 200 and doc["status"] == "approved" and doc["decided_by"] == "bob"
        batch = await agent.batches.create(
            input_file_id="file-jwt", endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.id.startswith("batch_")
    finally:
        await idp.stop()

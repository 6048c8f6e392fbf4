"""An approval binds everything the upstream acts on, end to end with the real `openai` client: a changed body
of the same length, query, tenant or upload content needs its own approval, and the identical request passes
once. A gated upload is read in full (spooled within SIDECAR_APPROVAL_SPOOL_BYTES) and the spooled bytes,
exactly those hashed, are what the upstream receives."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import (
    ACME_KEY,
    BUNDLE,
    GLOBEX_KEY,
    PROVIDER_KEY,
    MakeSidecar,
    RunningSidecar,
    Upstream,
    eventually,
)
from tests.test_e2e_approvals import admin, client

BOUNDARY = "sidecar-test-boundary-0001"


def gating_uploads(tmp_path: Path) -> str:
    """The shipped bundle, with file uploads (multipart) approval-gated too."""
    folder = tmp_path / "bundle"
    shutil.copytree(BUNDLE, folder)
    data = json.loads((folder / "data.json").read_text())
    data["sidecar"]["defaults"]["approval"]["operations"].append("files.create")
    (folder / "data.json").write_text(json.dumps(data))
    return str(folder)


def multipart(content: bytes, boundary: str = BOUNDARY, filename: str = "train.jsonl") -> bytes:
    b = boundary.encode()
    return b"".join((
        b"--", b, b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n',
        b"--", b, b'\r\nContent-Disposition: form-data; name="file"; filename="', filename.encode(),
        b'"\r\nContent-Type: application/octet-stream\r\n\r\n', content, b"\r\n--", b, b"--\r\n",
    ))  # fmt: skip


async def upload_file(sidecar: RunningSidecar, content: bytes, boundary: str = BOUNDARY) -> Any:
    """files.create with the real client; a fixed boundary makes a retry the identical request."""
    return await client(sidecar).files.create(
        file=("train.jsonl", content),
        purpose="fine-tune",
        extra_headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )


async def held(call: Any) -> str:
    """The approval id of a call held for approval."""
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await call
    assert caught.value.code == "approval_required"
    return str(caught.value.response.headers["x-approval-id"])


async def approve(sidecar: RunningSidecar, approval_id: str) -> None:
    status, doc = await admin(sidecar, "POST", f"/v1/approvals/{approval_id}/approve")
    assert status == 200 and doc["status"] == "approved", doc


async def stored_content(upstream: Upstream, file_id: str) -> bytes:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {PROVIDER_KEY}"}) as http,
        http.get(f"{upstream.url}/v1/files/{file_id}/content") as resp,
    ):
        assert resp.status == 200
        return await resp.read()


async def test_a_same_length_training_file_needs_its_own_approval(make_sidecar: MakeSidecar) -> None:
    sidecar = await make_sidecar()

    def job(training_file: str) -> Any:
        return client(sidecar).fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training_file)

    first = await held(job("file-aaaa"))
    await approve(sidecar, first)
    other = await held(job("file-bbbb"))  # same length, same shape: not the approved request
    assert other != first
    assert (await job("file-aaaa")).training_file == "file-aaaa"  # the identical request passes, once
    again = await held(job("file-aaaa"))
    assert again not in (first, other)


async def test_the_query_string_is_bound(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    sidecar = await make_sidecar()

    def batch(**query: str) -> Any:
        return client(sidecar).batches.create(
            input_file_id="file-q", endpoint="/v1/chat/completions", completion_window="24h",
            extra_query=query or None,
        )  # fmt: skip

    approved = await held(batch(v="1"))
    await approve(sidecar, approved)
    await upstream.clear()
    assert await held(batch(v="2")) != approved
    assert await held(batch()) != approved
    assert (await batch(v="1")).id.startswith("batch_")
    seen = [r["query"] for r in await upstream.requests() if r["path"] == "/v1/batches"]
    assert seen == ["v=1"]


async def test_another_tenant_cannot_use_an_approval(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    sidecar = await make_sidecar()
    acme = client(sidecar)
    globex = openai.AsyncOpenAI(base_url=sidecar.url, api_key=GLOBEX_KEY, max_retries=0)
    created = await acme.files.create(file=("notes.txt", b"quarterly numbers"), purpose="user_data")
    approved = await held(acme.files.content(created.id))  # files.content is gated in the shipped bundle
    await approve(sidecar, approved)
    assert await held(globex.files.content(created.id)) != approved  # the identical request, another tenant
    assert (await acme.files.content(created.id)).content == b"quarterly numbers"
    await held(acme.files.content(created.id))  # used up


async def test_a_same_length_upload_with_other_content_needs_its_own_approval(
    make_sidecar: MakeSidecar, upstream: Upstream, tmp_path: Path
) -> None:
    sidecar = await make_sidecar(SIDECAR_BUNDLE=gating_uploads(tmp_path))
    approved_bytes = b'{"prompt": "a", "completion": "b"}\n'
    first = await held(upload_file(sidecar, approved_bytes))
    await approve(sidecar, first)
    other = await held(upload_file(sidecar, approved_bytes.replace(b'"a"', b'"x"')))
    assert other != first  # same size, same filename, same boundary: other bytes
    reframed = await held(upload_file(sidecar, approved_bytes, boundary="another-boundary-0000001"))
    assert reframed not in (first, other)  # the body the upstream parses is framed by its boundary
    await upstream.clear()
    uploaded = await upload_file(sidecar, approved_bytes)
    assert await stored_content(upstream, uploaded.id) == approved_bytes
    [seen] = [r for r in await upstream.requests() if r["path"] == "/v1/files"]
    assert int(seen["headers"]["content-length"]) == len(multipart(approved_bytes))
    assert await held(upload_file(sidecar, approved_bytes)) not in (first, other, reframed)  # used up


def spool_files(directory: Path) -> list[str]:
    """Files this process (the sidecar runs in it) holds open in the spool directory."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory) + "/"):
            found.append(target)
    return found


async def raw_upload(sidecar: RunningSidecar, body: bytes, *, chunked: bool) -> tuple[int, Any]:
    """POST /v1/files with a prepared multipart body, with a Content-Length or chunked."""

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100_000):
            yield body[start : start + 100_000]

    headers = {
        "Authorization": f"Bearer {ACME_KEY}",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(sidecar.url + "/files", data=pieces() if chunked else body, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def test_a_large_gated_upload_is_spooled_to_disk_and_sent_exactly(
    make_sidecar: MakeSidecar, upstream: Upstream, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    sidecar = await make_sidecar(
        SIDECAR_BUNDLE=gating_uploads(tmp_path), SIDECAR_APPROVAL_SPOOL_DIR=str(spool)
    )
    content = os.urandom(3 * 1024 * 1024)  # beyond the 1 MiB kept in memory
    body = multipart(content)
    status, doc = await raw_upload(sidecar, body, chunked=True)
    assert status == 403 and doc["error"]["code"] == "approval_required"
    _, listed = await admin(sidecar, "GET", "/v1/approvals?status=pending")
    await approve(sidecar, listed["data"][0]["id"])
    await upstream.clear()
    status, doc = await raw_upload(sidecar, body, chunked=False)  # chunked or not: the same bytes
    assert status == 200, doc
    assert (
        hashlib.sha256(await stored_content(upstream, doc["id"])).digest() == hashlib.sha256(content).digest()
    )
    [seen] = [r for r in await upstream.requests() if r["path"] == "/v1/files"]
    assert int(seen["headers"]["content-length"]) == len(body)
    assert "transfer-encoding" not in seen["headers"]

    async def dropped() -> bool:
        return not spool_files(spool)

    await eventually(dropped)


async def test_a_client_that_leaves_mid_upload_leaves_no_spool(
    make_sidecar: MakeSidecar, upstream: Upstream, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    sidecar = await make_sidecar(
        SIDECAR_BUNDLE=gating_uploads(tmp_path), SIDECAR_APPROVAL_SPOOL_DIR=str(spool)
    )
    await upstream.clear()
    port = int(sidecar.url.split(":")[2].split("/")[0])
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    body = multipart(os.urandom(4 * 1024 * 1024))
    writer.write(
        f"POST /v1/files HTTP/1.1\r\nHost: sidecar\r\nAuthorization: Bearer {ACME_KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body[: 3 * 1024 * 1024]
    )
    await writer.drain()

    async def on_disk() -> bool:
        return bool(spool_files(spool))

    await eventually(on_disk)  # the upload is being spooled to a file in the documented directory
    writer.close()  # and the client goes away

    async def dropped() -> bool:
        return not spool_files(spool)

    await eventually(dropped)
    assert not [r for r in await upstream.requests() if r["path"] == "/v1/files"]
    _, listed = await admin(sidecar, "GET", "/v1/approvals")
    assert listed["data"] == []  # an upload never read in full asks nobody for anything


async def test_a_gated_upload_over_the_spool_limit_is_refused_and_others_stream(
    make_sidecar: MakeSidecar, upstream: Upstream, tmp_path: Path
) -> None:
    gated = await make_sidecar(SIDECAR_BUNDLE=gating_uploads(tmp_path), SIDECAR_APPROVAL_SPOOL_BYTES="4096")
    await upstream.clear()
    with pytest.raises(openai.APIStatusError) as caught:
        await upload_file(gated, b"x" * 5000)
    assert caught.value.status_code == 413 and caught.value.code == "request_too_large"
    assert "SIDECAR_APPROVAL_SPOOL_BYTES" in caught.value.message
    assert not [r for r in await upstream.requests() if r["path"] == "/v1/files"]
    _, listed = await admin(gated, "GET", "/v1/approvals")
    assert listed["data"] == []
    with pytest.raises(openai.PermissionDeniedError) as pending:  # under the limit: held as usual
        await upload_file(gated, b"x" * 1000)
    assert (
        pending.value.code == "approval_required" and "the same multipart boundary" in pending.value.message
    )

    # Not gated (the shipped bundle): the same upload streams through, the spool limit does not apply.
    plain = await make_sidecar(SIDECAR_APPROVAL_SPOOL_BYTES="4096")
    uploaded = await upload_file(plain, b"x" * 5000)
    assert await stored_content(upstream, uploaded.id) == b"x" * 5000

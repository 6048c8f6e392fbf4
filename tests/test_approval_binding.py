"""What an approval is bound to, below the HTTP layer: the fingerprint is injective over everything the upstream
acts on (no collisions from the encoding), the gate binds the forwarded organization and project, and a
spooled upload keeps, hashes and gives back exactly the bytes it read."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.approvals import model
from sidecar.approvals.gate import Approvals
from sidecar.approvals.spool import MEMORY_BYTES, SpooledBody, spool_limit
from sidecar.approvals.store import MemoryApprovalStore
from sidecar.config import Settings
from sidecar.errors import SidecarError
from sidecar.pipeline.context import Call, Subject
from sidecar.pipeline.inspect import Payload
from tests.conftest import eventually
from tests.test_e2e_approval_binding import spool_files

# Characters that break naive encodings (separators, NUL, the length-prefix tags), lone surrogates, anything.
_CHARS = st.one_of(
    st.sampled_from(["\n", "\0", "\1", "?", "&", "=", "/", '"', ","]),
    st.characters(categories=["Cs"]),
    st.characters(),
)
_TEXT = st.text(_CHARS, max_size=6)
_BINDINGS = st.builds(
    model.Binding, _TEXT, _TEXT, _TEXT, st.none() | _TEXT, st.none() | _TEXT, st.none() | _TEXT, _TEXT, _TEXT
)
_NAMES = [f.name for f in dataclasses.fields(model.Binding)]


@st.composite
def binding_pairs(draw: st.DrawFn) -> tuple[model.Binding, model.Binding]:
    """Two bindings: equal, unrelated, or the pairs a naive encoding merges: text moved across a field
    boundary (concatenation), around a separator (joining), None against "" or "None"."""
    a = draw(_BINDINGS)
    how = draw(st.sampled_from(["same", "other", "shift", "glue", "none"]))
    if how == "same":
        return a, dataclasses.replace(a)
    if how == "other":
        return a, draw(_BINDINGS)
    values = [getattr(a, n) for n in _NAMES]
    i = draw(st.integers(0, len(values) - 2))
    right = values[i + 1] or ""
    if how == "shift":
        left = values[i] or ""
        cut = draw(st.integers(0, len(left)))
        values[i], values[i + 1] = left[:cut], left[cut:] + right
        return a, model.Binding(*values)
    if how == "glue":  # a = (x + sep + y, z), b = (x, y + sep + z)
        x, y, sep = draw(_TEXT), draw(_TEXT), draw(_CHARS)
        values[i] = x + sep + y
        before = model.Binding(*values)
        values[i], values[i + 1] = x, y + sep + right
        return before, model.Binding(*values)
    j = _NAMES.index(draw(st.sampled_from(("tenant", "organization", "project"))))
    values[j] = None
    before = model.Binding(*values)
    values[j] = draw(st.sampled_from(["", "None", "null"]))
    return before, model.Binding(*values)


@settings(max_examples=400, deadline=None)
@given(binding_pairs())
def test_fingerprints_are_equal_exactly_when_the_bindings_are(
    pair: tuple[model.Binding, model.Binding],
) -> None:
    a, b = pair
    assert (model.fingerprint(a) == model.fingerprint(b)) == (a == b)


def test_every_part_of_the_binding_counts() -> None:
    base = model.Binding(
        "POST", "/v1/batches", "", "acme", "org-1", "proj-1", "application/json", model.body_hash(b"{}")
    )
    changed = {
        "method": "PUT",
        "path": "/v1/batches/x",
        "query": "a=1",
        "tenant": "globex",
        "organization": "org-2",
        "project": "proj-2",
        "content_type": "multipart/form-data; boundary=x",
        "body_sha256": model.body_hash(b"{} "),
    }
    prints = {model.fingerprint(dataclasses.replace(base, **{k: v})) for k, v in changed.items()}
    assert len(prints) == len(changed) and model.fingerprint(base) not in prints
    # What string concatenation would merge stays apart.
    assert model.fingerprint(dataclasses.replace(base, path="/v1/batches?a=1")) != model.fingerprint(
        dataclasses.replace(base, query="a=1")
    )
    assert model.fingerprint(dataclasses.replace(base, tenant=None)) != model.fingerprint(
        dataclasses.replace(base, tenant="")
    )


def _gate() -> Approvals:
    return Approvals(MemoryApprovalStore(60.0), Settings())


def _call(organization: str | None, project: str | None) -> Call:
    call = Call(id="req_1", method="POST", path="/v1/batches", organization=organization, project=project)
    call.subject = Subject(authenticated=True, sub="bot", tenant="acme")
    return call


async def test_the_gate_binds_the_forwarded_organization_and_project() -> None:
    gate = _gate()
    raw = orjson.dumps({"input_file_id": "file-abc", "endpoint": "/v1/chat/completions"})
    payload = Payload("json", "application/json", len(raw), orjson.loads(raw), raw)
    request = make_mocked_request("POST", "/v1/batches")
    approved = _call("org-a", "proj-a")
    await gate.lookup(approved, request, payload)
    assert approved.approval is not None
    approval = await gate.store.create(
        model.Approval(
            id=model.new_approval_id(), fingerprint=approved.approval.fingerprint, tenant="acme", sub="bot",
            method="POST", path="/v1/batches", operation="batches.create", model=None, approvers=[],
            created_at=0.0, expires_at=4e9, status="approved",
        )
    )  # fmt: skip
    for org, project in (("org-b", "proj-a"), ("org-a", "proj-b"), (None, "proj-a"), ("org-a", None)):
        other = _call(org, project)
        assert await gate.lookup(other, request, payload) == {"id": None, "status": "none"}
    assert await gate.lookup(_call("org-a", "proj-a"), request, payload) == {
        "id": approval.id,
        "status": "approved",
    }


async def _source(data: bytes, piece: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]
        await asyncio.sleep(0)


async def _read_back(body: SpooledBody) -> bytes:
    return b"".join([chunk async for chunk in body.chunks()])


async def test_a_small_upload_stays_in_memory(tmp_path: Path) -> None:
    data = os.urandom(MEMORY_BYTES // 2)
    body = await SpooledBody.fill(_source(data), limit=len(data), directory=str(tmp_path))
    assert not spool_files(tmp_path) and not body.on_disk
    assert body.size == len(data) and body.sha256 == hashlib.sha256(data).hexdigest()
    assert await _read_back(body) == data and await _read_back(body) == data  # readable again (a retry)
    body.close()
    body.close()  # idempotent


async def test_a_large_upload_goes_to_an_unlinked_file_and_comes_back_exactly(tmp_path: Path) -> None:
    data = os.urandom(MEMORY_BYTES * 3 + 12345)
    body = await SpooledBody.fill(_source(data, 100_003), limit=len(data), directory=str(tmp_path))
    assert body.on_disk and body.sha256 == hashlib.sha256(data).hexdigest()
    [held] = spool_files(tmp_path)
    assert held.endswith("(deleted)") and not os.listdir(tmp_path)  # nothing to leave behind
    assert await _read_back(body) == data
    reader = body.chunks()
    assert await anext(reader)
    body.close()  # the call ended while the body was being sent: the rest is refused, never truncated
    with pytest.raises(ConnectionAbortedError):
        await anext(reader)

    async def dropped() -> bool:
        return not spool_files(tmp_path)

    await eventually(dropped)


async def test_over_the_limit_or_a_broken_source_drops_the_spool(tmp_path: Path) -> None:
    data = os.urandom(MEMORY_BYTES * 2)
    with pytest.raises(SidecarError) as caught:
        await SpooledBody.fill(_source(data), limit=len(data) - 1, directory=str(tmp_path))
    assert caught.value.status == 413 and caught.value.code == "request_too_large"

    async def broken() -> AsyncIterator[bytes]:
        yield data
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await SpooledBody.fill(broken(), limit=len(data) * 2, directory=str(tmp_path))

    async def dropped() -> bool:
        return not spool_files(tmp_path)

    await eventually(dropped)


def test_the_spool_limit_defaults_to_and_never_exceeds_the_upload_limit() -> None:
    assert spool_limit(0, 1000) == 1000
    assert spool_limit(10, 1000) == 10
    assert spool_limit(5000, 1000) == 1000

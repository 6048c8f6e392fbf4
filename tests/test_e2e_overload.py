"""Overload is not an outage: a burst never blames a healthy Redis or OPA, the sidecar sheds load with its own
503 `overloaded` + retry-after, and a dependency that is really down or hung is still reported as such.

Real parts throughout: `sidecar serve` (default PII mode `ner`), redis-server, opa, the `openai` client.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.budget.redis_store import RedisBudgetStore
from sidecar.deadline import within
from sidecar.pii.engine import PiiConfig
from sidecar.pii.pool import DetectorPool
from sidecar.pipeline.admit import Admission
from sidecar.pipeline.context import Call
from sidecar.policy.daemon import DaemonEngine
from tests.conftest import (
    ACME_KEY,
    BUNDLE,
    PROVIDER_KEY,
    MakeSidecar,
    Upstream,
    eventually,
    free_port,
    wait_http,
)
from tests.redis_fixtures import start_redis_server, stop_redis_server

BURST = 200
DEPENDENCY_BLAME = {"store_unavailable", "policy_unavailable"}


def _bundle(tmp_path: Path) -> Path:
    """The shipped bundle, with acme's rate limit out of the way: every call of the burst may pass."""
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle)
    data = json.loads((bundle / "data.json").read_text())
    data["sidecar"]["tenants"]["acme"]["rate_limit"]["requests_per_minute"] = 100_000
    (bundle / "data.json").write_text(json.dumps(data))
    return bundle


def _start_opa(opa_bin: str, bundle: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            opa_bin,
            "run",
            "--server",
            "--addr",
            f"127.0.0.1:{port}",
            "--log-level",
            "error",
            "-b",
            str(bundle),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
    return proc, f"http://127.0.0.1:{port}"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
        proc.terminate()
        proc.wait(10)


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, openai.APIStatusError):
        return f"{exc.status_code} {exc.code}"
    return type(exc).__name__


async def _metric(admin: str, code: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(admin + "/metrics") as r:
        text = await r.text()
    prefix = f'sidecar_requests_total{{code="{code}",'
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


# --- 1. a burst on the real thing ------------------------------------------------------------------------


async def test_a_burst_never_blames_a_healthy_redis_or_opa(
    upstream: Upstream, keys_file: str, redis_url: str, opa_bin: str, tmp_path: Path
) -> None:
    """200 concurrent calls on one `openai` client; PII mode `ner` (the default), Redis budgets, the OPA
    daemon (the engine with a network timeout). Each call is served or shed, never failed on a dependency."""
    bundle = _bundle(tmp_path)
    opa, opa_url = _start_opa(opa_bin, bundle)
    port, admin, audit = free_port(), free_port(), tmp_path / "audit.log"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")},
           "SIDECAR_PORT": str(port), "SIDECAR_ADMIN_PORT": str(admin), "SIDECAR_UPSTREAM_URL": upstream.url,
           "SIDECAR_UPSTREAM_API_KEY": PROVIDER_KEY, "SIDECAR_STATIC_KEYS_FILE": keys_file,
           "SIDECAR_REDIS_URL": redis_url, "SIDECAR_OPA_URL": opa_url, "SIDECAR_BUNDLE": str(bundle),
           "SIDECAR_AUDIT_LOG": str(audit), "SIDECAR_LOG_LEVEL": "warning"}  # fmt: skip
    assert "SIDECAR_PII_MODE" not in env  # the default mode, ner
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve"], env=env)  # noqa: ASYNC220
    # One client: its default pool allows 1,000 connections, so all 200 calls are in flight at once.
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=ACME_KEY, max_retries=0, timeout=120.0
    )
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{admin}/readyz", 120.0, proc)

        async def one(i: int) -> BaseException | None:
            try:  # distinct texts: every call goes through the NER workers, none is a cache hit
                await client.responses.create(
                    model="gpt-4o", input=f"Ticket {i}: call Jane Doe at 555-01{i:02d}", max_output_tokens=16
                )
            except Exception as exc:
                return exc
            return None

        results = await asyncio.gather(*[one(i) for i in range(BURST)])
        shed_metric = await _metric(f"http://127.0.0.1:{admin}", "overloaded")
    finally:
        await client.close()
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
        _stop(opa)

    counts = Counter(_outcome(r) for r in results)
    assert not DEPENDENCY_BLAME & {key.split(" ")[-1] for key in counts}, counts
    assert set(counts) <= {"ok", "503 overloaded"}, counts
    assert counts["ok"] >= 1, counts
    for exc in results:
        if isinstance(exc, openai.APIStatusError):
            assert exc.response.headers["retry-after"] == "1"
            assert exc.body["type"] == "service_unavailable"  # type: ignore[index]
    ends = [r for r in map(json.loads, audit.read_text().splitlines()) if r["phase"] == "end"]
    assert len(ends) == BURST  # every call, shed or served, is closed in the audit
    assert Counter(r["outcome"] for r in ends) == {
        "forwarded": counts["ok"],
        **({"shed": counts["503 overloaded"]} if counts["503 overloaded"] else {}),
    }
    assert shed_metric == counts["503 overloaded"]


# --- 2. shedding ------------------------------------------------------------------------------------------


async def hold_slots(admission: Admission, count: int) -> list[Call]:
    """Calls the sidecar is busy checking (each holds a slot until `admission.done`). A caller's slow body
    no longer holds one (tests/test_e2e_redteam_issue15.py), so the slots are taken as a stage would."""
    held = [Call(id=f"req_held{i}", method="POST", path="/v1/responses") for i in range(count)]
    for call in held:
        await admission.enter(call)
    return held


async def test_over_the_limits_calls_are_shed_fast_and_audited(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    sc = await make_sidecar(
        SIDECAR_PII_MODE="off",
        SIDECAR_MAX_CONCURRENCY="2",
        SIDECAR_MAX_QUEUE="1",
        SIDECAR_QUEUE_TIMEOUT="0.3",
    )
    admission = sc.sidecar.proxy.admission
    await upstream.clear()
    held = await hold_slots(admission, 2)

    async def both_admitted() -> bool:
        return admission.active == 2

    await eventually(both_admitted)
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)

    async def one() -> tuple[BaseException | None, float]:
        started = time.monotonic()
        try:
            await client.responses.create(model="gpt-4o", input="hi", max_output_tokens=16)
        except Exception as exc:
            return exc, time.monotonic() - started
        return None, time.monotonic() - started

    shed = await asyncio.gather(*[one() for _ in range(8)])
    for exc, took in shed:
        assert isinstance(exc, openai.InternalServerError) and exc.status_code == 503, exc
        assert exc.code == "overloaded" and exc.body["type"] == "service_unavailable"  # type: ignore[index]
        assert exc.response.headers["retry-after"] == "1"
        assert took < 5.0  # at once (queue full), or after the 0.3 s queue timeout: never a hang
    assert admission.shed == {"queue_full": 7, "queue_timeout": 1}

    # A client that retries (the openai default) honours retry-after and is served once a slot is free.
    retrying = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=3)
    late = asyncio.ensure_future(
        retrying.responses.create(model="gpt-4o", input="later", max_output_tokens=16)
    )
    await asyncio.sleep(0.5)
    for call in held:
        admission.done(call)
    assert (await late).output_text == "Echo: later"
    for _ in range(3):  # and the limits leave calls within them alone
        await client.responses.create(model="gpt-4o", input="within", max_output_tokens=16)

    assert admission.active == 0 and admission.queued == 0
    assert len(await upstream.requests()) == 1 + 3  # no shed call reached the upstream
    ends = [r for r in sc.audit() if r["phase"] == "end"]
    shed_ends = [r for r in ends if r["outcome"] == "shed"]
    assert len(shed_ends) >= 9  # the 8, and the retrying call's first try(s)
    assert all(r["error"]["code"] == "overloaded" for r in shed_ends)
    assert not [r for r in sc.audit() if r["phase"] == "start" and r["outcome"] == "shed"]
    assert await _metric(sc.admin, "overloaded") == len(shed_ends)


@settings(max_examples=25, deadline=None)
@given(limit=st.integers(1, 4), queue=st.integers(0, 4), arrivals=st.integers(0, 12))
def test_admission_admits_queues_and_sheds_by_its_limits(limit: int, queue: int, arrivals: int) -> None:
    async def scenario() -> None:
        gate = Admission(limit, queue, queue_timeout=30.0)
        calls = [Call(id=f"c{i}", method="POST", path="/v1/responses") for i in range(arrivals)]
        entering = [asyncio.ensure_future(gate.enter(c)) for c in calls]
        await asyncio.sleep(0)
        admitted = [c for c, e in zip(calls, entering, strict=True) if e.done() and e.exception() is None]
        shed = [c for c in calls if c.outcome == "shed"]
        assert len(admitted) == min(arrivals, limit)
        assert gate.queued == min(max(0, arrivals - limit), queue)
        assert len(shed) == max(0, arrivals - limit - queue) == gate.shed["queue_full"]
        queued = gate.queued
        for call in admitted:  # forwarded: each freed slot goes to the longest waiter
            gate.done(call)
            gate.done(call)  # idempotent: the call's end gives back nothing more
        await asyncio.sleep(0)
        promoted = min(len(admitted), queued)
        assert gate.active == promoted and gate.queued == queued - promoted
        assert all(e.done() and e.exception() is None for e in entering[limit : limit + promoted])
        while not all(e.done() for e in entering):  # the rest of the queue, a slot at a time
            for call in calls:
                gate.done(call)
            await asyncio.sleep(0)
        for call in calls:
            gate.done(call)
        assert gate.active == 0 and gate.queued == 0

    asyncio.run(scenario())


# --- 3. the clocks measure the dependency; a real outage is still reported as one ---------------------------


async def test_within_does_not_count_the_loops_stalls() -> None:
    loop = asyncio.get_running_loop()

    async def answered_during_a_stall() -> str:
        answer: asyncio.Future[str] = loop.create_future()
        loop.call_later(0.05, answer.set_result, "ok")
        loop.call_soon(time.sleep, 0.6)  # the loop is blocked well past the 0.3 s timeout
        return await answer

    assert await within(0.3, answered_during_a_stall) == "ok"
    started = time.monotonic()
    with pytest.raises(TimeoutError):  # no stall: a dependency that never answers times out on time
        await within(0.3, loop.create_future)
    assert 0.25 < time.monotonic() - started < 2.0


async def test_a_stalled_loop_is_not_redis_or_opa_time(
    redis_url: str, own_opa: tuple[subprocess.Popen[bytes], str]
) -> None:
    """The loop blocks for 0.6 s while connecting, then while a reply waits: both under a 0.3 s timeout."""
    loop = asyncio.get_running_loop()
    store = RedisBudgetStore(redis_url, timeout=0.3)
    engine = DaemonEngine(own_opa[1], "sidecar/decision", timeout=0.3)
    await engine.start()
    try:
        for _ in range(2):  # a new connection, then a pooled one
            loop.call_soon(time.sleep, 0.6)
            assert await store.rate_limit("stall", 100) == 0
            loop.call_soon(time.sleep, 0.6)
            assert isinstance(await engine.query("sidecar/decision", {}), dict)
    finally:
        await store.close()
        await engine.close()


async def test_waiting_for_a_redis_connection_is_not_redis_time(redis_url: str) -> None:
    # One connection, 1,500 operations at once: the last waits far longer than the 0.2 s timeout for the
    # connection, yet each operation takes Redis well under it. (Counted whole, ~85% failed.)
    store = RedisBudgetStore(redis_url, timeout=0.2, max_connections=1)
    try:
        waits = await asyncio.gather(*[store.rate_limit(f"k{i % 7}", 1_000_000) for i in range(1500)])
    finally:
        await store.close()
    assert waits == [0] * 1500


async def test_waiting_for_a_pii_worker_is_not_detection_time() -> None:
    # One worker, 150 texts at once with a 0.5 s timeout: detection takes ~15 ms a text, so most texts
    # wait longer than the timeout for the worker. (Counted whole, ~90% failed.)
    pool = DetectorPool(PiiConfig.load("patterns", 0.35, None), workers=1, max_tasks_per_child=2000)
    texts = [f"Ticket {i}: mail jane.doe{i}@example.com or call 555-0100. " * 30 for i in range(150)]
    try:
        await pool.warm_up()
        started = time.monotonic()
        found = await asyncio.gather(*[pool.analyze([text], 0.5) for text in texts])
        took = time.monotonic() - started
    finally:
        pool.shutdown()
    assert all(any(s.entity == "EMAIL_ADDRESS" for s in spans) for (spans,) in found)
    assert took > 0.5  # the queue was really longer than the timeout


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc, url = start_redis_server(tmp_path)
    yield proc, url
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
    stop_redis_server(proc)


@pytest.fixture
async def own_opa(opa_bin: str, tmp_path: Path) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    proc, url = _start_opa(opa_bin, _bundle(tmp_path))
    yield proc, url
    _stop(proc)


async def _fails_with(client: openai.AsyncOpenAI, code: str, within_s: float) -> None:
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        await client.responses.create(model="gpt-4o", input="x", max_output_tokens=16)
    assert caught.value.status_code == 503 and caught.value.code == code
    assert time.monotonic() - started < within_s


async def test_a_dead_or_hung_redis_is_still_store_unavailable(
    make_sidecar: MakeSidecar, own_redis: tuple[subprocess.Popen[bytes], str]
) -> None:
    proc, url = own_redis
    sc = await make_sidecar(SIDECAR_PII_MODE="off", SIDECAR_REDIS_URL=url)
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    await client.responses.create(model="gpt-4o", input="x", max_output_tokens=16)
    proc.send_signal(signal.SIGSTOP)  # hung: connections stay open, nothing answers
    try:
        await _fails_with(client, "store_unavailable", within_s=5.0)  # 0.5 s, plus the loop's own time
    finally:
        proc.send_signal(signal.SIGCONT)
    await client.responses.create(model="gpt-4o", input="x", max_output_tokens=16)
    stop_redis_server(proc)  # dead: refused at once
    await _fails_with(client, "store_unavailable", within_s=5.0)


async def test_a_dead_or_hung_opa_is_still_policy_unavailable(
    make_sidecar: MakeSidecar, own_opa: tuple[subprocess.Popen[bytes], str]
) -> None:
    proc, url = own_opa
    sc = await make_sidecar(SIDECAR_PII_MODE="off", SIDECAR_OPA_URL=url)
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    await client.responses.create(model="gpt-4o", input="x", max_output_tokens=16)
    proc.send_signal(signal.SIGSTOP)
    try:
        await _fails_with(client, "policy_unavailable", within_s=5.0)
    finally:
        proc.send_signal(signal.SIGCONT)
    await client.responses.create(model="gpt-4o", input="x", max_output_tokens=16)
    proc.terminate()
    proc.wait(10)
    await _fails_with(client, "policy_unavailable", within_s=5.0)

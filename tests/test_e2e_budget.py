"""Budgets and rate limits through the real openai client, on the in-memory store and on a real Redis."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import ACME_KEY, MakeSidecar, RunningSidecar, Upstream, eventually, free_port


def _ends(sc: RunningSidecar) -> list[dict[str, Any]]:
    return [r for r in sc.audit() if r["phase"] == "end"]


async def _limit(sc: RunningSidecar, **limits: int) -> None:
    assert sc.sidecar.budgets is not None
    await sc.sidecar.budgets.store.set_limit_usage("acme", limits=limits)


async def _used(sc: RunningSidecar, window: str = "day") -> int:
    assert sc.sidecar.budgets is not None
    rows = await sc.sidecar.budgets.store.show("acme")
    return rows[window].used


OpenClient = Callable[..., openai.AsyncOpenAI]


@pytest.fixture
async def open_client() -> AsyncIterator[OpenClient]:
    """openai clients for one test, each closed when the test ends.

    Never leave one for the garbage collector: the sidecars under test share this process. When a collection
    finds an unclosed client, asyncio's transport finalizer closes its sockets first, and then openai's own
    finalizer schedules `aclose()` on whatever loop the collecting thread runs. That aclose aborts the dead
    transports, which unregisters their old fd numbers from the session loop's selector: by then a sidecar
    may have accepted a new connection on one of those numbers, and that connection is never read (its
    caller waits until it times out).
    """
    opened: list[openai.AsyncOpenAI] = []

    def make(**kwargs: Any) -> openai.AsyncOpenAI:
        opened.append(openai.AsyncOpenAI(**kwargs))
        return opened[-1]

    yield make
    for client in opened:
        await client.close()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_reserve_then_settle_with_real_usage(
    make_sidecar: MakeSidecar, open_client: OpenClient, api: str, stream: bool
) -> None:
    sc = await make_sidecar()
    client = open_client(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    messages: Any = [{"role": "user", "content": "count my tokens please"}]
    if api == "responses":
        if stream:
            async for _ in await client.responses.create(
                model="gpt-4o", input="count my tokens please", stream=True
            ):
                pass
        else:
            await client.responses.create(model="gpt-4o", input="count my tokens please")
    elif stream:
        async for _ in await client.chat.completions.create(model="gpt-4o", messages=messages, stream=True):
            pass
    else:
        await client.chat.completions.create(model="gpt-4o", messages=messages)
    (end,) = _ends(sc)
    budget = end["budget"]
    assert budget["reserved"] > 4096  # the prompt plus acme's 4096-token output cap
    assert 0 < budget["used"] < 50 and budget["reserved"] == budget["used"] + budget["refunded"]
    assert await _used(sc) == budget["used"]  # only the real usage stays charged
    assert sc.sidecar.budgets is not None
    tokens = sc.sidecar.budgets.tokens  # the metrics hook: per tenant and model
    assert tokens[("acme", "gpt-4o", "reserved")] == budget["reserved"]
    assert tokens[("acme", "gpt-4o", "used")] == budget["used"]
    assert tokens[("acme", "gpt-4o", "refunded")] == budget["refunded"]


async def test_failed_upstream_calls_refund_everything(
    make_sidecar: MakeSidecar, open_client: OpenClient
) -> None:
    sc = await make_sidecar()
    client = open_client(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError):
        await client.responses.create(model="gpt-4o", input="x", extra_headers={"x-dev-upstream-fail": "500"})
    with pytest.raises(openai.APIStatusError):
        await client.responses.create(model="gpt-4o", input="x", extra_headers={"x-dev-upstream-drop": "1"})
    for end in _ends(sc):
        assert end["budget"]["reserved"] > 0 and end["budget"]["refunded"] == end["budget"]["reserved"]
    assert await _used(sc) == 0


async def test_budget_exhausted_is_429_and_not_forwarded(
    make_sidecar: MakeSidecar, upstream: Upstream, open_client: OpenClient
) -> None:
    sc = await make_sidecar()
    await _limit(sc, day=5000)  # room for one call's reservation (prompt + 4096), not two at once
    await upstream.clear()
    client = open_client(base_url=sc.url, api_key=ACME_KEY, max_retries=3)
    await client.responses.create(model="gpt-4o", input="first")
    assert sc.sidecar.budgets is not None
    await sc.sidecar.budgets.store.set_limit_usage("acme", used={"day": 4000})
    with pytest.raises(openai.RateLimitError) as caught:
        await client.responses.create(model="gpt-4o", input="second")
    err = caught.value
    assert err.code == "budget_exceeded" and "day window" in err.message
    assert err.response.headers["x-should-retry"] == "false"
    assert 0 < int(err.response.headers["retry-after"]) <= 86_400
    assert len(await upstream.requests()) == 1  # the refused call never left


async def test_rate_limit_is_429_with_a_short_retry_after(
    make_sidecar: MakeSidecar, open_client: OpenClient, tmp_path: Any
) -> None:
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "p.rego").write_text(
        'package sidecar\n\ndecision := {"allow": true, "rate_limit": {"requests_per_minute": 3}}\n'
    )
    sc = await make_sidecar(SIDECAR_BUNDLE=str(folder))
    client = open_client(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    for _ in range(3):
        await client.models.list()
    with pytest.raises(openai.RateLimitError) as caught:
        await client.models.list()
    assert caught.value.code == "rate_limited"
    assert 0 < int(caught.value.response.headers["retry-after"]) <= 60
    assert "x-should-retry" not in caught.value.response.headers  # a retry after the wait can succeed


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_client_disconnect_settles_what_was_streamed(
    make_sidecar: MakeSidecar, upstream: Upstream, api: str
) -> None:
    sc = await make_sidecar()
    story = "tell me a long story " * 10
    body: dict[str, Any] = {"model": "gpt-4o", "stream": True}
    if api == "responses":
        body["input"] = story
    else:
        body["messages"] = [{"role": "user", "content": story}]
    headers = {"Authorization": f"Bearer {ACME_KEY}", "x-dev-upstream-stream-delay-ms": "50"}
    path = "/responses" if api == "responses" else "/chat/completions"
    async with aiohttp.ClientSession() as s:
        resp = await s.post(sc.url + path, json=body, headers=headers)
        for _ in range(12):
            await resp.content.readline()
        resp.close()

    async def settled() -> bool:
        ends = _ends(sc)
        return bool(ends) and ends[-1]["outcome"] == "client_disconnected"

    await eventually(settled)
    budget = _ends(sc)[-1]["budget"]
    assert budget["used"] is None  # no usage arrived: the audit's `used` is the upstream's figure
    charged = budget["reserved"] - budget["refunded"]
    assert 0 < charged < budget["reserved"]  # the prompt plus the few streamed tokens, not the whole cap
    assert await _used(sc) == charged


# A model acme may use that its policy does not mark expensive, so only the budget itself refuses calls
# (for gpt-4o the policy's guard would deny once under 10% of the day remains).
CHEAP = "gpt-4.1-mini"


async def _flood(url: str, n: int, stream: bool) -> list[str]:
    """n calls at once, sent with aiohttp: the point is raw concurrency, and the wire format is the same."""
    headers = {"Authorization": f"Bearer {ACME_KEY}"}

    async def one(session: aiohttp.ClientSession, i: int) -> str:
        body = {"model": CHEAP, "input": f"call {i}", "stream": stream}
        async with session.post(url + "/responses", json=body, headers=headers) as resp:
            payload = await resp.read()
            if resp.status == 200:
                return "ok"
            return str(json.loads(payload)["error"]["code"])

    async def flood() -> list[str]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            return await asyncio.gather(*[one(session, i) for i in range(n)])

    # The callers get their own thread and event loop, as agents in their own process would.
    return await asyncio.to_thread(asyncio.run, flood())


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_concurrent_calls_never_overspend(
    make_sidecar: MakeSidecar, redis_url: str, store: str, stream: bool
) -> None:
    env = {"SIDECAR_REDIS_URL": redis_url} if store == "redis" else {}
    sc = await make_sidecar(**env)
    assert sc.sidecar.budgets is not None
    await sc.sidecar.budgets.store.reset("acme")
    limit = 10 * 4120  # fits about ten reservations of (prompt + 4096)
    await _limit(sc, day=limit)
    outcomes = await _flood(sc.url, 40, stream)
    # About ten reservations fit at once; more once early calls settle to their real usage. The invariant
    # that matters is below: real usage never exceeds the limit by more than one call's usage.
    counts = Counter(outcomes)
    assert 8 <= counts["ok"] < 40 and counts["budget_exceeded"] == 40 - counts["ok"], counts

    async def all_settled() -> bool:  # a stream's settle runs after its last byte reached the caller
        return len(_ends(sc)) == 40

    await eventually(all_settled)
    ends = [e for e in _ends(sc) if e["budget"]["reserved"]]
    true_usage = sum(e["budget"]["used"] or 0 for e in ends)
    assert true_usage <= limit + max(e["budget"]["used"] or 0 for e in ends)
    assert await _used(sc) == true_usage  # every reservation settled to its real usage


async def test_two_sidecars_share_one_redis(make_sidecar: MakeSidecar, redis_url: str) -> None:
    one = await make_sidecar(SIDECAR_REDIS_URL=redis_url)
    two = await make_sidecar(SIDECAR_REDIS_URL=redis_url)
    assert one.sidecar.budgets is not None
    await one.sidecar.budgets.store.reset("acme")
    await _limit(one, day=10 * 4120)  # stored in Redis: applies to both
    limit = 10 * 4120
    results = await asyncio.gather(_flood(one.url, 20, False), _flood(two.url, 20, False))
    granted = sum(r.count("ok") for r in results)
    # One budget across both replicas: about ten reservations fit at once (a few more once early calls
    # settle to their real usage), never the forty the two would grant on separate budgets.
    assert 8 <= granted < 40 and any(r.count("budget_exceeded") > 0 for r in results), results

    async def all_settled() -> bool:
        return len(_ends(one)) + len(_ends(two)) == 40

    await eventually(all_settled)
    ends = [e for sc in (one, two) for e in _ends(sc) if e["budget"]["reserved"]]
    true_usage = sum(e["budget"]["used"] or 0 for e in ends)
    assert true_usage <= limit + max(e["budget"]["used"] or 0 for e in ends)
    assert await _used(one) == await _used(two) == true_usage


async def test_redis_down_fails_closed_or_open(
    make_sidecar: MakeSidecar, upstream: Upstream, open_client: OpenClient
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    closed = await make_sidecar(SIDECAR_REDIS_URL=dead)
    await upstream.clear()
    client = open_client(base_url=closed.url, api_key=ACME_KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        await client.responses.create(model="gpt-4o", input="x")
    assert caught.value.status_code == 503 and caught.value.code == "store_unavailable"
    assert await upstream.requests() == []
    async with aiohttp.ClientSession() as s, s.get(closed.admin + "/readyz") as r:
        assert r.status == 503 and (await r.json())["store"]["ok"] is False

    opened = await make_sidecar(SIDECAR_REDIS_URL=dead, SIDECAR_FAIL_MODE="open")
    client = open_client(base_url=opened.url, api_key=ACME_KEY, max_retries=0)
    assert (await client.responses.create(model="gpt-4o", input="x")).output_text == "Echo: x"
    assert "store" in opened.audit()[-1]["fail_open"]
    assert json.dumps(opened.audit()[-1]).count("fail_open") == 1


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_stream_without_usage_is_settled_from_the_streamed_text(
    make_sidecar: MakeSidecar, open_client: OpenClient, api: str
) -> None:
    sc = await make_sidecar()
    client = open_client(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    fail = {"x-dev-upstream-stream-fail": "1"}
    # The upstream breaks off mid-stream with an in-band error: no response.completed / usage chunk.
    if api == "responses":
        stream = await client.responses.create(
            model="gpt-4o", input="a story please", stream=True, extra_headers=fail
        )
        kinds = [event.type async for event in stream]
        assert "error" in kinds and "response.completed" not in kinds
    else:
        chunks = await client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "a story please"}],
            stream=True,
            extra_headers=fail,
        )
        with pytest.raises(openai.APIError):
            async for chunk in chunks:
                assert not chunk.usage

    async def settled() -> bool:
        return bool(_ends(sc))

    await eventually(settled)
    budget = _ends(sc)[-1]["budget"]
    charged = budget["reserved"] - budget["refunded"]
    assert budget["used"] is None and 0 < charged < budget["reserved"]  # the prompt and any text, counted


async def test_two_sidecar_processes_share_one_redis(
    make_sidecar: MakeSidecar, redis_url: str, upstream: Upstream, keys_file: str, tmp_path: Any
) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import BUNDLE, PROVIDER_KEY, wait_http

    one = await make_sidecar(SIDECAR_REDIS_URL=redis_url)
    assert one.sidecar.budgets is not None
    await one.sidecar.budgets.store.reset("acme")
    await _limit(one, day=10 * 4120)
    port, admin = free_port(), free_port()
    env = {**os.environ, "SIDECAR_PORT": str(port), "SIDECAR_ADMIN_PORT": str(admin), "SIDECAR_UPSTREAM_URL": upstream.url,
           "SIDECAR_UPSTREAM_API_KEY": PROVIDER_KEY, "SIDECAR_STATIC_KEYS_FILE": keys_file, "SIDECAR_REDIS_URL": redis_url,
           "SIDECAR_BUNDLE": str(BUNDLE), "SIDECAR_AUDIT_LOG": str(tmp_path / "two.log"), "SIDECAR_LOG_LEVEL": "warning"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve"], env=env)  # noqa: ASYNC220
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{admin}/readyz", 30.0, proc)
        results = await asyncio.gather(
            _flood(one.url, 20, False), _flood(f"http://127.0.0.1:{port}/v1", 20, False)
        )
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
    granted = sum(r.count("ok") for r in results)
    assert 8 <= granted < 40 and any(r.count("budget_exceeded") > 0 for r in results), results
    assert await _used(one) <= 10 * 4120 + 50  # one shared budget across the two processes

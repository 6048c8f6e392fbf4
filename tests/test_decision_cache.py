"""The embedded engine's decision cache: keyed on what the bundle reads, never stale."""

from __future__ import annotations

import copy
from pathlib import Path

from sidecar.policy import bundle as bundles
from sidecar.policy.cache import input_paths
from sidecar.policy.embedded import EmbeddedEngine
from tests.conftest import BUNDLE
from tests.test_engines import corpus


def _bundle(tmp_path: Path, rego: str) -> bundles.Bundle:
    (tmp_path / "p.rego").write_text(rego)
    return bundles.load(tmp_path)


def test_paths_of_the_shipped_bundle() -> None:
    paths = input_paths(bundles.load(BUNDLE))
    assert paths is not None
    assert ("request", "operation") in paths and ("budget", "windows") in paths
    assert ("request", "id") not in paths and ("time", "now") not in paths


def test_unknowable_reads_turn_caching_off(tmp_path: Path) -> None:
    assert input_paths(_bundle(tmp_path, "package x\n\nd := input\n")) is None
    assert input_paths(_bundle(tmp_path, 'package x\n\nd := input["request"]\n')) is None
    assert input_paths(_bundle(tmp_path, "package x\n\nd := time.now_ns()\n")) is None
    # Comments and strings do not count as reads.
    assert input_paths(
        _bundle(tmp_path, 'package x\n\n# input\nd := "input"\ne := input.a[k] if k := "b"\n')
    ) == [("a",)]


async def test_cached_decisions_equal_fresh_ones_over_the_corpus() -> None:
    bundle = bundles.load(BUNDLE)
    cached = EmbeddedEngine(bundle, "sidecar/decision", cache_entries=10_000)
    fresh = EmbeddedEngine(bundle, "sidecar/decision", cache_entries=0)
    docs = corpus()
    for doc in docs + [copy.deepcopy(d) for d in docs]:
        varied = copy.deepcopy(doc)
        if isinstance(varied.get("request"), dict):
            varied["request"]["id"] = "req_other"  # unread fields differ: same decision, from the cache
        assert await cached.evaluate(varied) == await fresh.evaluate(doc)  # type: ignore[arg-type]
    assert cached.cache.hits >= len(docs) and fresh.cache.hits == 0


async def test_a_policy_reading_volatile_fields_is_never_served_stale(tmp_path: Path) -> None:
    rego = 'package sidecar\n\ndecision := {"allow": endswith(input.request.id, "1")}\n'
    engine = EmbeddedEngine(_bundle(tmp_path, rego), "sidecar/decision", cache_entries=100)
    results = [(await engine.evaluate({"request": {"id": f"req_{i}"}}))["allow"] for i in range(4)]  # type: ignore[typeddict-item]
    assert results == [False, True, False, False]


async def test_reload_starts_a_new_cache(tmp_path: Path) -> None:
    allow = 'package sidecar\n\ndecision := {"allow": input.request.model == "a"}\n'
    engine = EmbeddedEngine(_bundle(tmp_path, allow), "sidecar/decision", cache_entries=100)
    doc = {"request": {"model": "a"}}
    assert (await engine.evaluate(doc))["allow"] is True  # type: ignore[arg-type]
    engine.swap(_bundle(tmp_path, allow.replace('== "a"', '== "b"')))
    assert (await engine.evaluate(doc))["allow"] is False  # type: ignore[arg-type]


GUARD = """package sidecar

decision := {"allow": true} if input.request.model == "small"

decision := {"allow": remaining > 10} if {
	input.request.model == "big"
	remaining := input.budget.windows.day.remaining
}
"""


async def test_volatile_inputs_only_key_the_decisions_that_read_them(tmp_path: Path) -> None:
    engine = EmbeddedEngine(_bundle(tmp_path, GUARD), "sidecar/decision", cache_entries=100)

    def doc(model: str, remaining: int, request_id: str) -> dict[str, object]:
        window = {"limit": 100, "used": 100 - remaining, "remaining": remaining, "resets_at": "x"}
        return {"request": {"id": request_id, "model": model}, "budget": {"windows": {"day": window}}}

    for i, remaining in enumerate([90, 80, 5, 70]):  # budgets change on every call
        assert (await engine.evaluate(doc("small", remaining, f"r{i}")))["allow"] is True  # type: ignore[arg-type]
    assert engine.cache.misses == 1 and engine.cache.hits == 3  # "small" never reads the budget

    results = [(await engine.evaluate(doc("big", r, f"b{r}")))["allow"] for r in [50, 5, 50, 5]]  # type: ignore[arg-type]
    assert results == [True, False, True, False]  # "big" reads it: keyed on it, never stale
    assert engine.cache.misses == 3 and engine.cache.hits == 5


async def test_shipped_policy_keeps_hitting_while_budgets_move() -> None:
    engine = EmbeddedEngine(bundles.load(BUNDLE), "sidecar/decision", cache_entries=100)
    fresh = EmbeddedEngine(bundles.load(BUNDLE), "sidecar/decision", cache_entries=0)
    base = corpus()[5]  # acme, responses.create, gpt-4o, an agent call
    for used in range(0, 2_000_000, 100_000):
        doc = copy.deepcopy(base)
        doc["budget"] = {"tenant": "acme", "windows": {"day": {"limit": 2_000_000, "used": used,
                         "remaining": 2_000_000 - used, "resets_at": "2026-11-25T00:00:00Z"}}}  # fmt: skip
        for model in ["gpt-4o-mini", "gpt-4o"]:  # gpt-4o is "expensive": the guard reads the budget
            doc["request"]["model"] = model
            assert await engine.evaluate(doc) == await fresh.evaluate(doc)  # type: ignore[arg-type]
    assert engine.cache.hits >= 19  # the cheap model's decision is reused across every budget state

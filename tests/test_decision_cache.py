"""The embedded engine's decision cache: keyed on what the bundle reads, never stale."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest

from sidecar.policy import bundle as bundles
from sidecar.policy.cache import DecisionCache, InputReads, input_paths, input_reads
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
    for rego in [
        "d := input",
        "d := input[k] if k := data.k",
        "d := time.now_ns()",
        "d := json.marshal(input)",
        'd := object.get(input, "a", 1)',
        "d := x if { x := input; x.a }",
        "d := v if walk(input, [_, v])",
        "f(x) := x.a\nd := f(input)",
        "d := v if { v := e with input as {} }\ne := input.a",
        "d := v if { v := data.x.f(1) with data.x.f as rand.intn }\nf(n) := n",
        "d := uuid.rfc4122(input.a)",
        'd := net.lookup_ip_addr("x")',
        "d := no_such_builtin(input.a)",
    ]:
        assert input_paths(_bundle(tmp_path, f"package x\n\n{rego}\n")) is None, rego


def test_reads_are_taken_from_the_parsed_policy(tmp_path: Path) -> None:
    def paths(rego: str) -> list[tuple[str, ...]] | None:
        return input_paths(_bundle(tmp_path, f"package x\n\n{rego}\n"))

    # Comments and strings are not reads; a `#` inside a string hides nothing.
    assert paths('# input.z\nd := "input.y #"\ne := input.a[k] if k := "b"') == [("a",)]
    assert paths('d if { input.a != "#"; input.b == 1 }  # input.c') == [("a",), ("b",)]
    assert paths('d := `#"` if input["a"]["b-c"] == 1') == [("a", "b-c")]
    # A computed or numeric index, an alias, a builtin or function argument: the whole subtree.
    assert paths("d if { some k; input.h[k] == 1 }") == [("h",)]
    assert paths("d := input.a[0].b") == [("a",)]
    assert paths("d if { r := input.r; r.m == 1 }") == [("r",)]
    assert paths("d := count(input.t)\nf(s) := s.sub\ne := f(input.s)") == [("s",), ("t",)]
    assert paths("import input.s as who\nd := who.sub") == [("s",)]
    assert paths("d := v if { v := input.v with data.x as input.w }") == [("v",), ("w",)]


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


def test_volatile_reads_coverage_cannot_see_are_always_keyed(tmp_path: Path) -> None:
    def reads(rego: str) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
        found = input_reads(_bundle(tmp_path, f"package x\n\n{rego}\n"))
        assert found is not None
        return found.stable, sorted(found.volatile)

    # Coverage can tell whether these ran: keyed only by the evaluations that read them.
    assert reads("d := input.time.now") == ([], [("time", "now")])
    assert reads("d if {\n  x :=\n    input.budget.a\n  x > 1\n}") == ([], [("budget", "a")])
    # An `else` value, a comprehension term, a rule head key: not in regorus's coverage report.
    assert reads("d := 1 if { false } else := input.request.id") == ([("request", "id")], [])
    assert reads("d := [input.budget.w | true]") == ([("budget", "w")], [])
    assert reads("d[input.time.now] := 1") == ([("time", "now")], [])
    # A prefix of a volatile path keys its whole subtree, always.
    assert reads("d := count(input.request)") == ([("request",)], [])


def test_a_volatile_line_the_coverage_report_cannot_show_turns_the_cache_off() -> None:
    reads = InputReads([("request", "model")], {("budget",): frozenset({("p.rego", 9)})})
    report = {"files": [{"path": "p.rego", "covered": [3], "not_covered": [4, 5]}]}
    cache = DecisionCache(reads, 10, _unconfirmed={"p.rego": {9}})
    doc = {"request": {"model": "a"}, "budget": {"x": 1}}
    key = cache.key(doc)
    assert key is not None
    cache.put(key, doc, {"allow": True}, {"files": []})  # p.rego did not run: nothing to check yet
    assert cache.enabled and cache.get(key, doc) == (True, {"allow": True})
    cache.put(key, doc, {"allow": True}, report)  # line 9 is neither covered nor not covered
    assert not cache.enabled and cache.refusal and "[9]" in cache.refusal
    assert cache.key(doc) is None and not cache._data


async def test_the_shipped_bundle_confirms_its_volatile_lines() -> None:
    engine = EmbeddedEngine(bundles.load(BUNDLE), "sidecar/decision", cache_entries=100)
    assert engine.cache.reads is not None and engine.cache.reads.volatile
    for doc in corpus()[:20]:
        await engine.evaluate(doc)  # type: ignore[arg-type]
    assert engine.cache.enabled and engine.cache._unconfirmed == {}


def test_null_and_a_missing_field_are_different_keys() -> None:
    cache = DecisionCache(InputReads([("a", "b")], {}), 10)
    keys = {cache.key(doc) for doc in [{}, {"a": None}, {"a": {}}, {"a": {"b": None}}, {"a": {"b": 0}}]}
    assert len(keys) == 3  # absent, absent, absent, null, 0: `input.a.b` is undefined in the first three


def test_a_refused_bundle_runs_uncached_and_says_why_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rego = 'package sidecar\n\ndecision := {"allow": contains(json.marshal(input), "x")}\n'
    with caplog.at_level(logging.WARNING, logger="sidecar.policy.embedded"):
        engine = EmbeddedEngine(_bundle(tmp_path, rego), "sidecar/decision", cache_entries=100)
    assert not engine.cache.enabled and engine.cache.refusal == "p.rego:3: reads `input` as a whole"
    assert [r.getMessage() for r in caplog.records] == [
        "decision cache off for this bundle: p.rego:3: reads `input` as a whole"
    ]
    assert EmbeddedEngine(_bundle(tmp_path, rego), "sidecar/decision").cache.refusal is None  # 0: off

"""The decision cache is sound: cached and uncached evaluation agree, whatever the bundle reads.

The cache key comes from the compiled policy's AST. These tests attack it the way a bundle author could
by accident: a `#` inside a string, computed keys, `input` handed to builtins, functions and aliases,
volatile reads in places the engine's coverage report does not cover.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.policy import bundle as bundles
from sidecar.policy.embedded import EmbeddedEngine
from sidecar.policy.engine import EngineError
from tests.conftest import ACME_KEY, BUNDLE, CALLERS, MakeSidecar

SUPPORT_BOT = CALLERS[ACME_KEY]["sub"]
# On one line with the input read it would hide: a regex that strips `#...` as a comment misses it.
EXPLOIT = f"""package sidecar

deny contains "only the support bot may call" if {{ input.request.model != "#"; input.subject.sub != "{SUPPORT_BOT}" }}
"""


def exploit_bundle(root: Path) -> Path:
    """The shipped bundle plus a rule that denies every caller but the support bot."""
    target = root / "exploit-bundle"
    shutil.copytree(BUNDLE, target, ignore=shutil.ignore_patterns("*_test.rego"))
    (target / "exploit.rego").write_text(EXPLOIT)
    return target


def acme_call(sub: str) -> dict[str, Any]:
    return {
        "version": 1,
        "request": {"id": "req_1", "method": "POST", "path": "/v1/responses", "operation": "responses.create",
                    "model": "gpt-4o-mini", "stream": False, "max_output_tokens": None, "tools": [],
                    "body_bytes": 40, "estimated_input_tokens": 5, "headers": {}},
        "subject": {"authenticated": True, "sub": sub, "tenant": "acme", "groups": ["agents"], "issuer": "static",
                    "user": None},
        "pii": {"request": {}},
        "budget": {"tenant": "acme", "windows": {}},
        "approval": {"id": None, "status": "none"},
        "time": {"now": "2026-11-24T10:00:00Z"},
    }  # fmt: skip


async def test_a_hash_in_a_string_hides_no_read(tmp_path: Path) -> None:
    engine = EmbeddedEngine(bundles.load(exploit_bundle(tmp_path)), "sidecar/decision", cache_entries=100)
    for _ in range(2):
        assert (await engine.evaluate(acme_call(SUPPORT_BOT)))["allow"] is True  # type: ignore[arg-type]
    assert engine.cache.hits == 1  # the allowed decision is cached
    denied = await engine.evaluate(acme_call("mallory"))  # type: ignore[arg-type]
    assert denied["allow"] is False and denied["reasons"] == ["only the support bot may call"]
    assert engine.cache.reads is not None and ("subject", "sub") in engine.cache.reads.stable


async def test_a_denied_caller_gets_403_after_an_allowed_call_was_cached(
    make_sidecar: MakeSidecar, tmp_path: Path
) -> None:
    # PII scanning plays no part here: off, so the test does not wait for the NER model.
    sc = await make_sidecar(SIDECAR_BUNDLE=str(exploit_bundle(tmp_path)), SIDECAR_PII_MODE="off")
    engine = sc.sidecar.engine
    assert isinstance(engine, EmbeddedEngine) and engine.cache.enabled
    bot = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    for _ in range(2):
        assert (await bot.responses.create(model="gpt-4o-mini", input="hi")).output_text
    assert engine.cache.hits >= 1
    staff = openai.AsyncOpenAI(base_url=sc.url, api_key="ck-staff-key", max_retries=0)  # acme, not the bot
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await staff.responses.create(model="gpt-4o-mini", input="hi")
    assert caught.value.status_code == 403 and caught.value.code == "policy_violation"
    assert "only the support bot may call" in caught.value.message


# name: (policy after `package sidecar`, whether the analysis may cache it). Every policy's decision
# turns on the one tricky read, so a key that missed it would serve another caller's decision.
ADVERSARIAL: dict[str, tuple[str, bool]] = {
    "hash_in_string": (
        'allow if { input.request.model != "#"; input.subject.sub == "bot" }  # input.x',
        True,
    ),
    "hash_in_raw_string": (
        'allow if { x := `"#`; input.subject.sub != x; input.subject.sub == "bot" }',
        True,
    ),
    "computed_key": (
        'allow if { some k in ["x-k", "x-tenant-id"]; input.request.headers[k] == "let-me-in" }',
        True,
    ),
    "computed_request_key": (
        'allow if { k := lower(data.field); input.request[k] == "big" }\nfield := "MODEL"',
        True,
    ),
    "some_k_headers": ('allow if { some k; input.request.headers[k] == "let-me-in" }', True),
    "bracket_over_lines": ('allow if {\n  input[\n    "subject"\n  ]["sub"] == "bot"\n}', True),
    "builtin_subtree": ('allow if contains(json.marshal(input.request.headers), "let-me-in")', True),
    "function_arg": ('is_bot(s) if s.sub == "bot"\nallow if is_bot(input.subject)', True),
    "alias": ('allow if { s := input.subject; s.sub == "bot" }', True),
    "import_alias": ('import input.subject as who\nallow if who.sub == "bot"', True),
    "null_or_missing": ("allow if input.request.model == null", True),
    "budget_loop": (
        "low if { some w; input.budget.windows[w].remaining < 10 }\n"
        'allow if { input.request.model == "big"; not low }\nallow if input.request.model == "small"',
        True,
    ),
    "volatile_over_lines": (
        "late if {\n  x :=\n    input.request.estimated_input_tokens\n  x > 50000\n}\n"
        'allow if { input.request.model == "big"; not late }\nallow if input.request.model == "small"',
        True,
    ),
    "volatile_time": (
        'cutoff := time.parse_rfc3339_ns("2026-11-24T10:00:00.5Z")\n'
        'allow if { input.request.model == "big"; time.parse_rfc3339_ns(input.time.now) < cutoff }',
        True,
    ),
    "volatile_untracked": (
        'id := "none" if { input.request.model == "x" } else := input.request.id\n'
        'windows := [input.budget.windows | input.request.model == "big"]\n'
        "stamp[input.time.now] := 1 if input.subject.sub\n"
        'allow if { id == "req_1"; count(windows) >= 0; count(stamp) > 0 }',
        True,
    ),
    "input_to_builtin": ('allow if contains(json.marshal(input), "let-me-in")', False),
    "object_get_input": ('allow if object.get(input, ["subject", "sub"], "") == "bot"', False),
    "walk_input": ('allow if { walk(input, [_, v]); v == "let-me-in" }', False),
    "input_to_function": ('pick(x) := x.subject.sub\nallow if pick(input) == "bot"', False),
    "alias_whole": ('allow if { x := input; x.subject.sub == "bot" }', False),
    "with_input": (
        'inner if input.subject.sub == "bot"\nallow if { inner with input.subject.sub as input.request.model }',
        False,
    ),
    "time_now": ('allow if { time.now_ns() > 0; input.subject.sub == "bot" }', False),
}
POLICY = 'package sidecar\n\n{}\n\ndefault allow := false\n\ndecision := {{"allow": allow}}\n'

NONE = object()  # the field is absent from the input


def window(remaining: int) -> dict[str, Any]:
    return {
        "limit": 100,
        "used": 100 - remaining,
        "remaining": remaining,
        "resets_at": "2026-11-25T00:00:00Z",
    }


FIELDS: dict[tuple[str, str], list[Any]] = {
    ("subject", "sub"): ["bot", "mallory", SUPPORT_BOT],
    ("subject", "tenant"): ["acme", "globex", "", None, NONE],
    ("subject", "authenticated"): [True, False],
    ("subject", "user"): [None, {"sub": "u", "email": None, "groups": []}],
    ("subject", "groups"): [[], ["agents"], ["admins"]],
    ("request", "operation"): ["responses.create", "chat.completions.create", "files.content",
                               "fine_tuning.jobs.create", "organization.users.read", "unknown"],
    ("request", "model"): [NONE, None, "#", "gpt-4o", "gpt-4o-mini", "o1-pro", "big", "small", "let-me-in", 7],
    ("request", "headers"): [{}, {"x-tenant-id": "acme"}, {"x-tenant-id": "globex"}, {"x-k": "let-me-in"},
                             {"user-agent": "#"}],
    ("request", "tools"): [[], ["code_interpreter"], ["function"]],
    ("request", "id"): ["req_1", "req_2", "req_3"],
    ("request", "body_bytes"): [40, 300_000],
    ("request", "estimated_input_tokens"): [5, 90_000],
    ("pii", "request"): [{}, {"US_SSN": 1}, {"EMAIL_ADDRESS": 2}, {"CREDIT_CARD": 0}],
    ("budget", "windows"): [{}, {"day": window(5)}, {"day": window(50)}, {"day": window(50), "minute": window(5)}],
    ("time", "now"): ["2026-11-24T10:00:00Z", "2026-11-24T10:00:01Z"],
    ("approval", "status"): ["none", "pending", "approved"],
}  # fmt: skip
CHANGES = [(path, value) for path, values in FIELDS.items() for value in values]


def with_field(doc: dict[str, Any], path: tuple[str, str], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    section = out.setdefault(path[0], {})
    section.pop(path[1], None)
    if value is not NONE:
        section[path[1]] = copy.deepcopy(value)
    return out


def build(fields: dict[tuple[str, str], Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": 1, "approval": {"id": None}, "budget": {"tenant": "acme"}}
    for (section, key), value in fields.items():
        part = doc.setdefault(section, {})
        if value is not NONE:
            part[key] = copy.deepcopy(value)
    return doc


base_docs = st.fixed_dictionaries({path: st.sampled_from(values) for path, values in FIELDS.items()}).map(
    build
)


def settle(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends, as the embedded engine's evaluate does not."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("evaluate suspended")


def outcome(engine: EmbeddedEngine, doc: dict[str, Any]) -> Any:
    try:
        return settle(engine.evaluate(doc))  # type: ignore[arg-type]
    except EngineError as exc:
        return ("error", str(exc))


def agree_on_random_inputs(source: Path, examples: int) -> EmbeddedEngine:
    """Evaluate random inputs and one-field variations of them, cached and uncached; return the cached."""
    cached = EmbeddedEngine(bundles.load(source), "sidecar/decision", cache_entries=10_000)
    fresh = EmbeddedEngine(bundles.load(source), "sidecar/decision", cache_entries=0)

    @settings(max_examples=examples, deadline=None)
    @given(base=base_docs, changes=st.lists(st.sampled_from(CHANGES), max_size=6))
    def check(base: dict[str, Any], changes: list[tuple[tuple[str, str], Any]]) -> None:
        # The base first, so each one-field variation meets the base's entry; the base last, to hit.
        for doc in [base, *(with_field(base, path, value) for path, value in changes), base]:
            assert outcome(cached, doc) == outcome(fresh, doc), doc

    check()
    return cached


def test_cached_and_uncached_agree_on_the_shipped_bundle() -> None:
    cached = agree_on_random_inputs(BUNDLE, examples=80)
    assert cached.cache.enabled and cached.cache.hits > 80


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_cached_and_uncached_agree_on_adversarial_bundles(name: str, tmp_path: Path) -> None:
    rego, cacheable = ADVERSARIAL[name]
    (tmp_path / "p.rego").write_text(POLICY.format(rego))
    cached = agree_on_random_inputs(tmp_path, examples=40)
    # The analysis neither gave up on what it can bound nor cached what it cannot.
    assert cached.cache.enabled is cacheable, cached.cache.refusal
    if cacheable:
        assert cached.cache.hits > 0
    else:
        assert cached.cache.refusal and cached.cache.hits == 0

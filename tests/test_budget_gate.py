"""The reservation's size: input tokens plus the effective output cap, with the per-model default from the
shipped bundle's data when neither the request nor the decision caps the output."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar import config
from sidecar.budget.gate import Budgets
from sidecar.budget.memory_store import MemoryBudgetStore
from sidecar.documents import Decision
from sidecar.errors import SidecarError
from sidecar.pipeline.context import Call, Subject
from sidecar.pipeline.inspect import Summary
from sidecar.policy import bundle as bundles
from sidecar.policy.embedded import EmbeddedEngine
from tests.conftest import BUNDLE


def _input(model: str, operation: str = "responses.create", tenant: str = "acme") -> dict[str, Any]:
    return {
        "version": 1,
        "request": {"id": "req_1", "method": "POST", "path": "/v1/responses", "operation": operation,
                    "model": model, "stream": False, "max_output_tokens": None, "tools": [],
                    "body_bytes": 10, "estimated_input_tokens": 100, "headers": {}},
        "subject": {"authenticated": True, "sub": "bot", "tenant": tenant, "groups": ["agents"],
                    "issuer": "static", "user": None},
        "pii": {"request": {}},
        "budget": {"tenant": tenant, "windows": {}},
        "approval": {"id": None, "status": "none"},
        "time": {"now": "2026-11-24T10:00:00Z"},
    }  # fmt: skip


@pytest.fixture(scope="module")
def engine() -> EmbeddedEngine:
    return EmbeddedEngine(bundles.load(BUNDLE), "sidecar/decision", cache_entries=0)


def _budgets() -> Budgets:
    return Budgets(MemoryBudgetStore(), config.load(environ={}, require_keys=False), lambda t, m: len(t))


def _call(operation: str) -> Call:
    return Call(id="req_1", method="POST", path="/v1/responses", operation=operation)


@pytest.mark.parametrize(
    ("model", "requested", "cap", "expected"),
    [
        ("gpt-4o", 500, 4096, 100 + 500),  # the request's own limit is smaller than the cap
        ("gpt-4o", None, 4096, 100 + 4096),  # the decision's cap
        ("gpt-4o", None, None, 100 + 16384),  # no cap at all: the model's default from data
        ("gpt-4.1-mini", None, None, 100 + 32768),
        ("o3-mini", None, None, 100 + 100000),
        ("a-model-nobody-lists", None, None, 100 + 4096),  # data's general default
    ],
)
async def test_reservation_is_input_plus_effective_output_cap(
    engine: EmbeddedEngine, model: str, requested: int | None, cap: int | None, expected: int
) -> None:
    doc = Decision.parse(await engine.evaluate(_input(model)))  # type: ignore[arg-type]
    assert doc.default_output_tokens is not None
    decision = Decision.parse({**doc.as_dict(), "max_output_tokens": cap})
    summary = Summary(
        model=model, stream=False, max_output_tokens=requested, output_limit_field=None, tools=[]
    )
    assert _budgets().amount(_call("responses.create"), decision, summary, 100) == expected


async def test_non_generating_operations_reserve_only_their_input(engine: EmbeddedEngine) -> None:
    decision = Decision.parse(await engine.evaluate(_input("text-embedding-3-small", "embeddings.create")))  # type: ignore[arg-type]
    summary = Summary(model="text-embedding-3-small", stream=False, max_output_tokens=None,
                      output_limit_field=None, tools=[])  # fmt: skip
    assert _budgets().amount(_call("embeddings.create"), decision, summary, 37) == 37


def test_a_bundle_without_defaults_falls_back_to_4096() -> None:
    decision = Decision.parse({"allow": True, "budget": {"limits": {"day": 10}}})
    assert decision.default_output_tokens is None
    summary = Summary(model="m", stream=False, max_output_tokens=None, output_limit_field=None, tools=[])
    assert _budgets().amount(_call("chat.completions.create"), decision, summary, 1) == 1 + 4096


def test_a_malformed_default_is_a_malformed_decision() -> None:
    with pytest.raises(ValueError, match="default_output_tokens"):
        Decision.parse({"allow": True, "budget": {"default_output_tokens": "lots"}})


@pytest.mark.parametrize(("per", "second_caller_passes"), [("tenant", False), ("subject", True)])
async def test_rate_limit_counts_the_tenant_or_each_subject(per: str, second_caller_passes: bool) -> None:
    budgets = _budgets()
    decision = Decision.parse({"allow": True, "rate_limit": {"requests_per_minute": 1, "per": per}})
    summary = Summary(model="m", stream=False, max_output_tokens=None, output_limit_field=None, tools=[])

    async def admit(sub: str) -> bool:
        call = _call("responses.create")
        call.subject = Subject(True, sub, "acme")
        try:
            await budgets.admit(call, decision, summary)
        except SidecarError as err:
            assert err.status == 429 and err.code == "rate_limited" and "retry-after" in err.headers
            return False
        return True

    assert await admit("bot-a")
    assert not await admit("bot-a")
    assert await admit("bot-b") is second_caller_passes

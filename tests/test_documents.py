import pytest

from sidecar.documents import Decision, MalformedDecision

FULL = {
    "allow": True,
    "reasons": [],
    "code": "policy_violation",
    "require_approval": False,
    "approvers": ["group:ml-leads"],
    "mask": {
        "request": {"entities": ["EMAIL_ADDRESS"], "operator": "placeholder"},
        "response": {"entities": ["CREDIT_CARD"], "operator": "redact"},
        "restore": True,
    },
    "budget": {"limits": {"minute": 200000, "day": 2000000}},
    "max_output_tokens": 4096.0,
    "rate_limit": {"requests_per_minute": 120},
}


def test_full_decision_round_trips() -> None:
    decision = Decision.parse(FULL)
    assert decision.allow and decision.max_output_tokens == 4096
    assert decision.mask.request.entities == ("EMAIL_ADDRESS",)
    assert decision.mask.response.operator == "redact" and decision.mask.restore
    assert decision.budget_limits == {"minute": 200000, "day": 2000000}
    assert decision.requests_per_minute == 120
    assert Decision.parse(decision.as_dict()) == decision


def test_minimal_decision() -> None:
    decision = Decision.parse({"allow": False})
    assert not decision.allow and decision.code == "policy_violation" and decision.reasons == ()


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        "allow",
        {},
        {"allow": "yes"},
        {"allow": 1},
        {"allow": True, "reasons": "nope"},
        {"allow": True, "reasons": [1]},
        {"allow": True, "code": 5},
        {"allow": True, "require_approval": "true"},
        {"allow": True, "mask": {"request": {"entities": ["EMAIL_ADDRESS"], "operator": "encrypt"}}},
        {"allow": True, "mask": {"request": {"entities": "EMAIL_ADDRESS"}}},
        {"allow": True, "budget": {"limits": {"week": 5}}},
        {"allow": True, "budget": {"limits": {"day": -1}}},
        {"allow": True, "max_output_tokens": 0},
        {"allow": True, "max_output_tokens": 10.5},
        {"allow": True, "max_output_tokens": True},
        {"allow": True, "rate_limit": {"requests_per_minute": "many"}},
    ],
)
def test_malformed_decisions_are_rejected(doc: object) -> None:
    with pytest.raises(MalformedDecision):
        Decision.parse(doc)


@pytest.mark.parametrize(
    "doc",
    [
        {"allow": True, "require_aproval": True},
        {"allow": True, "mask": {"request": {"entites": ["EMAIL_ADDRESS"]}}},
        {"allow": True, "mask": {"restor": True}},
        {"allow": True, "budget": {"limit": {"day": 10}}},
        {"allow": True, "rate_limit": {"request_per_minute": 5}},
    ],
)
def test_a_misspelled_decision_field_denies(doc: dict[str, object]) -> None:
    with pytest.raises(MalformedDecision, match="unknown field"):
        Decision.parse(doc)

"""The policy input (docs/policy-input.md) and decision (docs/decision.md) documents.

The input is a plain JSON document, typed with TypedDicts so every stage that adds a part is checked.
The decision is parsed into a frozen dataclass: anything that does not match the contract raises
`MalformedDecision`, which the decide stage treats as a deny.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NotRequired, TypedDict

OPERATORS = frozenset({"placeholder", "redact", "replace", "mask", "hash"})
WINDOWS = ("minute", "hour", "day", "month")
ApprovalStatus = Literal["none", "pending", "approved", "denied", "expired"]
# An OpenAI organization or project id (`org-...`, `proj_...`): sent as a header value, so no spaces,
# quotes or control characters. Settings and the decision's `upstream` are both held to it.
UPSTREAM_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,255}\Z")


class RequestDoc(TypedDict):
    id: str
    method: str
    path: str
    query: str
    operation: str
    model: str | None
    stream: bool
    max_output_tokens: int | None
    tools: list[str]
    body_bytes: int
    estimated_input_tokens: int
    headers: dict[str, str]


class UserDoc(TypedDict):
    sub: str
    email: str | None
    groups: list[str]


class SubjectDoc(TypedDict):
    authenticated: bool
    sub: str | None
    tenant: str | None
    groups: list[str]
    issuer: str | None
    user: UserDoc | None


class WindowDoc(TypedDict):
    limit: int
    used: int
    remaining: int
    resets_at: str


class BudgetDoc(TypedDict):
    tenant: str | None
    windows: dict[str, WindowDoc]


class ApprovalDoc(TypedDict):
    id: str | None
    status: ApprovalStatus


class PiiDoc(TypedDict):
    request: dict[str, int]


class PolicyInput(TypedDict):
    version: int
    request: RequestDoc
    subject: SubjectDoc
    pii: PiiDoc
    budget: BudgetDoc
    approval: ApprovalDoc
    time: dict[str, str]
    # Sidecar extensions go in here, never over an existing name (docs/policy-input.md).
    sidecar: NotRequired[dict[str, Any]]


class MalformedDecision(ValueError):
    """The policy's answer is not a decision document; it is treated as a deny."""


@dataclass(frozen=True, slots=True)
class MaskRule:
    entities: tuple[str, ...] = ()
    operator: str = "placeholder"


@dataclass(frozen=True, slots=True)
class MaskDecision:
    request: MaskRule = MaskRule()
    response: MaskRule = MaskRule()
    restore: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    allow: bool
    reasons: tuple[str, ...] = ()
    code: str = "policy_violation"
    require_approval: bool = False
    approvers: tuple[str, ...] = ()
    mask: MaskDecision = MaskDecision()
    budget_limits: dict[str, int] = field(default_factory=dict)
    # What a reservation counts for the output when neither the request nor max_output_tokens caps it.
    default_output_tokens: int | None = None
    max_output_tokens: int | None = None
    requests_per_minute: int | None = None
    # Whose requests the rate limit counts: the tenant's together (default), or each subject's apart.
    rate_limit_per: str = "tenant"
    # `upstream`: the OpenAI-Organization / OpenAI-Project to send; None: the settings' (docs/decision.md).
    upstream_organization: str | None = None
    upstream_project: str | None = None

    @classmethod
    def deny(cls, reason: str, code: str = "policy_violation") -> Decision:
        return cls(allow=False, reasons=(reason,), code=code)

    @classmethod
    def parse(cls, doc: object) -> Decision:
        if doc is None:
            raise MalformedDecision("the policy's decision is undefined")
        if not isinstance(doc, dict):
            raise MalformedDecision(f"the decision is a {type(doc).__name__}, not an object")
        # A misspelled field (`require_aproval`) must not silently drop what it asked for: deny instead.
        _known(doc, _DECISION_FIELDS, "decision")
        allow = doc.get("allow")
        if not isinstance(allow, bool):
            raise MalformedDecision("decision.allow must be a boolean")
        code = doc.get("code") or "policy_violation"
        if not isinstance(code, str):
            raise MalformedDecision("decision.code must be a string")
        rpm = _optional(doc, "rate_limit", dict)
        organization, project = _upstream(_optional(doc, "upstream", dict) or {})
        budget = _optional(doc, "budget", dict) or {}
        _known(budget, {"limits", "default_output_tokens"}, "decision.budget")
        _known(rpm or {}, {"requests_per_minute", "per"}, "decision.rate_limit")
        return cls(
            allow=allow,
            reasons=_strings(doc, "reasons"),
            code=code,
            require_approval=_optional(doc, "require_approval", bool) or False,
            approvers=_strings(doc, "approvers"),
            mask=_mask(_optional(doc, "mask", dict) or {}),
            budget_limits=_limits(budget),
            default_output_tokens=_positive(
                budget.get("default_output_tokens"), "budget.default_output_tokens"
            ),
            max_output_tokens=_positive(doc.get("max_output_tokens"), "max_output_tokens"),
            requests_per_minute=_positive((rpm or {}).get("requests_per_minute"), "rate_limit"),
            rate_limit_per=_per((rpm or {}).get("per")),
            upstream_organization=organization,
            upstream_project=project,
        )

    def as_dict(self) -> dict[str, Any]:
        """The decision in its docs/decision.md shape (for `sidecar policy eval` and the audit)."""
        return {
            "allow": self.allow,
            "reasons": list(self.reasons),
            "code": self.code,
            "require_approval": self.require_approval,
            "approvers": list(self.approvers),
            "mask": {
                "request": {
                    "entities": list(self.mask.request.entities),
                    "operator": self.mask.request.operator,
                },
                "response": {
                    "entities": list(self.mask.response.entities),
                    "operator": self.mask.response.operator,
                },
                "restore": self.mask.restore,
            },
            "budget": {
                "limits": dict(self.budget_limits),
                "default_output_tokens": self.default_output_tokens,
            },
            "max_output_tokens": self.max_output_tokens,
            "rate_limit": (
                {"requests_per_minute": self.requests_per_minute, "per": self.rate_limit_per}
                if self.requests_per_minute
                else None
            ),
            "upstream": {"organization": self.upstream_organization, "project": self.upstream_project},
        }


_DECISION_FIELDS = frozenset(
    {
        "allow",
        "reasons",
        "code",
        "require_approval",
        "approvers",
        "mask",
        "budget",
        "max_output_tokens",
        "rate_limit",
        "upstream",
    }
)


def _known(doc: dict[str, Any], fields: frozenset[str] | set[str], where: str) -> None:
    if unknown := set(doc) - fields:
        raise MalformedDecision(f"{where}: unknown field(s) {sorted(unknown)} (docs/decision.md)")


def _optional(doc: dict[str, Any], key: str, kind: type) -> Any:
    value = doc.get(key)
    if value is not None and not isinstance(value, kind):
        raise MalformedDecision(f"decision.{key} must be a {kind.__name__}")
    return value


def _strings(doc: dict[str, Any], key: str) -> tuple[str, ...]:
    value = _optional(doc, key, list) or []
    if not all(isinstance(v, str) for v in value):
        raise MalformedDecision(f"decision.{key} must be a list of strings")
    return tuple(value)


def _positive(value: object, key: str) -> int | None:
    if value is None:
        return None
    # JSON numbers from Rego may arrive as floats (1024.0); bools are not numbers here.
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 or value != int(value):
        raise MalformedDecision(f"decision.{key} must be a positive integer")
    return int(value)


def _per(value: object) -> str:
    if value is None:
        return "tenant"
    if value not in ("tenant", "subject"):
        raise MalformedDecision("decision.rate_limit.per must be 'tenant' or 'subject'")
    return str(value)


def _upstream(doc: dict[str, Any]) -> tuple[str | None, str | None]:
    """`upstream`: {"organization", "project"}, each an id or null. An unknown key is malformed, so that
    a misspelt field (`organisation`) denies rather than silently bills the default account."""
    if unknown := set(doc) - {"organization", "project"}:
        raise MalformedDecision(f"decision.upstream: unknown field(s) {sorted(unknown)}")
    for name in ("organization", "project"):
        value = doc.get(name)
        if value is not None and not (isinstance(value, str) and UPSTREAM_ID.match(value)):
            raise MalformedDecision(f"decision.upstream.{name} must be an OpenAI {name} id or null")
    return doc.get("organization"), doc.get("project")


def _mask(doc: dict[str, Any]) -> MaskDecision:
    def rule(key: str) -> MaskRule:
        part = _optional(doc, key, dict) or {}
        _known(part, {"entities", "operator"}, f"decision.mask.{key}")
        entities = _strings(part, "entities")
        operator = part.get("operator") or "placeholder"
        if operator not in OPERATORS:
            raise MalformedDecision(f"decision.mask.{key}.operator must be one of {sorted(OPERATORS)}")
        return MaskRule(entities, operator)

    _known(doc, {"request", "response", "restore"}, "decision.mask")
    return MaskDecision(rule("request"), rule("response"), bool(_optional(doc, "restore", bool)))


def _limits(doc: dict[str, Any]) -> dict[str, int]:
    limits = _optional(doc, "limits", dict) or {}
    out: dict[str, int] = {}
    for window, value in limits.items():
        if window not in WINDOWS:
            raise MalformedDecision(f"decision.budget.limits: unknown window {window!r}")
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise MalformedDecision(f"decision.budget.limits.{window} must be a non-negative number")
        out[window] = int(value)
    return out

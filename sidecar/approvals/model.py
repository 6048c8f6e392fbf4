"""Approvals: what one looks like, how a request is bound to it, and the rules every store applies.

An approval is bound to a fingerprint of everything the upstream acts on (a `Binding`: method, canonical
path and query, tenant, forwarded organization and project, content type, and a hash of the body bytes as
forwarded), so the approved call is exactly the one a human saw, and any change needs a new approval. The
lifecycle, the same in both stores:

    pending ──approve──► approved ──claim──► (in use by one call) ──consume──► used
       │  └──deny──► denied              ▲          │ the call failed: release
       └──ttl──► expired                  └──────────┘

- A pending approval expires `ttl` seconds after it was requested; an approved one `ttl` seconds after the
  decision, if it is not used by then. A denied one answers `approval_denied` for `ttl` seconds.
- The fingerprint points at the live approval. Consuming, expiring (once reported) or the end of a denial
  unlinks it, so the next identical request starts a new approval.
- A claim is how "single use" survives concurrency and failures: one call holds the approved approval
  while it is forwarded; success consumes it, failure releases it for the agent's retry. A crashed holder's
  claim lapses after `claim_seconds`.
- Records stay readable (for `list` and the audit trail) for `ttl` seconds after they end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Status = Literal["pending", "approved", "denied", "expired", "used"]
STATUSES: tuple[Status, ...] = ("pending", "approved", "denied", "expired", "used")


class ApprovalError(Exception):
    """An approver acted on an approval that cannot take it (unknown id, already decided, expired)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # approval_not_found | approval_conflict | approval_expired


def new_approval_id() -> str:
    return "apr_" + os.urandom(12).hex()


def body_hash(raw: bytes) -> str:
    """SHA-256 of the body bytes exactly as forwarded (a multipart body with its boundary)."""
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True, slots=True)
class Binding:
    """Everything the upstream acts on, which an approval is bound to."""

    method: str
    path: str  # canonical
    query: str  # canonical, without "?"
    tenant: str | None
    organization: str | None  # OpenAI-Organization sent upstream
    project: str | None  # OpenAI-Project sent upstream
    content_type: str
    body_sha256: str
    # The forwarded headers that change what the upstream does (`openai-beta`, operator-added ones), as a
    # JSON array of sorted [name, value] pairs; not the SDK's per-retry `x-stainless-*` or `user-agent`.
    headers: str = "[]"


_BINDING_FIELDS = tuple(f.name for f in dataclasses.fields(Binding))
_FINGERPRINT_VERSION = b"sidecar-approval-binding/2\0"


def _encode(value: str | None) -> bytes:
    # Length-prefixed, with None distinct from "": no two different tuples can encode the same way.
    # surrogatepass keeps a lone surrogate distinct instead of failing (the encoding is injective on str).
    if value is None:
        return b"\0"
    data = value.encode("utf-8", "surrogatepass")
    return b"\1" + len(data).to_bytes(8, "big") + data


def fingerprint(binding: Binding) -> str:
    digest = hashlib.sha256(_FINGERPRINT_VERSION)
    for name in _BINDING_FIELDS:
        digest.update(_encode(getattr(binding, name)))
    return digest.hexdigest()


@dataclass(slots=True)
class Approval:
    id: str
    fingerprint: str
    tenant: str | None
    sub: str  # who asked (the agent's identity); never an approver of its own request by default
    method: str
    path: str
    operation: str
    model: str | None
    approvers: list[str]  # from the decision: who the policy named as approvers
    created_at: float
    expires_at: float
    status: Status = "pending"
    decided_by: str | None = None
    decided_at: float | None = None
    reason: str | None = None
    used_by: str | None = None  # the request id that consumed it
    claimed_by: str | None = None  # the request id holding it while in flight
    claim_until: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def current(self, now: float) -> Status:
        """The status as of `now`: pending and approved ones lapse into expired."""
        if self.status in ("pending", "approved") and now >= self.expires_at:
            return "expired"
        return self.status

    def claimed(self, now: float) -> bool:
        return self.claimed_by is not None and now < self.claim_until

    def public(self, now: float) -> dict[str, Any]:
        """The view approvers, the webhook and the audit see: identities and the operation, no content."""
        doc = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("claimed_by", "claim_until")}
        doc["status"] = self.current(now)
        return doc

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, blob: bytes | str) -> Approval:
        doc = orjson.loads(blob)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


def decide(
    approval: Approval, verdict: Status, *, by: str, reason: str | None, now: float, ttl: float
) -> None:
    """Apply an approver's verdict, or raise ApprovalError. Both stores call this inside their atomic step."""
    status = approval.current(now)
    if status == "expired":
        raise ApprovalError("approval_expired", f"Approval {approval.id} expired before it was decided.")
    if status != "pending":
        raise ApprovalError("approval_conflict", f"Approval {approval.id} is already {status}.")
    approval.status = verdict
    approval.decided_by, approval.decided_at, approval.reason = by, now, reason
    approval.expires_at = now + ttl  # the time to use an approval, or how long a denial answers


def lookup(approval: Approval | None, now: float) -> tuple[Approval | None, bool]:
    """What a fingerprint's approval means for a new identical request: (approval, unlink the fingerprint).

    An expired approval is reported once and then forgotten; a denial that has run its time is forgotten
    silently; a used one no longer belongs to the fingerprint.
    """
    if approval is None:
        return None, False
    status = approval.current(now)
    if status == "expired":
        approval.status = "expired"
        return approval, True
    if status == "used" or now >= approval.expires_at:  # used, or a denial past its time
        return None, True
    return approval, False


def claim(approval: Approval, request_id: str, now: float, claim_seconds: float) -> bool:
    if approval.current(now) != "approved" or approval.claimed(now):
        return False
    approval.claimed_by, approval.claim_until = request_id, now + claim_seconds
    return True


def finish(approval: Approval, request_id: str, succeeded: bool, now: float) -> bool:
    """End a claim: consume on success (returns True: unlink the fingerprint), release on failure."""
    if approval.claimed_by != request_id:
        return False
    approval.claimed_by, approval.claim_until = None, 0.0
    if succeeded:
        approval.status, approval.used_by = "used", request_id
        approval.extra["used_at"] = now
        return True
    return False


def keep_until(approval: Approval, ttl: float) -> float:
    """When (epoch seconds) a store may drop the record: `ttl` after the last moment it can change."""
    return max(approval.expires_at, approval.claim_until) + ttl

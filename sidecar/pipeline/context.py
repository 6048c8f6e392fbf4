"""What one call accumulates on its way through the stages."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sidecar.documents import Decision, UserDoc
from sidecar.errors import SidecarError

if TYPE_CHECKING:
    from sidecar.approvals.spool import SpooledBody


def new_request_id() -> str:
    return "req_" + os.urandom(12).hex()


@dataclass(frozen=True, slots=True)
class Subject:
    """Who is calling (`input.subject`, docs/policy-input.md)."""

    authenticated: bool
    sub: str | None = None
    tenant: str | None = None
    groups: tuple[str, ...] = ()
    issuer: str | None = None
    # The end user the call is made for (X-End-User-Token, verified): `input.subject.user`.
    user: UserDoc | None = None


ANONYMOUS = Subject(authenticated=False)


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)
class ApprovalTicket:
    """The approval an approval-gated call is bound to (by its request fingerprint)."""

    fingerprint: str
    id: str | None = None
    status: str = "none"  # none | pending | approved | denied | expired (docs/policy-input.md)
    claimed: bool = False  # this call holds the approved approval while it is forwarded
    # A gated upload, read in full to be hashed: forwarded from here, closed by the proxy when the call ends.
    upload: SpooledBody | None = None


@dataclass(slots=True)
class Call:
    id: str
    method: str
    path: str  # the canonical path (sidecar.pipeline.canonical): what the policy judged and the upstream gets
    query: str = ""  # the canonical query string, without "?"
    # OpenAI-Organization / OpenAI-Project sent upstream (settings, or the decision's `upstream`); None: none
    organization: str | None = None
    project: str | None = None
    started: float = field(default_factory=time.perf_counter)
    trace_id: str = ""
    span_id: str = ""
    subject: Subject = ANONYMOUS
    operation: str = "unknown"
    model: str | None = None
    stream: bool = False
    decision: Decision | None = None
    approval: ApprovalTicket | None = None
    pii_found: dict[str, int] = field(default_factory=dict)
    pii_masked: dict[str, int] = field(default_factory=dict)
    estimated_input_tokens: int = 0
    reserved_tokens: int = 0
    streamed: list[str] | None = None  # output text seen in the stream, kept only when a budget needs it
    usage: Usage | None = None
    refunded_tokens: int = 0
    upstream_status: int | None = None
    upstream_latency_ms: float | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: SidecarError | None = None
    outcome: str = "pending"
    fail_open: list[str] = field(default_factory=list)

    def timed(self, stage: str, since: float) -> None:
        self.timings_ms[stage] = round((time.perf_counter() - since) * 1000, 3)

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)

"""The data path: one aiohttp handler that runs the pipeline stages in order (see sidecar.pipeline)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from sidecar.approvals.gate import Approvals
from sidecar.config import Settings
from sidecar.documents import BudgetDoc, Decision, PolicyInput
from sidecar.errors import SidecarError, error_response
from sidecar.logs import raised_at
from sidecar.pipeline.admit import Admission
from sidecar.pipeline.audit import AuditLog
from sidecar.pipeline.authenticate import Authenticator
from sidecar.pipeline.canonical import canonicalize, shown_path
from sidecar.pipeline.classify import classify
from sidecar.pipeline.context import Call, new_request_id
from sidecar.pipeline.decide import Decider, build_input
from sidecar.pipeline.enforce import Enforcer, Plan
from sidecar.pipeline.forward import Forwarder
from sidecar.pipeline.inspect import Payload, PiiScanner, read_payload, summarize
from sidecar.pipeline.settle import HideUsageChunk, Settler
from sidecar.pipeline.stream import BodyTransform, EventTransform, relay
from sidecar.telemetry import Telemetry

log = logging.getLogger(__name__)

CLIENT_GONE = 499  # the status telemetry records for a call whose caller left (no response was sent)
_HTTP_CODES = {408: "request_timeout", 413: "request_too_large", 415: "unsupported_encoding"}
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


def trace_ids(headers: Mapping[str, str]) -> tuple[str, str]:
    """Continue the caller's W3C trace when it sent one; our own span id either way."""
    match = _TRACEPARENT.match(headers.get("traceparent", ""))
    trace_id = match.group(1) if match and match.group(1) != "0" * 32 else os.urandom(16).hex()
    return trace_id, os.urandom(8).hex()


@dataclass(slots=True)
class Transforms:
    """The relay's rewrites for one call (restore and response masking fill these in)."""

    events: list[EventTransform] = field(default_factory=list)
    bodies: list[BodyTransform] = field(default_factory=list)


@dataclass(slots=True)
class Proxy:
    settings: Settings
    authenticator: Authenticator
    decider: Decider
    enforcer: Enforcer
    forwarder: Forwarder
    audit: AuditLog
    revision: Callable[[], str]
    pii: PiiScanner | None = None
    settler: Settler | None = None
    budget_view: Callable[[Call], Awaitable[BudgetDoc]] | None = None
    approvals: Approvals | None = None
    transforms: Callable[[Call, Plan], Transforms] = field(default=lambda call, plan: Transforms())
    telemetry: Telemetry = field(default_factory=Telemetry.disabled)
    admission: Admission = field(init=False)

    def __post_init__(self) -> None:
        self.admission = Admission.of(self.settings)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        call = Call(id=new_request_id(), method=request.method, path="")
        refused: SidecarError | None = None
        headers: Mapping[str, str] = request.headers
        try:  # first: nothing reads a header or the target before both are checked
            canonicalize(request, call)
        except SidecarError as err:
            refused, headers = err, {}
        traced = self.telemetry.start_request(headers, call)  # tracing on: the audit gets its span's ids
        if not call.trace_id:
            call.trace_id, call.span_id = trace_ids(headers)
        status = 500  # unless set below
        try:
            if refused is not None:
                raise refused
            response = await self._run(request, call)
            status = response.status
            return response
        except Exception as exc:  # a refusal, aiohttp's own HTTPException, a caller gone, or a bug
            response = failure_response(request, call, exc)
            status = response.status
            return response
        except asyncio.CancelledError:  # the shutdown stopped waiting for this call
            if call.outcome == "pending":
                call.outcome = "cancelled"
            raise
        finally:
            if call.outcome == "pending":  # never an end record without an outcome
                call.outcome = "forwarded" if call.upstream_status is not None else "error"
            self.audit.end(call, self.revision())  # first: it never raises, whatever fails after it
            self.admission.done(call)
            if call.approval is not None and call.approval.upload is not None:
                call.approval.upload.close()  # a spooled gated upload lives as long as its call
            self.telemetry.end_request(traced, call, status)

    async def _run(self, request: web.Request, call: Call) -> web.StreamResponse:
        tel = self.telemetry
        call.subject = await tel.run("auth", self.authenticator.authenticate(request))
        with tel.stage("classify"):  # the operation, then the body, read once
            call.operation = classify(call.method, call.path)
            payload = await read_payload(request, self.settings, call.operation)
        # A slot (or 503 overloaded: sidecar.pipeline.admit) once the body is in: a caller dribbling its
        # body waits on its own connection, not in a slot that other tenants need.
        await self.admission.enter(call)
        summary = tel.summary(summarize(payload))  # (the server span's gen_ai.request.max_tokens)
        call.model, call.stream = summary.model, summary.stream
        if self.pii is not None and payload.doc is not None:
            await self._scan_pii(call, payload, self.pii, payload.doc)
        with tel.stage("policy"):  # the input (budget snapshot and token count included), the decision
            budget = await self.budget_view(call) if self.budget_view is not None else None
            doc = build_input(call, request, payload, summary, self.settings, budget=budget)
            call.estimated_input_tokens = doc["request"]["estimated_input_tokens"]
            call.decision = decision = await self.decider.decide(call, doc)
        self.forwarder.bind_account(call, request, decision)  # before the approval lookup binds it
        if decision.allow and decision.require_approval and self.approvals is not None:
            decision = await self._approval_step(request, call, payload, doc, self.approvals)
        plan = await tel.run("enforce", self.enforcer.enforce(call, decision, payload, summary))
        ok = False
        try:
            self.admission.done(call)  # checked: the wait for the upstream is not the sidecar's load
            self.audit.start(call, self.revision())
            started = time.perf_counter()
            with tel.upstream(call):  # the CLIENT span: the provider's traceparent names it as parent
                upstream = await self.forwarder.send(request, call, plan)
                call.upstream_status = upstream.status
            call.upstream_latency_ms = round((time.perf_counter() - started) * 1000, 3)
            try:
                transforms = self.transforms(call, plan)
                if plan.hide_usage_chunk:
                    transforms.events.append(HideUsageChunk())
                scrubber = self.forwarder.scrubber  # the provider key never goes back to the caller
                response = await tel.run(
                    "stream",
                    relay(request, upstream, call, transforms.events, transforms.bodies, scrubber=scrubber),
                )
            finally:
                upstream.release()
            ok = upstream.status < 400 and call.outcome == "pending"
            if call.outcome == "pending":
                call.outcome = "forwarded"
            return response
        finally:
            if self.settler is not None:
                await tel.run("settle", self.settler.settle(call, plan.reservation, call.usage, ok))
            if self.approvals is not None:
                # The upstream acted on the request (even if the caller then left): the approval is used.
                accepted = call.upstream_status is not None and call.upstream_status < 400
                await self.approvals.finish(call, accepted)

    async def _approval_step(
        self, request: web.Request, call: Call, payload: Payload, doc: PolicyInput, approvals: Approvals
    ) -> Decision:
        """Only gated calls touch the approval store; the policy is asked again with the approval's status."""
        tel = self.telemetry
        spooling = payload.kind == "stream"  # a gated upload is read in full now: not the sidecar's load
        if spooling:
            self.admission.done(call)
        doc["approval"] = await tel.run("approval", approvals.lookup(call, request, payload))
        if spooling:
            await self.admission.enter(call)
        assert call.decision is not None
        if doc["approval"]["status"] != "none":
            call.decision = await tel.run("policy", self.decider.decide(call, doc))
            self.forwarder.bind_account(call, request, call.decision, again=True)
        return call.decision

    async def _scan_pii(self, call: Call, payload: Payload, scanner: PiiScanner, doc: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            payload.pii = await self.telemetry.run("pii", scanner.scan(call.operation, doc))
            call.pii_found = payload.pii.counts
        except SidecarError:
            if not self.settings.fail_open:
                raise
            call.fail_open.append("pii")  # forwarded unscanned, by SIDECAR_FAIL_MODE=open
        call.timed("pii", started)


def failure_response(request: web.Request, call: Call, exc: Exception) -> web.Response:
    """The OpenAI-shaped answer to a call that failed with `exc`, its outcome and error set on `call`.

    When nothing can be answered (the caller is gone, or part of the response is already out), the
    connection is closed and the response returned is never sent: aiohttp sees a reset and moves on.
    """
    if isinstance(exc, ConnectionError) and _caller_gone(request):
        if call.outcome == "pending":
            call.outcome = "client_disconnected"
        return web.Response(status=CLIENT_GONE)
    if isinstance(exc, SidecarError):
        err = exc
    elif isinstance(exc, web.HTTPException):  # aiohttp's own (client_max_size's 413, ...), reshaped
        err = reshaped(exc)
    else:
        # One line, no payload content: the exception's class and where it was raised, never its text.
        log.error(
            "unexpected error",
            extra={
                "request_id": call.id,
                "operation": call.operation,
                "error": type(exc).__name__,
                "at": raised_at(exc),
            },
        )
        err = SidecarError(
            500, "internal_error", "The sidecar failed unexpectedly; the call was not completed."
        )
    call.error = err
    if call.outcome == "pending":
        call.outcome = "refused" if err.status < 500 else "error"
    if request.writer.output_size > 0 and request.transport is not None:
        request.transport.close()  # the caller sees a truncated response, never a second one
        return web.Response(status=err.status)
    response = error_response(err, call.id)
    if err.status == 408:
        response.force_close()  # a connection whose body stalled is not reused
    return response


def _caller_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def not_found(request: web.Request) -> web.Response:
    shown = shown_path(request.raw_path)  # printable and bounded, whatever the caller sent
    err = SidecarError(404, "unknown_path", f"The sidecar serves the OpenAI API under /v1/, not {shown}.")
    return error_response(err, new_request_id())


def reshaped(exc: web.HTTPException) -> SidecarError:
    """aiohttp's own HTTP error as the sidecar's OpenAI-shaped one."""
    code = "internal_error" if exc.status >= 500 else _HTTP_CODES.get(exc.status, "invalid_request")
    return SidecarError(exc.status, code, exc.reason)


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Whatever the router answers by itself (`OPTIONS *`, `CONNECT host:port`: no route can match such a
    target) is an OpenAI-shaped error with an `x-request-id` too, never aiohttp's plain text."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            return await not_found(request)
        return error_response(reshaped(exc), new_request_id())

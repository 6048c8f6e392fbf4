"""What the proxy calls per request: the SERVER span, a child span and a duration per stage, and the
request metrics. Metrics that already exist as running totals (budget tokens and rejections, approvals
pending) are observed at collection time instead, so they cost the data path nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Meter, NoOpMeter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sidecar.errors import SidecarError
from sidecar.pipeline.classify import classify
from sidecar.pipeline.context import Call
from sidecar.telemetry import attributes
from sidecar.telemetry.hot import HotMetrics

if TYPE_CHECKING:
    from sidecar.budget.gate import Budgets
    from sidecar.documents import Decision
    from sidecar.pipeline.enforce import BudgetGate
    from sidecar.pipeline.inspect import Summary

log = logging.getLogger(__name__)

T = TypeVar("T")
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST  # the Prometheus text format
STAGES = ("auth", "classify", "pii", "policy", "enforce", "budget", "upstream", "stream", "settle")
# Built once for the known stages; any other name works too (e.g. a stage added later).
_SPAN_NAMES = {stage: f"sidecar.{stage}" for stage in STAGES}
_STAGE_ATTRS = {stage: {"stage": stage} for stage in STAGES}
_W3C = TraceContextTextMapPropagator()

ApprovalsPending = Callable[[], int | Mapping[str, int]]


class Telemetry:
    """Spans and metrics for one sidecar. `tracer` is None when tracing is off."""

    def __init__(
        self,
        tracer: Tracer | None,
        meter: Meter,
        *,
        registry: CollectorRegistry | None = None,
        hot: HotMetrics | None = None,
        owned: Sequence[TracerProvider | MeterProvider] = (),
        upstream: tuple[str, int] = ("", 0),
    ) -> None:
        self.tracer = tracer
        self._registry = registry  # what /metrics renders
        self._owned = list(owned)
        self._upstream = {"server.address": upstream[0], "server.port": upstream[1]}
        self._budgets: list[Budgets] = []
        self._approvals: list[ApprovalsPending] = []
        # The per-call metrics (see hot.py); none for a disabled SDK.
        self.hot = hot if hot is not None else HotMetrics(None, None)
        meter.create_observable_counter(
            "sidecar.budget.tokens", [self._tokens], "{token}", "Tokens reserved, used and refunded"
        )
        meter.create_observable_counter(
            "sidecar.budget.rejections", [self._rejections], "{request}", "Calls the budget gate refused"
        )
        meter.create_observable_gauge(
            "sidecar.approvals.pending",
            [self._approvals_pending],
            "{approval}",
            "Approvals awaiting a decision",
        )

    @classmethod
    def disabled(cls) -> Telemetry:
        """No spans and no metrics (OTEL_SDK_DISABLED, and proxies built without telemetry)."""
        return cls(None, NoOpMeter("sidecar"))

    # --- per request ---------------------------------------------------------------------------------

    def start_request(self, headers: Mapping[str, str], call: Call) -> Traced:
        """Open the SERVER span, continuing the caller's W3C trace, and give the audit its ids.

        `headers`: the request's, once sidecar.pipeline.canonical checked them (else none).
        """
        if self.tracer is None:
            return Traced(None, None)
        span = self.tracer.start_span(
            call.method,  # renamed "<method> <operation>" at the end, once the operation is known
            context=_W3C.extract(headers),
            kind=SpanKind.SERVER,
            # Not the path: the caller chooses it, and the operation names the call without ids in it.
            attributes={"http.request.method": call.method, "sidecar.request.id": call.id},
        )
        ids = span.get_span_context()
        call.trace_id, call.span_id = format(ids.trace_id, "032x"), format(ids.span_id, "016x")
        # Current for the rest of the call: stages nest under it, and the forwarder's traceparent.
        return Traced(span, otel_context.attach(trace.set_span_in_context(span)))

    def end_request(self, traced: Traced, call: Call, status: int) -> None:
        err = call.error
        code = err.code if err is not None else ""
        decision = "allow" if err is None else "error" if err.status >= 500 else "deny"
        operation = call.operation
        # Refused before the classify stage ran: by authentication (named by its path), or by
        # sidecar.pipeline.canonical (an ambiguous target is not named: it stays "unknown").
        if operation == "unknown" and not call.subject.authenticated and code != "invalid_request":
            operation = classify(call.method, call.path)
        self.hot.request(operation, decision, code, time.perf_counter() - call.started)
        span = traced.span
        if span is None:
            return
        try:
            if span.is_recording():
                span.update_name(f"{call.method} {operation}")
                span.set_attributes(attributes.request(call, operation, decision, code, status))
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR, code or None))
            span.end()
        finally:
            if traced.token is not None:
                otel_context.detach(traced.token)

    def stage(self, name: str) -> Stage:
        """Time one stage (`sidecar.stage.duration`) and, with tracing on, make it a child span."""
        return Stage(self, name)

    async def run(self, name: str, step: Awaitable[T]) -> T:
        """Await `step` as stage `name` (a coroutine's body runs inside the stage's span)."""
        with Stage(self, name):
            return await step

    def upstream(self, call: Call) -> Stage:
        """The CLIENT span of the provider call: the traceparent sent upstream names it as the parent."""
        attrs = None if self.tracer is None else {**self._upstream, **attributes.genai(call)}
        return Stage(self, "upstream", SpanKind.CLIENT, attrs, call)

    def summary(self, summary: Summary) -> Summary:
        """Put the requested output limit on the current (server) span; returns `summary`."""
        if self.tracer is not None and summary.max_output_tokens is not None:
            trace.get_current_span().set_attribute("gen_ai.request.max_tokens", summary.max_output_tokens)
        return summary

    def traced_budget(self, gate: BudgetGate) -> BudgetGate:
        """The budget gate (which enforce calls) as its own `budget` stage."""
        return _TracedBudget(gate, self)

    # --- observed at collection time ------------------------------------------------------------------

    def observe_budgets(self, budgets: Budgets) -> None:
        """Report the gate's running totals of tokens and rejections."""
        self._budgets.append(budgets)

    def observe_approvals_pending(self, callback: ApprovalsPending) -> None:
        """Report pending approvals: `callback` returns a count, or counts per tenant. It runs on every
        collection (for /metrics, on the event loop), so it must be synchronous and cheap."""
        self._approvals.append(callback)

    def _tokens(self, options: CallbackOptions) -> Iterable[Observation]:
        for budgets in self._budgets:
            for (tenant, model, kind), value in list(budgets.tokens.items()):
                yield Observation(value, {"tenant": tenant, "model": model, "kind": kind})

    def _rejections(self, options: CallbackOptions) -> Iterable[Observation]:
        for budgets in self._budgets:
            for (tenant, code), value in list(budgets.rejections.items()):
                yield Observation(value, {"tenant": tenant, "code": code})

    def _approvals_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        for callback in self._approvals:
            try:
                counts = callback()
            except Exception:  # one broken source must not fail the whole scrape
                log.exception("approvals pending callback failed")
                continue
            if isinstance(counts, int):
                yield Observation(counts)
            else:
                yield from (Observation(n, {"tenant": tenant}) for tenant, n in counts.items())

    def render_metrics(self) -> bytes:
        """This sidecar's metrics in the Prometheus text format (empty when the SDK is disabled)."""
        return generate_latest(self._registry) if self._registry is not None else b""

    def shutdown(self) -> None:
        """Flush and stop the providers this Telemetry made (batched spans are exported now)."""
        for provider in self._owned:
            provider.shutdown()
        self._owned.clear()


class Traced:
    """The SERVER span of one call and the context token that made it current."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span | None, token: Token[Context] | None) -> None:
        self.span, self.token = span, token


class Stage:
    """One stage: a class, not a generator context manager, as it runs ~9 times per call."""

    __slots__ = ("_attrs", "_call", "_kind", "_name", "_span", "_started", "_tel", "_token")

    def __init__(
        self,
        tel: Telemetry,
        name: str,
        kind: SpanKind = SpanKind.INTERNAL,
        attrs: dict[str, Any] | None = None,
        call: Call | None = None,
    ) -> None:
        self._tel, self._name, self._kind, self._attrs, self._call = tel, name, kind, attrs, call
        self._span: Span | None = None
        self._token: Token[Context] | None = None
        self._started = 0.0

    def __enter__(self) -> Stage:
        tracer = self._tel.tracer
        # A child of the current span, unless that one is sampled out (then the whole trace is: its
        # context still reaches the upstream, flagged unsampled, and the stages cost nothing more).
        if tracer is not None and trace.get_current_span().is_recording():
            name = _SPAN_NAMES.get(self._name) or f"sidecar.{self._name}"
            self._span = tracer.start_span(name, kind=self._kind, attributes=self._attrs)
            # Current while it runs, so that nested stages (the budget gate inside enforce) and the
            # forwarder's traceparent find it.
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        self._started = time.perf_counter()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        attrs = _STAGE_ATTRS.get(self._name) or {"stage": self._name}
        self._tel.hot.stage(self._name, time.perf_counter() - self._started, attrs)
        span = self._span
        if span is None:
            return
        if self._token is not None:
            otel_context.detach(self._token)
        if self._call is not None and self._call.upstream_status is not None:
            span.set_attribute("http.response.status_code", self._call.upstream_status)
        if exc is not None:
            # Our error code or the exception's type, never its message, which may quote the request.
            code = exc.code if isinstance(exc, SidecarError) else type(exc).__qualname__
            span.set_attribute("error.type", code)
            if not isinstance(exc, SidecarError) or exc.status >= 500:
                span.set_status(Status(StatusCode.ERROR, code))
        span.end()


class _TracedBudget:
    def __init__(self, gate: BudgetGate, tel: Telemetry) -> None:
        self._gate, self._tel = gate, tel

    async def admit(self, call: Call, decision: Decision, summary: Summary) -> object | None:
        with Stage(self._tel, "budget"):
            return await self._gate.admit(call, decision, summary)

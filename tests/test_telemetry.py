"""OpenTelemetry: the span tree and its attributes (in-memory exporter), W3C trace context upstream and
from the caller, no PII or keys in spans, and the Prometheus /metrics endpoint on the admin port."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import aiohttp
import openai
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sidecar import app, config, telemetry
from sidecar.config import ConfigError
from tests.conftest import ACME_KEY, PROVIDER_KEY, MakeSidecar, Upstream, eventually

EMAIL, PHONE = "maria.gonzalez@example.org", "415-555-0187"
PROMPT = f"Ask the quokka at {EMAIL} or call {PHONE} about Zanzibar."
SECRETS = [EMAIL, PHONE, PROVIDER_KEY, ACME_KEY]
CHILDREN = {"auth", "classify", "pii", "policy", "enforce", "budget", "upstream", "stream", "settle"}
PATTERNS = {"SIDECAR_PII_MODE": "patterns"}  # PII masking without loading spaCy


@dataclass
class Traced:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    async def server_span(self) -> ReadableSpan:
        """The one finished SERVER span (a stream's ends just after the caller has read the last byte)."""

        async def done() -> bool:
            return any(s.kind == SpanKind.SERVER for s in self.spans.get_finished_spans())

        await eventually(done)
        (server,) = [s for s in self.spans.get_finished_spans() if s.kind == SpanKind.SERVER]
        return server

    def children(self, server: ReadableSpan) -> dict[str, ReadableSpan]:
        """The server span's trace's other spans by stage name (each stage once)."""
        assert server.context is not None
        spans = [
            s
            for s in self.spans.get_finished_spans()
            if s.context is not None and s.context.trace_id == server.context.trace_id and s is not server
        ]
        named = {s.name.removeprefix("sidecar."): s for s in spans}
        assert len(named) == len(spans), [s.name for s in spans]
        return named


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[Traced]:
    """Every sidecar this test makes exports spans and metrics in memory (tracing on)."""
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(
        app, "setup_telemetry", partial(telemetry.setup, tracer_provider=provider, metric_readers=[reader])
    )
    yield Traced(exporter, reader)
    provider.shutdown()


def _ids(traceparent: str) -> tuple[str, str]:
    _, trace_id, parent_id, _ = traceparent.split("-")
    return trace_id, parent_id


def _everything_said(spans: list[ReadableSpan]) -> str:
    """Every name, attribute, event and status a back end would receive, as one string."""
    said = [
        {
            "name": s.name,
            "attributes": dict(s.attributes or {}),
            "events": [(e.name, dict(e.attributes or {})) for e in s.events],
            "links": [dict(link.attributes or {}) for link in s.links],
            "status": s.status.description,
        }
        for s in spans
    ]
    return json.dumps(said)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_span_tree_attributes_and_upstream_traceparent(
    make_sidecar: MakeSidecar, upstream: Upstream, traced: Traced, stream: bool
) -> None:
    sc = await make_sidecar(**PATTERNS)
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    if stream:
        async for _ in await client.responses.create(
            model="gpt-4o", input=PROMPT, max_output_tokens=500, stream=True
        ):
            pass
    else:
        await client.responses.create(model="gpt-4o", input=PROMPT, max_output_tokens=500)

    server = await traced.server_span()
    assert server.context is not None and server.parent is None
    assert server.name == "POST responses.create"
    children = traced.children(server)
    assert set(children) == CHILDREN
    assert {s.context.trace_id for s in traced.spans.get_finished_spans() if s.context} == {
        server.context.trace_id
    }
    for name, span in children.items():  # one trace; every stage under the server span
        assert span.parent is not None
        parent = children["enforce"] if name == "budget" else server  # the gate runs inside enforce
        assert parent.context is not None and span.parent.span_id == parent.context.span_id, name
    assert children["upstream"].kind == SpanKind.CLIENT

    attrs = dict(server.attributes or {})
    record = sc.audit()[-1]
    assert attrs["gen_ai.request.model"] == "gpt-4o" and attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai" and attrs["gen_ai.request.max_tokens"] == 500
    assert isinstance(attrs["gen_ai.usage.input_tokens"], int) and attrs["gen_ai.usage.input_tokens"] > 0
    assert isinstance(attrs["gen_ai.usage.output_tokens"], int) and attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["sidecar.decision"] == "allow" and attrs["sidecar.policy.allow"] is True
    assert attrs["sidecar.tenant"] == "acme" and attrs["sidecar.operation"] == "responses.create"
    assert attrs["sidecar.request.id"] == record["decision_id"]
    assert attrs["sidecar.stream"] is stream and attrs["http.response.status_code"] == 200
    assert attrs["sidecar.pii.found.EMAIL_ADDRESS"] == attrs["sidecar.pii.masked.EMAIL_ADDRESS"] == 1
    assert attrs["sidecar.pii.found.PHONE_NUMBER"] == 1
    upstream_attrs = dict(children["upstream"].attributes or {})
    assert upstream_attrs["gen_ai.request.model"] == "gpt-4o"
    assert upstream_attrs["http.response.status_code"] == 200

    # The audit names the server span; the provider's traceparent names the upstream CLIENT span.
    assert (record["trace_id"], record["span_id"]) == (
        format(server.context.trace_id, "032x"),
        format(server.context.span_id, "016x"),
    )
    (seen,) = await upstream.requests()
    client_span = children["upstream"].context
    assert client_span is not None
    assert _ids(seen["headers"]["traceparent"]) == (
        format(server.context.trace_id, "032x"),
        format(client_span.span_id, "016x"),
    )
    assert EMAIL not in seen["body"]  # masking was on: the prompt went upstream with placeholders

    said = _everything_said(traced.spans.get_finished_spans())
    for secret in SECRETS:
        assert secret not in said
    assert "quokka" not in said and "Zanzibar" not in said  # no prompt text either


async def test_incoming_traceparent_is_continued(
    make_sidecar: MakeSidecar, upstream: Upstream, traced: Traced
) -> None:
    sc = await make_sidecar(**PATTERNS)
    await upstream.clear()
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    await client.responses.create(
        model="gpt-4o",
        input="hello",
        extra_headers={"traceparent": f"00-{caller_trace}-{caller_span}-01", "tracestate": "vendor=1"},
    )
    server = await traced.server_span()
    assert server.context is not None and server.parent is not None
    assert format(server.context.trace_id, "032x") == caller_trace
    assert format(server.parent.span_id, "016x") == caller_span and server.parent.is_remote
    (seen,) = await upstream.requests()
    assert _ids(seen["headers"]["traceparent"])[0] == caller_trace
    assert seen["headers"]["tracestate"] == "vendor=1"
    assert sc.audit()[-1]["trace_id"] == caller_trace


async def test_unsampled_caller_trace_is_continued_without_spans(
    make_sidecar: MakeSidecar, upstream: Upstream, traced: Traced
) -> None:
    """A caller that did not sample its trace gets none recorded here, but the trace still goes on."""
    sc = await make_sidecar(**PATTERNS)
    await upstream.clear()
    caller_trace = "0af7651916cd43dd8448eb211c80319c"
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    await client.responses.create(
        model="gpt-4o", input="hello", extra_headers={"traceparent": f"00-{caller_trace}-b7ad6b7169203331-00"}
    )
    (seen,) = await upstream.requests()
    trace_id, parent_id = _ids(seen["headers"]["traceparent"])
    record = sc.audit()[-1]
    assert seen["headers"]["traceparent"].endswith("-00") and trace_id == record["trace_id"] == caller_trace
    assert parent_id == record["span_id"]  # the (unrecorded) server span
    assert traced.spans.get_finished_spans() == ()


async def test_denied_call_carries_the_decision(
    make_sidecar: MakeSidecar, upstream: Upstream, traced: Traced
) -> None:
    sc = await make_sidecar(**PATTERNS)
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        await client.responses.create(model="o1-pro", input="hello")
    server = await traced.server_span()
    attrs = dict(server.attributes or {})
    assert attrs["sidecar.decision"] == "deny" and attrs["sidecar.code"] == "policy_violation"
    assert attrs["sidecar.policy.allow"] is False and attrs["http.response.status_code"] == 403
    assert attrs["error.type"] == "policy_violation" and attrs["gen_ai.request.model"] == "o1-pro"
    children = traced.children(server)
    assert "upstream" not in children and "stream" not in children
    assert dict(children["enforce"].attributes or {})["error.type"] == "policy_violation"
    assert await upstream.requests() == []

    data = traced.metrics.get_metrics_data()
    assert data is not None
    points = [
        dict(p.attributes or {})
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "sidecar.requests"
        for p in m.data.data_points
    ]
    assert {"operation": "responses.create", "decision": "deny", "code": "policy_violation"} in points


async def test_metrics_endpoint(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    """Default telemetry (no OTEL_* set): no tracing, but metrics, per sidecar, on the admin port."""
    sc, other = await make_sidecar(**PATTERNS), await make_sidecar(**PATTERNS)
    assert sc.sidecar.proxy.telemetry.tracer is None
    sc.sidecar.proxy.telemetry.observe_approvals_pending(lambda: {"acme": 2})
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    await client.responses.create(model="gpt-4o", input=PROMPT)
    with pytest.raises(openai.PermissionDeniedError):
        await client.responses.create(model="o1-pro", input="hello")

    async with aiohttp.ClientSession() as session:
        async with session.get(sc.admin + "/metrics") as resp:
            assert resp.status == 200 and resp.content_type == "text/plain"
            text = await resp.text()
        async with session.get(other.admin + "/metrics") as resp:
            other_text = await resp.text()
    expected = [
        'sidecar_requests_total{code="",decision="allow",operation="responses.create"} 1.0',
        'sidecar_requests_total{code="policy_violation",decision="deny",operation="responses.create"} 1.0',
        'sidecar_stage_duration_seconds_count{stage="policy"} 2.0',
        'sidecar_stage_duration_seconds_count{stage="upstream"} 1.0',
        'sidecar_request_duration_seconds_count{decision="allow",operation="responses.create"} 1.0',
        'sidecar_budget_tokens_total{kind="reserved",model="gpt-4o",tenant="acme"}',
        'sidecar_budget_tokens_total{kind="used",model="gpt-4o",tenant="acme"}',
        'sidecar_budget_tokens_total{kind="refunded",model="gpt-4o",tenant="acme"}',
        'sidecar_approvals_pending{tenant="acme"} 2.0',
    ]
    for line in expected:
        assert line in text, line
    assert "sidecar_requests_total{" not in other_text  # each sidecar has its own registry
    # No tracing: the audit keeps deriving its ids, and the upstream still gets a traceparent.
    record = sc.audit()[-1]
    assert len(record["trace_id"]) == 32 and len(record["span_id"]) == 16


async def test_budget_rejections_are_counted(make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(**PATTERNS)
    budgets = sc.sidecar.budgets
    assert budgets is not None
    budgets.rejections[("acme", "budget_exceeded")] += 3  # the gate's own hook, as a refusal leaves it
    async with aiohttp.ClientSession() as session, session.get(sc.admin + "/metrics") as resp:
        text = await resp.text()
    assert 'sidecar_budget_rejections_total{code="budget_exceeded",tenant="acme"} 3.0' in text


SETTINGS = config.load(environ={}, require_keys=False)


def test_tracing_is_off_unless_an_exporter_is_configured() -> None:
    assert telemetry.setup(SETTINGS, {}).tracer is None
    assert telemetry.setup(SETTINGS, {"OTEL_TRACES_EXPORTER": "none"}).tracer is None
    console = telemetry.setup(SETTINGS, {"OTEL_TRACES_EXPORTER": "console"})
    assert console.tracer is not None
    console.shutdown()
    disabled = telemetry.setup(SETTINGS, {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})
    assert disabled.tracer is None and disabled.render_metrics() == b""
    with pytest.raises(ConfigError, match="zipkin"):
        telemetry.setup(SETTINGS, {"OTEL_TRACES_EXPORTER": "zipkin"})


def test_metrics_are_on_unless_turned_off() -> None:
    for environ, served in (({}, True), ({"OTEL_METRICS_EXPORTER": "none"}, False)):
        tel = telemetry.setup(SETTINGS, environ)
        with tel.stage("auth"):
            pass
        assert (b'sidecar_stage_duration_seconds_count{stage="auth"} 1.0' in tel.render_metrics()) is served


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "otlp"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
        {"OTEL_METRICS_EXPORTER": "otlp"},
    ],
)
def test_missing_otlp_exporter_fails_start_up_with_a_hint(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'sidecar\[otlp\]'"):
        telemetry.setup(SETTINGS, environ)


def test_span_attributes_never_hold_the_subject_or_user() -> None:
    """The attribute builder sees the whole Call: it must pick counts and labels, not identities."""
    from sidecar.pipeline.context import Call, Subject
    from sidecar.telemetry import attributes

    call = Call(id="req_1", method="POST", path="/v1/responses", operation="responses.create")
    call.subject = Subject(True, sub="alice@example.org", tenant="acme", user=None)
    call.pii_found = {"EMAIL_ADDRESS": 2}
    attrs = attributes.request(call, call.operation, "allow", "", 200)
    assert "alice@example.org" not in json.dumps(attrs)
    assert attrs["sidecar.pii.found.EMAIL_ADDRESS"] == 2

"""The per-call metrics (requests, request duration, stage durations), kept cheap.

They are recorded ~11 times a call. An OpenTelemetry SDK measurement costs 6-8 µs here, a
prometheus_client one under 1 µs (label children are resolved once), so /metrics is fed by
prometheus_client directly. The same measurements also go to OpenTelemetry instruments, but only when a
push reader (OTEL_METRICS_EXPORTER=otlp|console, or a test's in-memory reader) would read them: only
then is their cost paid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.metrics import Meter
from prometheus_client import CollectorRegistry, Counter, Histogram

_REQUESTS_HELP = "Calls by operation, decision (allow, deny, error) and code"
# Seconds: from a decision-cache hit (tens of µs) to a long streamed generation.
BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


class HotMetrics:
    def __init__(self, registry: CollectorRegistry | None, meter: Meter | None) -> None:
        self._requests = self._duration = self._stages = None
        if registry is not None:
            # Label names in sorted order, as OpenTelemetry's Prometheus exporter writes them.
            self._requests = Counter(
                "sidecar_requests",
                _REQUESTS_HELP,
                ["code", "decision", "operation"],
                registry=registry,
            )
            self._duration = Histogram(
                "sidecar_request_duration_seconds",
                "Whole calls, streams included",
                ["decision", "operation"],
                registry=registry,
                buckets=BUCKETS,
            )
            self._stages = Histogram(
                "sidecar_stage_duration_seconds",
                "Time spent in each pipeline stage",
                ["stage"],
                registry=registry,
                buckets=BUCKETS,
            )
        self._children: dict[str, Any] = {}
        self._otel = None
        if meter is not None:
            self._otel = (
                meter.create_counter(
                    "sidecar.requests", "{request}", _REQUESTS_HELP
                ),
                meter.create_histogram(
                    "sidecar.request.duration", "s", "Whole calls, streams included",
                    explicit_bucket_boundaries_advisory=BUCKETS,
                ),
                meter.create_histogram(
                    "sidecar.stage.duration", "s", "Time spent in each pipeline stage",
                    explicit_bucket_boundaries_advisory=BUCKETS,
                ),
            )  # fmt: skip

    def stage(self, name: str, seconds: float, attrs: Mapping[str, str]) -> None:
        if self._stages is not None:
            child = self._children.get(name)
            if child is None:
                child = self._children[name] = self._stages.labels(name)
            child.observe(seconds)
        if self._otel is not None:
            self._otel[2].record(seconds, attrs)

    def request(self, operation: str, decision: str, code: str, seconds: float) -> None:
        if self._requests is not None and self._duration is not None:
            self._requests.labels(code, decision, operation).inc()
            self._duration.labels(decision, operation).observe(seconds)
        if self._otel is not None:
            self._otel[0].add(1, {"operation": operation, "decision": decision, "code": code})
            self._otel[1].record(seconds, {"operation": operation, "decision": decision})

"""Tracer and meter providers from the standard OTEL_* variables.

- `OTEL_SDK_DISABLED=true`: no spans, no metrics (`/metrics` answers empty).
- `OTEL_TRACES_EXPORTER`: `otlp`, `console` or `none` (a comma-separated list). Unset, it is `otlp` when
  `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, else `none`: unlike the
  SDK's own default, a sidecar with nowhere to send spans makes none (and pays nothing for them).
- `OTEL_METRICS_EXPORTER`: `/metrics` on the admin port is always served unless this is `none`;
  `otlp` or `console` push as well.
- OTLP goes over `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf` by default, or `grpc`); the exporter
  package is optional and its absence stops start-up with an install hint.
- The rest (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, the OTLP endpoint,
  headers and timeouts, `OTEL_BSP_*`) is read by the SDK and the exporters themselves.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Meter, NoOpMeter
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from prometheus_client import CollectorRegistry

from sidecar import __version__
from sidecar.config import ConfigError, Settings
from sidecar.telemetry.core import Telemetry
from sidecar.telemetry.hot import HotMetrics

_HINT = "install it with `pip install 'sidecar[otlp]'` (or opentelemetry-exporter-otlp-proto-{0})"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _names(value: str | None) -> list[str]:
    return [n.strip().lower() for n in (value or "").split(",") if n.strip()]


def _otlp(signal: str, environ: Mapping[str, str]) -> Any:
    """The OTLP exporter for `signal` ("trace" or "metric") over the configured protocol."""
    protocol = (
        environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}S_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    flavour = "grpc" if protocol == "grpc" else "http"
    try:
        if flavour == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc import metric_exporter as grpc_metrics
            from opentelemetry.exporter.otlp.proto.grpc import trace_exporter as grpc_traces

            return grpc_traces.OTLPSpanExporter() if signal == "trace" else grpc_metrics.OTLPMetricExporter()
        from opentelemetry.exporter.otlp.proto.http import metric_exporter as http_metrics
        from opentelemetry.exporter.otlp.proto.http import trace_exporter as http_traces

        return http_traces.OTLPSpanExporter() if signal == "trace" else http_metrics.OTLPMetricExporter()
    except ImportError as exc:
        raise ConfigError(
            f"OTLP export ({protocol}) is configured but its package is missing ({exc.name}): "
            + _HINT.format(flavour)
        ) from None


def span_processors(environ: Mapping[str, str]) -> list[SpanProcessor]:
    names = _names(environ.get("OTEL_TRACES_EXPORTER"))
    if not names and (
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        names = ["otlp"]
    processors: list[SpanProcessor] = []
    for name in names:
        if name == "otlp":
            processors.append(BatchSpanProcessor(_otlp("trace", environ)))
        elif name == "console":  # for debugging: each span printed as it ends
            processors.append(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif name != "none":
            raise ConfigError(f"OTEL_TRACES_EXPORTER: {name!r} is not supported; use otlp, console or none")
    return processors


def push_metric_readers(environ: Mapping[str, str]) -> list[MetricReader]:
    """Readers for OTEL_METRICS_EXPORTER beyond `prometheus`, which /metrics always serves."""
    readers: list[MetricReader] = []
    for name in _names(environ.get("OTEL_METRICS_EXPORTER")):
        if name == "otlp":
            readers.append(PeriodicExportingMetricReader(_otlp("metric", environ)))
        elif name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        elif name not in {"prometheus", "none"}:
            raise ConfigError(f"OTEL_METRICS_EXPORTER: {name!r} is not supported; use prometheus or otlp")
    return readers


def resource() -> Resource:
    """OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES as the SDK reads them, `sidecar` by default."""
    res = Resource.create({"service.version": __version__})
    if str(res.attributes.get("service.name", "")).startswith("unknown_service"):
        res = res.merge(Resource({"service.name": "sidecar"}))
    return res


def setup(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    *,
    tracer_provider: TracerProvider | None = None,
    metric_readers: Sequence[MetricReader] = (),
) -> Telemetry:
    """This sidecar's telemetry. Tests pass their own tracer provider (which turns tracing on) and extra
    metric readers. /metrics has its own Prometheus registry, so several sidecars can share a process."""
    env = os.environ if environ is None else environ
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        return Telemetry.disabled()
    owned: list[TracerProvider | MeterProvider] = []
    res = resource()
    if tracer_provider is None and (processors := span_processors(env)):
        tracer_provider = TracerProvider(resource=res, shutdown_on_exit=False)
        for processor in processors:
            tracer_provider.add_span_processor(processor)
        owned.append(tracer_provider)
    readers = [*push_metric_readers(env), *metric_readers]
    pushed = bool(readers)  # someone reads the OpenTelemetry instruments themselves (OTLP, console, tests)
    registry = None
    if _names(env.get("OTEL_METRICS_EXPORTER")) != ["none"]:
        registry = CollectorRegistry()
        readers.append(PrometheusMetricReader(scope_info_enabled=False, registry=registry))
    meter: Meter = NoOpMeter("sidecar")  # no reader at all: recording would be pure cost
    if readers:
        # Exemplars cost ~2 µs a measurement while a span is current, and the Prometheus text format
        # drops them: off unless OTEL_METRICS_EXEMPLAR_FILTER asks for them.
        exemplars = None if env.get("OTEL_METRICS_EXEMPLAR_FILTER") else AlwaysOffExemplarFilter()
        meter_provider = MeterProvider(
            readers, resource=res, exemplar_filter=exemplars, shutdown_on_exit=False
        )
        owned.append(meter_provider)
        meter = meter_provider.get_meter("sidecar", __version__)
    upstream = urlsplit(settings.upstream_url)
    return Telemetry(
        tracer_provider.get_tracer("sidecar", __version__) if tracer_provider is not None else None,
        meter,
        registry=registry,
        # The per-call metrics: OpenTelemetry instruments when pushed (the Prometheus reader then serves
        # them too), else prometheus_client straight into /metrics' registry, 8x cheaper a measurement.
        hot=HotMetrics(None, meter) if pushed else HotMetrics(registry, None),
        owned=owned,
        upstream=(upstream.hostname or "", upstream.port or (443 if upstream.scheme == "https" else 80)),
    )

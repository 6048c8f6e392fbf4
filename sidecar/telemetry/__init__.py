"""OpenTelemetry for the data path: a SERVER span per call with a child span per stage, GenAI
semantic-convention attributes, W3C `traceparent` upstream, and metrics in Prometheus format on the
admin port (`/metrics`).

- `providers.setup` reads the standard OTEL_* variables and builds this sidecar's own providers. They
  are never OpenTelemetry's global set-once providers, so several sidecars (and tests with in-memory
  exporters) live side by side in one process.
- `core.Telemetry` is what the proxy calls: `start_request` / `end_request`, `stage` / `run` per stage.

Cost: tracing is on only when a span exporter is configured; otherwise no span object is ever made and
the audit's trace ids come from the caller's `traceparent` as before. Metrics are always recorded.
Attributes carry names, counts, codes and ids only: never prompt text, PII values, the provider key or
the caller's credential.
"""

from sidecar.telemetry.core import METRICS_CONTENT_TYPE, STAGES, Telemetry
from sidecar.telemetry.providers import setup

__all__ = ["METRICS_CONTENT_TYPE", "STAGES", "Telemetry", "setup"]

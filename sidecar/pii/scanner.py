"""The PII capability's pipeline pieces: the inspect stage's scanner, the enforce stage's masker, and the
relay transforms that restore placeholders."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sidecar.config import Settings
from sidecar.documents import Decision
from sidecar.errors import SidecarError
from sidecar.pii.engine import PiiConfig, Span
from sidecar.pii.fields import Fields, collect
from sidecar.pii.mask import Placeholders, mask_fields
from sidecar.pii.pool import DetectorPool, SpanCache
from sidecar.pii.restore import Restorer
from sidecar.pii.transforms import ChatRestore, JsonRestore, ResponsesRestore
from sidecar.pipeline.context import Call
from sidecar.pipeline.enforce import Plan
from sidecar.pipeline.inspect import Payload
from sidecar.pipeline.stream import EventTransform
from sidecar.proxy import Transforms

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PiiScan:
    fields: Fields
    spans: list[tuple[Span, ...]]
    counts: dict[str, int] = field(default_factory=dict)


class PresidioScanner:
    def __init__(self, settings: Settings) -> None:
        self.config = PiiConfig.load(
            settings.pii_mode, settings.pii_score_threshold, settings.pii_config or None
        )
        self._settings = settings
        self.pool = DetectorPool.shared(self.config, settings.pii_workers, settings.pii_max_tasks_per_child)
        self.cache = SpanCache(self.config.fingerprint(), settings.pii_cache_entries)

    async def start(self) -> None:
        await self.pool.warm_up()

    async def scan(self, operation: str, doc: dict[str, Any]) -> PiiScan:
        fields = collect(operation, doc)
        keys = [self.cache.key(f.text) for f in fields.fragments]
        found: dict[bytes, tuple[Span, ...]] = {}
        todo: dict[bytes, str] = {}
        for key, fragment in zip(keys, fields.fragments, strict=True):
            if key in found or key in todo:
                continue
            cached = self.cache.get(key)
            if cached is None:
                todo[key] = fragment.text
            else:
                found[key] = cached
        if todo:
            try:
                results = await asyncio.wait_for(
                    self.pool.analyze(list(todo.values())), self._settings.pii_timeout
                )
            except Exception as exc:  # a broken worker, a timeout: the detector could not answer
                log.error("PII detection failed", extra={"error": type(exc).__name__})
                raise SidecarError(503, "pii_unavailable", "PII detection is unavailable.") from None
            for key, result in zip(todo, results, strict=True):
                self.cache.put(key, result)
                found[key] = tuple(result)
        per_fragment = [found[key] for key in keys]
        counts: Counter[str] = Counter(s.entity for spans in per_fragment for s in spans)
        return PiiScan(fields, per_fragment, dict(counts))


class PresidioMasker:
    async def mask(self, call: Call, decision: Decision, plan: Plan, payload: Payload) -> None:
        scan = payload.pii
        if not isinstance(scan, PiiScan):
            return
        placeholders = Placeholders()
        masked = mask_fields(scan.fields, scan.spans, decision.mask.request, placeholders)
        call.pii_masked = dict(masked)
        if decision.mask.restore and placeholders:
            plan.restore = placeholders.originals


def restore_transforms(call: Call, plan: Plan) -> Transforms:
    if not plan.restore:
        return Transforms()
    restorer = Restorer(plan.restore)
    stream: EventTransform = (
        ChatRestore(restorer) if call.operation == "chat.completions.create" else ResponsesRestore(restorer)
    )
    return Transforms(events=[stream], body=JsonRestore(restorer))

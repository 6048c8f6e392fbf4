"""The PII capability's pipeline pieces: the inspect stage's scanner, the enforce stage's masker, and the
relay transforms that restore placeholders."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sidecar.config import Settings
from sidecar.documents import Decision
from sidecar.errors import SidecarError
from sidecar.pii.cache import SpanCache
from sidecar.pii.engine import PiiConfig, Span
from sidecar.pii.fields import Fields, collect
from sidecar.pii.mask import Placeholders, mask_fields
from sidecar.pii.pool import DetectorPool, PiiUnavailable, unavailable
from sidecar.pii.respond import ChatStreamMask, Detect, JsonResponseMask, ResponsesStreamMask
from sidecar.pii.restore import Restorer
from sidecar.pii.transforms import ChatRestore, JsonRestore, ResponsesRestore
from sidecar.pipeline.context import Call
from sidecar.pipeline.enforce import Plan
from sidecar.pipeline.inspect import Payload
from sidecar.proxy import Transforms

log = logging.getLogger(__name__)

# Operations whose responses carry model-written text.
_MODEL_CALLS = frozenset({"responses.create", "chat.completions.create", "completions.create"})


@dataclass(slots=True)
class PiiScan:
    fields: Fields
    spans: list[tuple[Span, ...]]
    counts: dict[str, int] = field(default_factory=dict)


class PresidioScanner:
    def __init__(self, settings: Settings) -> None:
        self.config = PiiConfig.load(
            settings.pii_mode,
            settings.pii_score_threshold,
            settings.pii_config or None,
            settings.pii_max_chunk_chars,
        )
        self._settings = settings
        self.pool = DetectorPool.shared(
            self.config,
            workers=settings.pii_workers,
            max_tasks_per_child=settings.pii_max_tasks_per_child,
            memory_mb=settings.pii_worker_memory_mb,
            backoff_max=settings.pii_restart_backoff_max,
            hung_after=3 * settings.pii_timeout,  # a task this long past its timeout has a hung worker
        )
        self.cache = SpanCache(self.config.fingerprint(), settings.pii_cache_entries)

    async def start(self) -> None:
        await self.pool.warm_up()

    async def detect(self, texts: list[str]) -> list[tuple[Span, ...]]:
        """Spans per text: cached results where the text was seen before, the pool for the rest."""
        keys = [self.cache.key(text) for text in texts]
        found: dict[bytes, tuple[Span, ...]] = {}
        todo: dict[bytes, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key in found or key in todo:
                continue
            cached = self.cache.get(key)
            if cached is None:
                todo[key] = text
            else:
                found[key] = cached
        if todo:
            try:
                results = await self.pool.analyze(list(todo.values()), self._settings.pii_timeout)
            except PiiUnavailable as exc:  # the pool says why (a worker died, it is restarting, ...)
                log.error("PII detection failed", extra={"reason": exc.reason})
                raise
            except TimeoutError:
                log.error("PII detection failed", extra={"reason": "timeout"})
                raise unavailable("timeout", "PII detection did not finish in time.") from None
            except Exception as exc:  # the detector itself failed
                log.error(
                    "PII detection failed", extra={"reason": "detector_error", "error": type(exc).__name__}
                )
                raise unavailable("detector_error", "PII detection is unavailable.") from None
            for key, result in zip(todo, results, strict=True):
                self.cache.put(key, result)
                found[key] = tuple(result)
        return [found[key] for key in keys]

    async def scan(self, operation: str, doc: dict[str, Any]) -> PiiScan:
        fields = collect(operation, doc)
        per_fragment = await self.detect([f.text for f in fields.fragments])
        counts: Counter[str] = Counter(s.entity for spans in per_fragment for s in spans)
        return PiiScan(fields, per_fragment, dict(counts))

    def transforms(self, call: Call, plan: Plan) -> Transforms:
        """Restore first, then response masking: the policy's response rule has the last word."""
        chat = call.operation == "chat.completions.create"
        out = Transforms()
        if plan.restore:
            restorer = Restorer(plan.restore)
            out.events.append(ChatRestore(restorer) if chat else ResponsesRestore(restorer))
            out.bodies.append(JsonRestore(restorer))
        rule = call.decision.mask.response if call.decision is not None else None
        if rule is not None and rule.entities and call.operation in _MODEL_CALLS:
            detect = self._response_detector(call)
            out.events.append(ChatStreamMask(detect, rule) if chat else ResponsesStreamMask(detect, rule))
            out.bodies.append(JsonResponseMask(detect, rule))
        return out

    def _response_detector(self, call: Call) -> Detect:
        """Detection for response masking, following the fail mode like the request scan does."""
        if not self._settings.fail_open:
            return self.detect

        async def detect(texts: list[str]) -> list[tuple[Span, ...]]:
            try:
                return await self.detect(texts)
            except SidecarError:
                if "pii" not in call.fail_open:
                    call.fail_open.append("pii")
                return [() for _ in texts]

        return detect


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

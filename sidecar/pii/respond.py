"""Response masking (`mask.response`): the decision's entities are masked in what the model sends back.

JSON bodies are scanned whole. Streams are masked per text: each delta channel keeps a window, has it
analysed off the loop, and releases only the text that no entity can still extend into (everything but
the last `HOLD` characters, and never through a detected span). A text's end flushes the rest, and the
final objects (`*.done`, `response.completed`) are masked whole, so what the Agents SDK builds its
result from is masked exactly like the deltas were.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from sidecar.documents import MaskRule
from sidecar.pii.engine import Span
from sidecar.pii.fields import collect_output
from sidecar.pii.mask import Placeholders, apply, mask_fields
from sidecar.pii.transforms import DELTA_FIELDS, DONE_OF, event_bytes, event_name
from sidecar.pipeline.stream import event_data

Detect = Callable[[list[str]], Awaitable[list[tuple[Span, ...]]]]

WINDOW = 512  # characters gathered before a window is analysed
HOLD = 128  # characters always held back: longer than the entities a window could cut in half


class _Window:
    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = ""

    async def feed(self, piece: str, detect: Detect, rule: MaskRule, placeholders: Placeholders) -> str:
        self._buffer += piece
        if len(self._buffer) < WINDOW:
            return ""
        (spans,) = await detect([self._buffer])
        chosen = [s for s in spans if s.entity in rule.entities]
        cut = len(self._buffer) - HOLD
        for span in chosen:
            if span.start < cut < span.end:
                cut = span.start
        released, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return apply(released, [s for s in chosen if s.end <= cut], rule.operator, placeholders)

    async def flush(self, detect: Detect, rule: MaskRule, placeholders: Placeholders) -> str:
        rest, self._buffer = self._buffer, ""
        return await mask_text(rest, detect, rule, placeholders) if rest else ""


async def mask_text(text: str, detect: Detect, rule: MaskRule, placeholders: Placeholders) -> str:
    (spans,) = await detect([text])
    return apply(text, [s for s in spans if s.entity in rule.entities], rule.operator, placeholders)


async def mask_document(doc: Any, detect: Detect, rule: MaskRule, placeholders: Placeholders) -> Any:
    if not isinstance(doc, dict):
        return doc
    fields = collect_output(doc)
    if fields.fragments:
        spans = await detect([f.text for f in fields.fragments])
        mask_fields(fields, spans, rule, placeholders)
    return doc


class JsonResponseMask:
    def __init__(self, detect: Detect, rule: MaskRule) -> None:
        self._detect, self._rule, self._placeholders = detect, rule, Placeholders()

    async def body(self, body: bytes) -> bytes:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        return orjson.dumps(await mask_document(doc, self._detect, self._rule, self._placeholders))


class ResponsesStreamMask:
    def __init__(self, detect: Detect, rule: MaskRule) -> None:
        self._detect, self._rule, self._placeholders = detect, rule, Placeholders()
        self._windows: dict[tuple[Any, ...], _Window] = {}
        self._last: dict[tuple[Any, ...], dict[str, Any]] = {}

    def _key(self, data: dict[str, Any], kind: str) -> tuple[Any, ...]:
        return (kind, data.get("item_id"), data.get("output_index"), data.get("content_index"))

    async def event(self, event: bytes) -> bytes:
        data = event_data(event)
        if not isinstance(data, dict):
            return event
        kind = data.get("type")
        args = (self._detect, self._rule, self._placeholders)
        if kind in DELTA_FIELDS and isinstance(data.get("delta"), str):
            key = self._key(data, kind)
            window = self._windows.setdefault(key, _Window())
            self._last[key] = data
            data = {**data, "delta": await window.feed(data["delta"], *args)}
            return event_bytes(kind, data) if data["delta"] else b""
        prefix = b""
        if kind in DONE_OF:
            key = self._key(data, DONE_OF[kind])
            pending = self._windows.pop(key) if key in self._windows else None
            tail = await pending.flush(*args) if pending is not None else ""
            if tail:
                prefix = event_bytes(DONE_OF[kind], {**self._last[key], "delta": tail})
            field = DELTA_FIELDS[DONE_OF[kind]][0]
            if isinstance(data.get(field), str):
                data[field] = await mask_text(data[field], *args)
            return prefix + event_bytes(event_name(event), data)
        if kind in ("response.output_item.done", "response.content_part.done"):
            wrapper = {"output": [data["item"]]} if "item" in data else None
            if wrapper is not None:
                await mask_document(wrapper, *args)
            elif isinstance(data.get("part"), dict) and isinstance(data["part"].get("text"), str):
                data["part"]["text"] = await mask_text(data["part"]["text"], *args)
            return event_bytes(event_name(event), data)
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            await mask_document(data.get("response"), *args)
            return event_bytes(event_name(event), data)
        return event

    async def finish(self) -> bytes:
        return b""


class ChatStreamMask:
    def __init__(self, detect: Detect, rule: MaskRule) -> None:
        self._detect, self._rule, self._placeholders = detect, rule, Placeholders()
        self._windows: dict[tuple[Any, ...], _Window] = {}

    async def event(self, event: bytes) -> bytes:
        data = event_data(event)
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            return event
        args = (self._detect, self._rule, self._placeholders)
        for choice in data["choices"]:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            index = choice.get("index", 0)
            for field in ("content", "refusal"):
                if isinstance(delta.get(field), str):
                    window = self._windows.setdefault((index, field), _Window())
                    delta[field] = await window.feed(delta[field], *args)
            if choice.get("finish_reason") is not None:
                for key in [k for k in self._windows if k[0] == index]:
                    tail = await self._windows.pop(key).flush(*args)
                    if tail:
                        delta[key[1]] = (delta.get(key[1]) or "") + tail
        return event_bytes(None, data)

    async def finish(self) -> bytes:
        return b""

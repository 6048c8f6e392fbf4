"""The relay's PII transforms: restore placeholders in streamed events and in JSON bodies.

Responses streams: `*.delta` events go through a per-text `Channel`; when a text ends (its `*.done`
event) any held-back tail is released in a delta of its own just before it, so the deltas still add up to
the final text; every other event (`*.done`, `output_item.*`, `response.completed` — the object the
Agents SDK builds its result from) is restored whole. Chat streams: `choices[].delta` content, refusal and
tool-call argument pieces go through channels, flushed into the chunk that carries `finish_reason`.
"""

from __future__ import annotations

from typing import Any

import orjson

from sidecar.pii.restore import Channel, Restorer
from sidecar.pipeline.stream import event_data

DELTA_FIELDS = {
    "response.output_text.delta": ("text", False),
    "response.refusal.delta": ("refusal", False),
    "response.function_call_arguments.delta": ("arguments", True),
    "response.custom_tool_call_input.delta": ("input", False),
    "response.reasoning_summary_text.delta": ("summary", False),
}
DONE_OF = {
    "response.output_text.done": "response.output_text.delta",
    "response.refusal.done": "response.refusal.delta",
    "response.function_call_arguments.done": "response.function_call_arguments.delta",
    "response.custom_tool_call_input.done": "response.custom_tool_call_input.delta",
    "response.reasoning_summary_text.done": "response.reasoning_summary_text.delta",
}


def event_bytes(name: str | None, data: Any) -> bytes:
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def event_name(event: bytes) -> str | None:
    for line in event.splitlines():
        if line.startswith(b"event:"):
            return line[6:].strip().decode()
    return None


def _key(data: dict[str, Any], delta_type: str) -> tuple[Any, ...]:
    return (delta_type, data.get("item_id"), data.get("output_index"), data.get("content_index"),
            data.get("summary_index"))  # fmt: skip


class ResponsesRestore:
    def __init__(self, restorer: Restorer) -> None:
        self._restorer = restorer
        self._channels: dict[tuple[Any, ...], Channel] = {}
        self._last_delta: dict[tuple[Any, ...], dict[str, Any]] = {}

    async def event(self, event: bytes) -> bytes:
        data = event_data(event)
        if not isinstance(data, dict):
            return event
        kind = data.get("type")
        name = event_name(event)
        if kind in DELTA_FIELDS and isinstance(data.get("delta"), str):
            key = _key(data, kind)
            channel = self._channels.get(key)
            if channel is None:
                channel = self._channels[key] = Channel(self._restorer, DELTA_FIELDS[kind][1])
            data["delta"] = channel.feed(data["delta"])
            self._last_delta[key] = data
            return event_bytes(name, data)
        prefix = b""
        if kind in DONE_OF:
            key = _key(data, DONE_OF[kind])
            channel = self._channels.pop(key, None)
            tail = channel.flush() if channel is not None else ""
            if tail:
                extra = {**self._last_delta[key], "delta": tail}
                prefix = event_bytes(extra["type"], extra)
            self._last_delta.pop(key, None)
        if b"<" not in event:
            return prefix + event
        return prefix + event_bytes(name, self._restorer.value(data))

    async def finish(self) -> bytes:
        return b""


class ChatRestore:
    def __init__(self, restorer: Restorer) -> None:
        self._restorer = restorer
        self._channels: dict[tuple[Any, ...], Channel] = {}

    def _feed(self, key: tuple[Any, ...], piece: str, in_json: bool) -> str:
        channel = self._channels.get(key)
        if channel is None:
            channel = self._channels[key] = Channel(self._restorer, in_json)
        return channel.feed(piece)

    def _flush(self, choice: int, delta: dict[str, Any]) -> None:
        for key in [k for k in self._channels if k[0] == choice]:
            tail = self._channels.pop(key).flush()
            if not tail:
                continue
            if key[1] == "tool":
                calls = delta.setdefault("tool_calls", [])
                calls.append({"index": key[2], "function": {"arguments": tail}})
            else:
                delta[key[1]] = (delta.get(key[1]) or "") + tail

    async def event(self, event: bytes) -> bytes:
        data = event_data(event)
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            return event
        for choice in data["choices"]:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            for field in ("content", "refusal"):
                if isinstance(delta.get(field), str):
                    delta[field] = self._feed((index, field), delta[field], False)
            for call in delta.get("tool_calls") or []:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    function["arguments"] = self._feed(
                        (index, "tool", call.get("index")), function["arguments"], True
                    )
            if choice.get("finish_reason") is not None:
                self._flush(index, delta)
        return event_bytes(None, data)

    async def finish(self) -> bytes:
        return b""


class JsonRestore:
    def __init__(self, restorer: Restorer) -> None:
        self._restorer = restorer

    async def body(self, body: bytes) -> bytes:
        if b"<" not in body:
            return body
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        return orjson.dumps(self._restorer.value(doc))

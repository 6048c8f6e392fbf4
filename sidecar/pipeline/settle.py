"""Stage 9: learn what the call really used, from the upstream's `usage`, and settle with it.

JSON responses carry `usage` at the top level. Streamed Responses carry it in `response.completed`
(also `response.failed` / `response.incomplete`); streamed Chat in the last chunk when
`stream_options.include_usage` is on.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from sidecar.pipeline.context import Call, Usage


class Settler(Protocol):
    async def settle(self, call: Call, reservation: object | None, usage: Usage | None, ok: bool) -> None:
        """Charge real usage against the reservation and refund the rest (budgets fill this in)."""
        ...


def usage_from(doc: Any) -> Usage | None:
    """Usage from a response object (Responses or Chat naming), or None."""
    if not isinstance(doc, dict):
        return None
    usage = doc.get("usage")
    if not isinstance(usage, dict):
        return None
    inp = usage.get("input_tokens", usage.get("prompt_tokens"))
    out = usage.get("output_tokens", usage.get("completion_tokens"))
    if not isinstance(inp, int) or not isinstance(out, int):
        return None
    return Usage(inp, out)


def usage_from_json_body(body: bytes) -> Usage | None:
    if b'"usage"' not in body:
        return None
    try:
        return usage_from(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


def usage_from_event(data: Any) -> Usage | None:
    """Usage from one parsed SSE `data:` payload of either API."""
    if not isinstance(data, dict):
        return None
    response = data.get("response")
    if isinstance(response, dict):  # response.completed / failed / incomplete
        return usage_from(response)
    return usage_from(data)  # the Chat usage chunk


def request_stream_usage(doc: dict[str, Any]) -> bool:
    """Make a streamed Chat call report usage (the Agents SDK does not ask for it).

    Returns True when the caller had not asked, so the relay hides the extra usage chunk from it.
    """
    options = doc.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False
    doc["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return True


class HideUsageChunk:
    """Drops the Chat usage chunk (empty `choices`) that the sidecar asked for on the caller's behalf."""

    async def event(self, event: bytes) -> bytes:
        if b'"usage"' in event and b'"choices"' in event:
            from sidecar.pipeline.stream import event_data

            data = event_data(event)
            if isinstance(data, dict) and data.get("choices") == [] and data.get("usage"):
                return b""
        return event

    async def finish(self) -> bytes:
        return b""

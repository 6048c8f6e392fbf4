"""Stage 8: relay the upstream's answer to the caller.

Server-sent events go out as they arrive: when nothing needs rewriting, each upstream chunk is written
as-is; when a transform is active (placeholder restore, response masking) the relay rewrites whole
events and holds back at most one incomplete event. JSON bodies are read whole (they are small and may
be rewritten); anything else (file downloads, audio) is streamed through untouched. Error bodies
(status >= 400) are read whole, up to `ERROR_BODY_LIMIT`, and every header value and error body is
scrubbed of the provider key (sidecar.pipeline.scrub): an upstream may quote the key it was sent.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from sidecar.errors import SidecarError
from sidecar.pipeline.context import Call
from sidecar.pipeline.forward import downstream_headers
from sidecar.pipeline.scrub import KeyScrubber
from sidecar.pipeline.settle import usage_from_event, usage_from_json_body

log = logging.getLogger(__name__)

ERROR_BODY_LIMIT = 1024 * 1024  # an upstream error body beyond this is cut: errors are small


class EventTransform(Protocol):
    """Rewrites a stream event by event (PII restore and response masking implement this).

    `event` gets one complete SSE event and returns the bytes to send instead (several events, or none).
    """

    async def event(self, event: bytes) -> bytes: ...

    async def finish(self) -> bytes: ...


class BodyTransform(Protocol):
    async def body(self, body: bytes) -> bytes: ...


class SseSplitter:
    """Cuts a byte stream into complete SSE events (each ending in a blank line)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        events: list[bytes] = []
        start = 0
        while True:
            lf = buf.find(b"\n\n", start)
            crlf = buf.find(b"\r\n\r\n", start)
            if lf < 0 and crlf < 0:
                break
            end = crlf + 4 if crlf >= 0 and (lf < 0 or crlf < lf) else lf + 2
            events.append(buf[start:end])
            start = end
        self._buf = buf[start:]
        return events

    def tail(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest


def event_data(event: bytes) -> Any:
    """The parsed JSON of an event's `data:` lines, or None (e.g. `[DONE]`)."""
    lines = [line[5:].lstrip() for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    data = b"\n".join(lines)
    if data == b"[DONE]":
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _observe(call: Call, event: bytes) -> None:
    if b'"usage"' in event:
        usage = usage_from_event(event_data(event))
        if usage is not None:
            call.usage = usage
    if call.streamed is not None and b"delta" in event:
        _collect_text(call.streamed, event_data(event))


def _collect_text(out: list[str], data: Any) -> None:
    """The generated text of one event (Responses `*.delta`, Chat `choices[].delta`), for counting."""
    if not isinstance(data, dict):
        return
    delta = data.get("delta")
    if isinstance(delta, str):
        out.append(delta)
        return
    for choice in data.get("choices") or []:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        if isinstance(delta.get("content"), str):
            out.append(delta["content"])
        for call in delta.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                out.append(function["arguments"])


def _stream_error_event(call: Call, message: str) -> bytes:
    """An in-band error the openai client raises on, for failures after a 200 stream has begun."""
    error = {"message": message, "type": "upstream_error", "code": "upstream_stream_error", "param": None}
    if call.operation == "responses.create":
        payload = {"type": "error", "code": "upstream_stream_error", "message": message, "param": None}
        return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


async def relay_sse(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    call: Call,
    transforms: list[EventTransform],
    headers: CIMultiDict[str],
) -> web.StreamResponse:
    resp = web.StreamResponse(status=upstream.status, headers=headers)
    await resp.prepare(request)
    splitter = SseSplitter()
    try:
        try:
            async for chunk in upstream.content.iter_any():
                events = splitter.feed(chunk)
                for event in events:
                    _observe(call, event)
                out = await _apply(transforms, events) if transforms else chunk
                if out:
                    await resp.write(out)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("upstream stream broke", extra={"request_id": call.id, "error": type(exc).__name__})
            call.outcome = "upstream_stream_error"
            await resp.write(_stream_error_event(call, "The upstream stream ended unexpectedly."))
        except SidecarError as err:
            # A transform could not do its job (e.g. PII detection failed): stop rather than leak.
            log.error("stream transform failed", extra={"request_id": call.id, "error": err.code})
            call.outcome, call.error = "transform_error", err
            upstream.close()
            await resp.write(_stream_error_event(call, err.message))
        else:
            rest = splitter.tail()
            if transforms:
                rest = await _apply(transforms, [rest] if rest else [])
                for transform in transforms:
                    rest += await transform.finish()
            if rest:
                await resp.write(rest)
        await resp.write_eof()
    except ConnectionResetError:
        # The caller went away: closing our upstream connection cancels the generation there too.
        call.outcome = "client_disconnected"
        upstream.close()
    return resp


async def _apply(transforms: list[EventTransform], events: list[bytes]) -> bytes:
    out: list[bytes] = []
    for event in events:
        rewritten = event
        for transform in transforms:
            if rewritten:
                rewritten = await transform.event(rewritten)
        out.append(rewritten)
    return b"".join(out)


async def relay_buffered(
    upstream: aiohttp.ClientResponse,
    call: Call,
    transforms: list[BodyTransform],
    headers: CIMultiDict[str],
) -> web.Response:
    body = await upstream.read()
    call.usage = usage_from_json_body(body)
    for transform in transforms:
        body = await transform.body(body)
    return web.Response(status=upstream.status, body=body, headers=headers)


async def relay_error(
    upstream: aiohttp.ClientResponse, headers: CIMultiDict[str], scrubber: KeyScrubber
) -> web.Response:
    """An upstream error (status >= 400), whatever its type, read whole so the key can be scrubbed."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in upstream.content.iter_any():
            chunks.append(chunk)
            size += len(chunk)
            if size >= ERROR_BODY_LIMIT:
                upstream.close()  # the rest is not relayed
                break
    except (aiohttp.ClientError, TimeoutError):
        raise SidecarError(502, "upstream_unavailable", "The upstream's error response broke off.") from None
    body = scrubber.body(b"".join(chunks)[:ERROR_BODY_LIMIT])
    return web.Response(status=upstream.status, body=body, headers=headers)


async def relay_raw(
    request: web.Request, upstream: aiohttp.ClientResponse, call: Call, headers: CIMultiDict[str]
) -> web.StreamResponse:
    resp = web.StreamResponse(status=upstream.status, headers=headers)
    if upstream.content_length is not None:
        resp.content_length = upstream.content_length
    await resp.prepare(request)
    try:
        async for chunk in upstream.content.iter_chunked(64 * 1024):
            await resp.write(chunk)
        await resp.write_eof()
    except ConnectionResetError:
        call.outcome = "client_disconnected"
        upstream.close()
    return resp


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    call: Call,
    transforms: list[EventTransform],
    body_transforms: list[BodyTransform],
    *,
    scrubber: KeyScrubber,
) -> web.StreamResponse:
    headers = scrubber.headers(downstream_headers(upstream, call))
    if upstream.status >= 400:
        return await relay_error(upstream, headers, scrubber)
    content_type = upstream.content_type
    if content_type == "text/event-stream":
        return await relay_sse(request, upstream, call, transforms, headers)
    if content_type == "application/json":
        return await relay_buffered(upstream, call, body_transforms, headers)
    return await relay_raw(request, upstream, call, headers)

"""Stage 3: read and look at the payload without ever showing raw content to the policy.

JSON bodies are read (up to `max_body_bytes`) and parsed once; multipart uploads are not read here at
all: they stream through to the upstream under their own limit. The policy sees a summary (model,
stream flag, output limit, tool types, size, token estimate) and PII counts, never text.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import quicktok
from aiohttp import web

from sidecar.config import Settings
from sidecar.errors import invalid_request, too_large

# Bodies larger than this are bounded from their size instead of tokenized (a few ms per 200 KB).
_TOKENIZE_LIMIT = 2 * 1024 * 1024
_BYTES_PER_TOKEN = 2  # the bound: no OpenAI encoding averages under two bytes per token on real text


@dataclass(slots=True)
class Payload:
    kind: str  # "none" | "json" | "stream"
    content_type: str
    size: int  # bytes, or the declared Content-Length of a streamed body (-1 when unknown)
    doc: dict[str, Any] | None = None
    raw: bytes = b""
    pii: PiiFindings | None = None  # what the scanner found, for the masker


@dataclass(frozen=True, slots=True)
class Summary:
    model: str | None
    stream: bool
    max_output_tokens: int | None
    output_limit_field: str | None
    tools: list[str]


class PiiFindings(Protocol):
    counts: dict[str, int]  # entities found per type: all the policy ever sees of them


class PiiScanner(Protocol):
    """Finds PII in the user content of a request."""

    async def scan(self, operation: str, doc: dict[str, Any]) -> PiiFindings: ...


async def read_payload(request: web.Request, settings: Settings) -> Payload:
    content_type = request.content_type  # lower-cased, without parameters
    declared = request.content_length
    if not request.body_exists:
        return Payload("none", content_type, 0)
    if content_type.startswith("multipart/"):
        if declared is not None and declared > settings.max_upload_bytes:
            raise too_large(settings.max_upload_bytes)
        return Payload("stream", request.headers.get("Content-Type", content_type), declared or -1)
    if content_type != "application/json":
        raise invalid_request(
            f"Unsupported content type {content_type or '(none)'!r}: send application/json "
            "(or multipart/form-data for uploads)."
        )
    limit = settings.max_body_bytes
    if declared is not None and declared > limit:
        raise too_large(limit)
    raw = await _read_limited(request, limit)
    if not raw:
        return Payload("none", content_type, 0)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(f"Malformed JSON body: {exc}") from None
    if not isinstance(doc, dict):
        raise invalid_request(f"The JSON body must be an object, not {type(doc).__name__}.")
    return Payload("json", content_type, len(raw), doc, raw)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    # A chunked body has no Content-Length, so the limit is enforced while reading.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


_OUTPUT_LIMIT_FIELDS = ("max_output_tokens", "max_completion_tokens", "max_tokens")


def summarize(payload: Payload) -> Summary:
    doc = payload.doc
    if doc is None:
        return Summary(None, False, None, None, [])
    model = doc.get("model")
    limit: int | None = None
    field: str | None = None
    for name in _OUTPUT_LIMIT_FIELDS:
        value = doc.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            limit, field = value, name
            break
    tools = doc.get("tools")
    tool_types = (
        sorted({str(t.get("type", "function")) for t in tools if isinstance(t, dict)})
        if isinstance(tools, list)
        else []
    )
    return Summary(
        model=model if isinstance(model, str) else None,
        stream=doc.get("stream") is True,
        max_output_tokens=limit,
        output_limit_field=field,
        tools=tool_types,
    )


@functools.cache
def _encoding(name: str) -> Any:
    return quicktok.get_encoding(name)


def encoding_for(model: str | None) -> Any:
    """The model's tokenizer (o200k for the gpt-4o / gpt-4.1 / o-series family, cl100k for older ones)."""
    try:
        return quicktok.encoding_for_model(model) if model else _encoding("o200k_base")
    except (KeyError, ValueError):
        return _encoding("o200k_base")


def estimate_input_tokens(payload: Payload, model: str | None = None) -> int:
    """The prompt's tokens, counted over the whole JSON body with the model's offline tokenizer.

    Counting the body rather than the messages alone over-counts a little (keys, punctuation, tool
    schemas), which suits a reservation: it may refund, it must not under-reserve.
    """
    if payload.kind != "json":
        return 0
    if payload.size > _TOKENIZE_LIMIT:
        return payload.size // _BYTES_PER_TOKEN + 1
    return len(encoding_for(model).encode(payload.raw.decode("utf-8", "replace")))

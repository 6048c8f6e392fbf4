"""Stage 3: read and look at the payload without ever showing raw content to the policy.

JSON bodies are read (up to `max_body_bytes`, decoded, with a stall timeout: sidecar.pipeline.receive),
parsed once, and re-serialised: those bytes are what the policy judges and the upstream receives.
Multipart uploads are not read here at all: they stream through to the upstream under their own limit.
The policy sees a summary (model, stream flag, output limit, tool types, size, token estimate) and PII
counts, never text.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson
import quicktok
from aiohttp import web

from sidecar.config import Settings
from sidecar.errors import invalid_request, too_large
from sidecar.pipeline.receive import content_coding, read_body

# Bodies larger than this are bounded from their size instead of tokenized (a few ms per 200 KB).
_TOKENIZE_LIMIT = 2 * 1024 * 1024
_BYTES_PER_TOKEN = 2  # the bound: no OpenAI encoding averages under two bytes per token on real text
_UTF8 = frozenset({"utf-8", "utf8"})


@dataclass(slots=True)
class Payload:
    kind: str  # "none" | "json" | "stream"
    content_type: str
    size: int  # bytes, or the declared Content-Length of a streamed body (-1 when unknown)
    doc: dict[str, Any] | None = None
    raw: bytes = b""  # JSON: orjson.dumps(doc), the bytes forwarded unless enforce rewrites the body
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


# The operations whose bodies are multipart/form-data uploads. Any other operation's body is JSON: a
# multipart body there would stream through unparsed, so its model and content would never be judged.
MULTIPART_OPERATIONS: Final = frozenset(
    {
        "files.create",
        "uploads.parts.create",
        "audio.transcriptions.create",
        "audio.translations.create",
        "images.edit",
        "images.create_variation",
        "containers.files.create",
    }
)


async def read_payload(request: web.Request, settings: Settings, operation: str | None = None) -> Payload:
    """The body, read once. `operation` (when known) decides whether a multipart upload is acceptable."""
    content_type = request.content_type  # lower-cased, without parameters
    declared = request.content_length
    if not request.body_exists:
        return Payload("none", content_type, 0)
    multipart = content_type.startswith("multipart/")
    if multipart and (
        content_type != "multipart/form-data"
        or (operation is not None and operation not in MULTIPART_OPERATIONS)
    ):
        raise invalid_request(
            f"Unsupported content type {content_type!r} for this operation: send application/json "
            "(multipart/form-data only for file, audio and image uploads)."
        )
    coding = content_coding(request, decodable=not multipart)  # 415 unless the sidecar can decode it
    if multipart:
        if declared is not None and declared > settings.max_upload_bytes:
            raise too_large(settings.max_upload_bytes)
        return Payload("stream", request.headers.get("Content-Type", content_type), declared or -1)
    if content_type != "application/json":
        raise invalid_request(
            f"Unsupported content type {content_type or '(none)'!r}: send application/json "
            "(or multipart/form-data for uploads)."
        )
    charset = request.charset
    if charset is not None and charset.lower() not in _UTF8:
        raise invalid_request(f"JSON bodies must be UTF-8, not charset={charset[:40]!r}.")
    limit = settings.max_body_bytes
    if declared is not None and declared > limit:
        raise too_large(limit)
    received = await read_body(request, limit, settings.client_body_timeout, coding)
    if not received:
        return Payload("none", content_type, 0)
    doc, raw = parse_json_body(received, settings.max_json_depth)
    return Payload("json", content_type, len(raw), doc, raw)


def parse_json_body(received: bytes, max_depth: int) -> tuple[dict[str, Any], bytes]:
    """The body's object and its re-serialisation, which is what the policy judges and the upstream gets.

    Re-serialising means the upstream never parses something the sidecar did not: a duplicate key keeps
    only the last value (the one the sidecar saw), whitespace and escapes are normalised, and an integer
    beyond 64 bits becomes the double orjson read it as. The body must be UTF-8 without a BOM, with no
    NaN/Infinity, no lone surrogate escapes, no number beyond a double, and no deeper than `max_depth`.
    """
    try:
        doc = orjson.loads(received)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(f"Malformed JSON body: {exc}") from None
    if not isinstance(doc, dict):
        raise invalid_request(f"The JSON body must be an object, not {type(doc).__name__}.")
    if not within_depth(doc, max_depth):
        raise invalid_request(f"The JSON body is nested deeper than {max_depth} levels.")
    try:
        raw = orjson.dumps(doc)
    except TypeError as exc:  # not expected after the checks above; refused rather than forwarded as sent
        raise invalid_request(f"The JSON body cannot be re-serialised ({exc}).") from None
    return doc, raw


def within_depth(doc: dict[str, Any], limit: int) -> bool:
    """Whether no container is nested more than `limit` deep (the top-level object is depth 1).

    A level-by-level walk over containers only: about 4 µs for a 2 KB chat body and 100 µs for 200 KB
    (long strings cost nothing); a byte scan of the brackets outside strings measured slower on both.
    """
    level: list[Any] = [doc]
    depth = 1
    while level:
        if depth > limit:
            return False
        below: list[Any] = []
        for node in level:
            values = node.values() if type(node) is dict else node
            below.extend([v for v in values if type(v) is dict or type(v) is list])
        level = below
        depth += 1
    return True


_OUTPUT_LIMIT_FIELDS = ("max_output_tokens", "max_completion_tokens", "max_tokens")


MAX_MODEL_CHARS: Final = 256  # fine-tuned names (`ft:gpt-4o-mini:org:suffix:id`) are well under this
_MODEL = re.compile(r"[!-~]+")


def summarize(payload: Payload) -> Summary:
    doc = payload.doc
    if doc is None:
        return Summary(None, False, None, None, [])
    model = doc.get("model")
    if isinstance(model, str) and (len(model) > MAX_MODEL_CHARS or not _MODEL.fullmatch(model)):
        # The model names metrics, spans, budgets and audit lines: an agent must not grow them at will.
        raise invalid_request(
            f"The model name must be 1 to {MAX_MODEL_CHARS} printable ASCII characters without spaces.",
            param="model",
        )
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

"""Shared pieces of the dev upstream: state, errors, token counting, tool planning, SSE writing."""

from __future__ import annotations

import asyncio
import json
import re
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

JSON = dict[str, Any]

# ----------------------------------------------------------------------------------------------------
# Contract constants (documented in the package docstring).

HDR_FAIL = "x-dev-upstream-fail"
HDR_DELAY = "x-dev-upstream-delay-ms"
HDR_STREAM_DELAY = "x-dev-upstream-stream-delay-ms"
HDR_DROP = "x-dev-upstream-drop"
HDR_STREAM_FAIL = "x-dev-upstream-stream-fail"
HDR_REPLY = "x-dev-upstream-reply"
HDR_TOOL_ARGS = "x-dev-upstream-tool-args"
# All of them: a sidecar in front of the dev upstream forwards them only when told to
# (SIDECAR_FORWARD_HEADERS), as its forwarding is by allowlist.
TEST_HEADERS = (HDR_FAIL, HDR_DELAY, HDR_STREAM_DELAY, HDR_DROP, HDR_STREAM_FAIL, HDR_REPLY, HDR_TOOL_ARGS)
# The account headers OpenAI answers with: the caller's OpenAI-Organization / -Project, else these.
DEFAULT_ORGANIZATION = "org-devupstream"
DEFAULT_PROJECT = "proj_devupstream"

ECHO_PREFIX = "Echo: "
TOOL_RESULT_PREFIX = "Tool result: "
SAMPLE_STRING = "sample"

LOG_LIMIT = 1000
STORE_LIMIT = 1000
FILE_CONTENT_LIMIT = 16 * 1024 * 1024

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_DELTA_RE = re.compile(r"\s*(?:\w+|[^\w\s])")
_TEXT_KEYS = ("content", "text", "output", "arguments", "tool_calls", "function")


def _json_encoder() -> Callable[[Any], bytes]:
    """orjson when available (several times faster on the SSE hot path), else the standard library."""
    try:
        import orjson
    except ImportError:  # pragma: no cover
        encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        return lambda value: encode(value).encode()
    return orjson.dumps


dumps_bytes: Callable[[Any], bytes] = _json_encoder()


def dumps(value: Any) -> str:
    """Compact JSON text, as the real API sends it."""
    return dumps_bytes(value).decode()


# ----------------------------------------------------------------------------------------------------
# State


@dataclass(slots=True)
class StoredFile:
    meta: JSON
    content: bytes | None


@dataclass(slots=True)
class DevState:
    api_key: str | None = None
    latency_s: float = 0.0
    log: deque[JSON] = field(default_factory=lambda: deque(maxlen=LOG_LIMIT))
    log_seq: int = 0
    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_cancelled: int = 0
    id_seq: int = 0
    files: OrderedDict[str, StoredFile] = field(default_factory=OrderedDict)
    responses: OrderedDict[str, JSON] = field(default_factory=OrderedDict)
    fail_next: deque[int] = field(
        default_factory=deque
    )  # statuses for the next /v1 calls (POST /_dev/fail-next)

    def next_id(self, prefix: str) -> str:
        self.id_seq += 1
        return f"{prefix}{self.id_seq:024x}"

    def stats(self) -> JSON:
        return {
            "requests": self.requests,
            "streams_started": self.streams_started,
            "streams_completed": self.streams_completed,
            "streams_cancelled": self.streams_cancelled,
        }

    def reset_stats(self) -> None:
        self.requests = self.streams_started = self.streams_completed = self.streams_cancelled = 0

    def remember_response(self, response: JSON) -> None:
        self.responses[response["id"]] = response
        while len(self.responses) > STORE_LIMIT:
            self.responses.popitem(last=False)


STATE_KEY = web.AppKey("devupstream_state", DevState)
LOG_ENTRY_KEY = web.RequestKey("devupstream_log_entry", dict)


def state_of(request: web.Request) -> DevState:
    return request.app[STATE_KEY]


# ----------------------------------------------------------------------------------------------------
# Errors

_ERROR_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", "invalid_request", "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "permission_denied", "You are not allowed to perform this request."),
    404: ("invalid_request_error", "not_found", "Not found."),
    408: ("server_error", "timeout", "Request timed out."),
    409: ("invalid_request_error", "conflict", "Conflict."),
    413: ("invalid_request_error", "request_too_large", "Request too large."),
    422: ("invalid_request_error", "unprocessable_entity", "Unprocessable entity."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached. Please try again later."),
    500: ("server_error", "server_error", "The server had an error while processing your request."),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: (
        "server_error",
        "service_unavailable",
        "The engine is currently overloaded, please try again later.",
    ),
    504: ("server_error", "timeout", "Gateway timeout."),
}


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> JSON:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _Default:
    """Marker: use the status's default error code."""


DEFAULT_CODE = _Default()


def error_response(
    status: int,
    message: str | None = None,
    *,
    type_: str | None = None,
    code: str | _Default | None = DEFAULT_CODE,
    param: str | None = None,
) -> web.Response:
    """An OpenAI-style error (`{"error": {message, type, param, code}}`) with the given status."""
    d_type, d_code, d_msg = _ERROR_DEFAULTS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", "dev_upstream_error", "Error.")
    )
    code = d_code if isinstance(code, _Default) else code
    body = error_body(message or d_msg, type_ or d_type, code, param)
    return json_response(body, status)


class ApiError(Exception):
    """Raised by handlers; the middleware turns it into an OpenAI error response."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def response(self) -> web.Response:
        return error_response(self.status, self.message, code=self.code, param=self.param)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=dumps_bytes(data), content_type="application/json")


async def read_json_object(request: web.Request) -> JSON:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError as exc:
        raise ApiError(400, f"We could not parse the JSON body of your request. ({exc})", code=None) from exc
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code=None)
    return body


def require_model(body: JSON) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(
            400, "Missing required parameter: 'model'.", code="missing_required_parameter", param="model"
        )
    return model


def header_ms(request: web.Request, name: str) -> float:
    """A non-negative millisecond header value, in seconds (0 when absent or malformed)."""
    raw = request.headers.get(name)
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        return 0.0
    return max(value, 0.0) / 1000.0


def header_flag(request: web.Request, name: str) -> bool:
    return request.headers.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# ----------------------------------------------------------------------------------------------------
# Token counting: one token per run of word characters and per punctuation character.


def count_tokens(text: str) -> int:
    return len(TOKEN_RE.findall(text))


def collect_texts(value: Any, out: list[str]) -> list[str]:
    """Append every text-bearing string under `value` (content/text/output/arguments, recursively)."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for item in value:
            collect_texts(item, out)
    elif isinstance(value, dict):
        for key in _TEXT_KEYS:
            sub = value.get(key)
            if sub is not None:
                collect_texts(sub, out)
    return out


def count_input_tokens(*values: Any) -> int:
    texts: list[str] = []
    for value in values:
        collect_texts(value, texts)
    return sum(count_tokens(t) for t in texts)


def truncate_tokens(text: str, limit: int | None) -> tuple[str, int, bool]:
    """Cut `text` after its `limit`-th token. Returns (text, tokens, truncated)."""
    if limit is None:
        return text, count_tokens(text), False
    end = 0
    n = 0
    for match in TOKEN_RE.finditer(text):
        if n == limit:
            return text[:end], n, True
        n += 1
        end = match.end()
    return text, n, False


def max_tokens_of(body: JSON, *keys: str) -> int | None:
    for key in keys:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ApiError(400, f"Invalid '{key}': must be at least 1.", code="invalid_value", param=key)
            return value
    return None


def text_chunks(text: str) -> list[str]:
    """Split text into one delta per token (with its leading whitespace); the deltas join back to `text`."""
    chunks: list[str] = _DELTA_RE.findall(text)
    rest = len(text) - sum(map(len, chunks))
    if rest:
        chunks.append(text[-rest:])
    return chunks or [text]


def arg_chunks(arguments: str, size: int = 8) -> list[str]:
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


def text_of(value: Any) -> str:
    """Plain text of a message content / tool output (string, or list of parts with `text`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(p["text"] for p in value if isinstance(p, dict) and isinstance(p.get("text"), str))
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return str(value["text"])
    return "" if value is None else dumps(value)


# ----------------------------------------------------------------------------------------------------
# What to answer


async def send_sse(request: web.Request, events: list[bytes]) -> web.StreamResponse:
    """Stream pre-rendered SSE events, honouring the stream-delay header and counting cancelled streams."""
    state = state_of(request)
    delay = header_ms(request, HDR_STREAM_DELAY)
    resp = web.StreamResponse(
        status=200,
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"},
    )
    await resp.prepare(request)
    state.streams_started += 1
    try:
        if delay <= 0:
            await resp.write(b"".join(events))
        else:
            last = len(events) - 1
            for i, event in enumerate(events):
                await resp.write(event)
                if i != last:
                    await asyncio.sleep(delay)
        await resp.write_eof()
    except asyncio.CancelledError:
        state.streams_cancelled += 1
        raise
    except ConnectionError:
        state.streams_cancelled += 1
        return resp
    state.streams_completed += 1
    return resp

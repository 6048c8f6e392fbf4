"""Reading a request body from a caller the sidecar does not trust (used by the inspect and forward stages).

The data listener does not let aiohttp decode `Content-Encoding` (sidecar.listener): this module does, so
every refusal is the sidecar's own OpenAI-shaped error with an audit record, and the size limit holds on
the decoded bytes (a decompression bomb stops at the limit, not in memory). See docs/security.md.

- `gzip` (or `x-gzip`) and `deflate` (the zlib format) are decoded for JSON bodies; `identity` is nothing.
  Anything else, or more than one coding (`gzip, gzip`), is 415 `unsupported_encoding`. Uploads are
  streamed through as sent, so they must not be encoded at all.
- Malformed, truncated, or trailing compressed data is 400 `invalid_request`.
- A read that waits longer than the body timeout for the next bytes is 408 `request_timeout`.
- Broken framing (bad chunk sizes) is 400; a caller that hangs up mid-body raises `ConnectionResetError`,
  which the proxy records as `client_disconnected`.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator

from aiohttp import web

from sidecar.errors import SidecarError, invalid_request, no_retry, too_large

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_ALIASES = {"x-gzip": "gzip"}


def unsupported_encoding(message: str) -> SidecarError:
    return no_retry(415, "unsupported_encoding", message)


def request_timeout(seconds: float) -> SidecarError:
    return SidecarError(
        408, "request_timeout", f"The request body stalled: no data arrived for {seconds:g} seconds."
    )


def content_coding(request: web.BaseRequest, *, decodable: bool) -> str:
    """The body's single content coding: "identity", or (when `decodable`) "gzip" / "deflate"; else 415."""
    parts = [
        token.strip().lower()
        for value in request.headers.getall("Content-Encoding", ())
        for token in value.split(",")
    ]
    codings = [_ALIASES.get(p, p) for p in parts if p and p != "identity"]
    if not codings:
        return "identity"
    shown = ", ".join(codings)[:60]
    if len(codings) > 1:
        raise unsupported_encoding(f"Content-Encoding {shown!r}: the sidecar accepts at most one coding.")
    if not decodable:
        raise unsupported_encoding(f"Content-Encoding {shown!r}: uploads must be sent unencoded.")
    if codings[0] not in _WBITS:
        raise unsupported_encoding(
            f"Content-Encoding {shown!r} is not supported: send gzip, deflate or identity."
        )
    return codings[0]


async def chunks(request: web.BaseRequest, stall_after: float) -> AsyncIterator[bytes]:
    """The body as it arrives; 408 when no bytes arrive for `stall_after` seconds (not a total bound)."""
    stream = request.content
    while True:
        try:
            async with asyncio.timeout(stall_after):
                chunk = await stream.readany()
        except TimeoutError:
            raise request_timeout(stall_after) from None
        except web.RequestPayloadError as exc:
            raise invalid_request(f"The request body is malformed ({_cause(exc)}).") from None
        if not chunk:
            return
        yield chunk


async def read_body(request: web.BaseRequest, limit: int, stall_after: float, coding: str) -> bytes:
    """The whole body, decoded; 413 once the bytes received or the bytes decoded exceed `limit`."""
    # Under a server that decodes bodies itself (aiohttp's default auto_decompress), the stream says so.
    decoded = request.content.total_compressed_bytes is not None
    decoder = zlib.decompressobj(_WBITS[coding]) if coding != "identity" and not decoded else None
    out: list[bytes] = []
    received = size = 0
    async for chunk in chunks(request, stall_after):
        received += len(chunk)
        if received > limit:
            raise too_large(limit)
        if decoder is None:
            out.append(chunk)
            continue
        data = chunk
        while data:
            if decoder.eof:
                raise invalid_request(f"The {coding} body has data after its end.")
            try:  # never more than one byte past the limit, however well the input compresses
                piece = decoder.decompress(data, limit - size + 1)
            except zlib.error:
                raise invalid_request(f"The {coding} body is not valid {coding} data.") from None
            size += len(piece)
            if size > limit:
                raise too_large(limit)
            out.append(piece)
            data = decoder.unconsumed_tail
    if decoder is not None and received:
        if not decoder.eof:
            raise invalid_request(f"The {coding} body is truncated.")
        if decoder.unused_data:
            raise invalid_request(f"The {coding} body has data after its end.")
    return b"".join(out)


class BodyStream:
    """A body streamed upstream (uploads) that remembers the error that ended it.

    The upstream client wraps whatever the body raises in a connection error; the forward stage re-raises
    `failure` instead, so a stalled or oversized upload is the caller's 408/413 (or a disconnect), not a 502.
    """

    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._source = source
        self.failure: BaseException | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._relay()

    async def _relay(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._source:
                yield chunk
        except (SidecarError, ConnectionError) as exc:
            self.failure = exc
            raise


def _cause(exc: BaseException) -> str:
    """The framing error's class name (never its text: that can quote the caller's bytes)."""
    cause = exc.__cause__ or exc
    return type(cause).__name__

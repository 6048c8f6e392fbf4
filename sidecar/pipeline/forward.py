"""Stage 7: send the call upstream with the provider key in place of the caller's credential.

One pooled `aiohttp.ClientSession` serves every call (keep-alive to the provider). Caller credentials,
cookies and hop-by-hop headers never reach the upstream; upstream cookies never reach the caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar.config import Settings
from sidecar.errors import SidecarError, too_large
from sidecar.pipeline.context import Call
from sidecar.pipeline.enforce import Plan

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded upstream: credentials, identity hints meant for the sidecar, and framing we recompute.
_DROP_UPSTREAM = HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "cookie",
    "api-key",
    "x-end-user-token",
    "accept-encoding",
    "x-request-id",
    "traceparent",
    "tracestate",
}
# Never relayed to the caller: framing aiohttp recomputes, and the provider's cookies.
_DROP_DOWNSTREAM = HOP_BY_HOP | {"content-length", "content-encoding", "set-cookie", "x-request-id"}
_W3C = TraceContextTextMapPropagator()


class Forwarder:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        base = settings.upstream_url.rstrip("/")
        # Accept an upstream configured with or without the /v1 suffix.
        self._base = base[: -len("/v1")] if base.endswith("/v1") else base
        self._auth = f"Bearer {settings.provider_key()}"
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._settings.upstream_max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self._settings.upstream_connect_timeout,
            sock_read=self._settings.upstream_read_timeout,
        )
        # The provider sees no sidecar-specific User-Agent: the caller's own is passed on.
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",), auto_decompress=True
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def upstream_headers(
        self, request: web.Request, call: Call, content_type: str | None
    ) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            if name.lower() not in _DROP_UPSTREAM:
                headers.add(name, value)
        headers["Authorization"] = self._auth
        headers["Accept-Encoding"] = "identity"  # the relay may rewrite bodies, so it needs them plain
        headers["X-Client-Request-Id"] = call.id
        headers["traceparent"] = f"00-{call.trace_id}-{call.span_id}-01"
        # With tracing on, the current span is the upstream CLIENT span: it becomes the parent (and the
        # caller's tracestate rides along). With tracing off there is no current span and this is a no-op.
        _W3C.inject(headers)
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def send(self, request: web.Request, call: Call, plan: Plan) -> aiohttp.ClientResponse:
        assert self._session is not None, "Forwarder.start() was not awaited"
        url = self._base + request.rel_url.path_qs
        data: Any
        if plan.body is not None:
            data, content_type = plan.body, "application/json"
        elif request.body_exists:
            data, content_type = (
                _limited(request, self._settings.max_upload_bytes),
                request.headers["Content-Type"],
            )
        else:
            data, content_type = None, None
        headers = self.upstream_headers(request, call, content_type)
        if plan.body is None and request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        try:
            return await self._session.request(
                request.method, url, data=data, headers=headers, allow_redirects=False
            )
        except SidecarError:
            raise
        except TimeoutError:
            raise SidecarError(504, "upstream_timeout", "The upstream API did not answer in time.") from None
        except aiohttp.ClientError as exc:
            raise SidecarError(
                502, "upstream_unavailable", f"The upstream API could not be reached ({type(exc).__name__})."
            ) from None


async def _limited(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """Stream the caller's body upstream chunk by chunk, stopping at the upload limit."""
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        yield chunk


def downstream_headers(upstream: aiohttp.ClientResponse, call: Call) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.headers.items():
        if name.lower() not in _DROP_DOWNSTREAM:
            headers.add(name, value)
    if "x-request-id" in upstream.headers:
        headers["x-upstream-request-id"] = upstream.headers["x-request-id"]
    headers["x-request-id"] = call.id
    return headers

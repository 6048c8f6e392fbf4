"""Stage 7: send the call upstream with the provider key in place of the caller's credential.

One pooled `aiohttp.ClientSession` serves every call (keep-alive to the provider). The upstream gets the
canonical target the policy judged (sidecar.pipeline.canonical), byte for byte, and only the request
headers in `FORWARD_HEADERS` (plus SIDECAR_FORWARD_HEADERS): everything else the caller sent
(credentials, cookies, hop-by-hop, `X-Forwarded-*`, `X-HTTP-Method-Override`, `Content-Encoding`, ...) is
dropped. The sidecar sets the rest itself: the provider key, the body's framing, the request id, the
trace context, and the OpenAI-Organization / OpenAI-Project that settings or the decision chose
(`bind_account`). Upstream cookies and account headers never reach the caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from yarl import URL

from sidecar.config import Settings
from sidecar.documents import Decision
from sidecar.errors import SidecarError, invalid_request, no_retry, too_large
from sidecar.pipeline.canonical import target
from sidecar.pipeline.context import Call
from sidecar.pipeline.enforce import Plan
from sidecar.pipeline.receive import BodyStream, chunks
from sidecar.pipeline.scrub import KeyScrubber

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
# The caller's request headers the upstream may act on (docs/security.md): content negotiation (Accept;
# the sidecar sets Content-Type), the OpenAI beta opt-ins, idempotency, the caller's User-Agent, and the
# SDK's own `x-stainless-*` (retry count, timeout, platform). Tracing and X-Client-Request-Id are set by
# the sidecar. Operators add names with SIDECAR_FORWARD_HEADERS (never config.NEVER_FORWARD_HEADERS).
FORWARD_HEADERS: Final = frozenset({"accept", "openai-beta", "idempotency-key", "user-agent"})
FORWARD_PREFIXES: Final = ("x-stainless-",)
ORGANIZATION, PROJECT = "openai-organization", "openai-project"
# Never relayed to the caller: framing aiohttp recomputes, the provider's cookies, and which account of
# the provider's the call was billed to.
_DROP_DOWNSTREAM = HOP_BY_HOP | {
    "content-length",
    "content-encoding",
    "set-cookie",
    "x-request-id",
    ORGANIZATION,
    PROJECT,
}
_W3C = TraceContextTextMapPropagator()


class Forwarder:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        base = settings.upstream_url.rstrip("/")
        # Accept an upstream configured with or without the /v1 suffix.
        self._base = base[: -len("/v1")] if base.endswith("/v1") else base
        key = settings.provider_key()
        self._auth = f"Bearer {key}"
        self.scrubber = KeyScrubber(key)  # for the relay: the key never goes back to the caller
        self._forward = FORWARD_HEADERS | frozenset(settings.forward_headers)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._settings.upstream_max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            # The TCP/TLS connect alone: aiohttp's `connect` would also count the wait for a free pooled
            # connection, which is the sidecar's own load, and blame the upstream for it (a 504).
            sock_connect=self._settings.upstream_connect_timeout,
            sock_read=self._settings.upstream_read_timeout,
        )
        # The provider sees no sidecar-specific User-Agent: the caller's own is passed on.
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",), auto_decompress=True
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def bind_account(
        self, call: Call, request: web.Request, decision: Decision, *, again: bool = False
    ) -> None:
        """Choose the OpenAI-Organization / OpenAI-Project sent upstream: the decision's `upstream`, else
        SIDECAR_UPSTREAM_ORGANIZATION / SIDECAR_UPSTREAM_PROJECT, else none (docs/decision.md).

        The caller does not choose them. A caller's own OpenAI-Organization (or -Project) header is
        refused with 400, unless the policy saw it (the name is in SIDECAR_INPUT_HEADERS, so it is in
        `input.request.headers`) and allowed it: the decision's `upstream.organization` (or `.project`)
        equals the header's value. Set before the approval lookup, which binds them; a decision asked
        again (`again`, with the approval's status) must choose the same, or the call is denied.
        """
        if not decision.allow:
            return  # refused by the enforce stage; nothing is sent
        chosen = (
            self._account(
                request, ORGANIZATION, decision.upstream_organization, self._settings.upstream_organization
            ),
            self._account(request, PROJECT, decision.upstream_project, self._settings.upstream_project),
        )
        if again and chosen != (call.organization, call.project):
            raise no_retry(
                403,
                "policy_violation",
                "The policy chose another upstream organization or project than the "
                "one the approval was asked for; denied.",
            )
        call.organization, call.project = chosen

    def _account(self, request: web.Request, header: str, decided: str | None, configured: str) -> str | None:
        sent = request.headers.get(header)  # once at most: the canonical stage refused repeated headers
        if sent is not None and header not in self._settings.input_headers:
            raise invalid_request(
                f"The sidecar chooses the {header} header; the policy is not shown it "
                "(SIDECAR_INPUT_HEADERS), so a caller may not send it."
            )
        if sent is not None and sent != decided:
            raise invalid_request(
                f"The policy did not allow this {header} (its decision's upstream must name it)."
            )
        return decided or configured or None

    def upstream_headers(
        self, request: web.Request, call: Call, content_type: str | None
    ) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            lower = name.lower()
            if lower in self._forward or lower.startswith(FORWARD_PREFIXES):
                headers.add(name, value)
        headers["Authorization"] = self._auth
        if call.organization:
            headers["OpenAI-Organization"] = call.organization
        if call.project:
            headers["OpenAI-Project"] = call.project
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
        # Encoded: aiohttp must neither re-quote nor normalise what the policy judged.
        url = URL(self._base + target(call.path, call.query), encoded=True)
        data: Any
        if plan.body is not None:
            data, content_type = plan.body, "application/json"
        elif plan.upload is not None:  # a gated upload: the spooled bytes its approval is bound to
            data, content_type = plan.upload.chunks(), request.headers["Content-Type"]
        elif request.body_exists:
            data, content_type = (
                BodyStream(_limited(request, self._settings, request.content_length)),
                request.headers["Content-Type"],
            )
        else:
            data, content_type = None, None
        headers = self.upstream_headers(request, call, content_type)
        if plan.upload is not None:
            headers["Content-Length"] = str(plan.upload.size)
        elif plan.body is None and request.content_length is not None:
            # An upload is forwarded as received (an encoded one was refused with 415: receive.py), so
            # its declared length is the length sent; else chunked. A JSON body's is len(plan.body).
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
            if isinstance(data, BodyStream) and data.failure is not None:
                raise data.failure from None  # the caller's body failed (408, 413, 400, disconnect)
            raise SidecarError(
                502, "upstream_unavailable", f"The upstream API could not be reached ({type(exc).__name__})."
            ) from None


async def _limited(request: web.Request, settings: Settings, declared: int | None) -> AsyncIterator[bytes]:
    """Stream the caller's body upstream chunk by chunk, stopping at the upload limit.

    With a declared length, a body that ends short or runs long aborts the upstream request rather
    than send bytes its Content-Length does not describe.
    """
    size, limit = 0, settings.max_upload_bytes
    async for chunk in chunks(request, settings.client_body_timeout):  # 408 when the caller stalls
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        if declared is not None and size > declared:
            break
        yield chunk
    if declared is not None and size != declared:
        raise invalid_request(
            f"The request body is {size} bytes, not the {declared} its Content-Length says."
        )


def downstream_headers(upstream: aiohttp.ClientResponse, call: Call) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.headers.items():
        if name.lower() not in _DROP_DOWNSTREAM:
            headers.add(name, value)
    if "x-request-id" in upstream.headers:
        headers["x-upstream-request-id"] = upstream.headers["x-request-id"]
    headers["x-request-id"] = call.id
    return headers

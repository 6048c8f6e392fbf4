"""The HTTP listeners' connection handling: slow-client timeouts and OpenAI-shaped low-level refusals.

aiohttp reads request heads with no deadline of its own: its keep-alive timer is the only bound, and a
client dribbling header bytes (slowloris) holds a connection for as long as that timer allows. The
protocol here adds one: a request head must be complete within `header_timeout` of the connection
opening, or of the first byte of a later request on a kept-alive connection (at worst twice that, when
the next head starts while the timer from the previous one is still pending), else the connection is
closed without an answer. An idle kept-alive connection closes after `keepalive_timeout` (aiohttp's
own timer); a stalled body is the handler's business (sidecar.pipeline.receive, 408).

Requests aiohttp refuses before any handler runs (a malformed request line or header, a line longer than
8190 bytes, more than 128 headers) get a 400 in OpenAI's error shape with an `x-request-id`, and one log
line naming the parser's error class; they carry no identity, so they have no audit record (see
docs/security.md). The same shape serves any error that escapes a handler (500 `internal_error`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from sidecar.errors import SidecarError, error_response
from sidecar.logs import raised_at
from sidecar.pipeline.context import new_request_id

log = logging.getLogger(__name__)


class GuardedHandler(RequestHandler):
    """aiohttp's server protocol with a request-head deadline and JSON error bodies."""

    __slots__ = ("_header_timeout", "_header_timer")

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()  # a connection that never completes a request head is closed, silent or dribbling

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        waiter = self._waiter
        if waiter is None:
            return  # a request is being handled: its body has its own timeout
        if waiter.done():
            self._disarm()  # a complete head was just handed to the handler loop
        elif data and self._header_timer is None:
            self._arm()  # the first bytes of the next request's head

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_timer = self._loop.call_later(self._header_timeout, self._head_due)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _head_due(self) -> None:
        self._header_timer = None
        # aiohttp's own idle test (RequestHandler._process_keepalive): the handler loop awaits a message.
        waiter = self._waiter
        if waiter is not None and not waiter.done() and self.transport is not None:
            log.info("client header timeout", extra={"peer": _peer(self), "timeout_s": self._header_timeout})
            self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # As aiohttp does: part of a response is out, so the connection can only be dropped.
            raise ConnectionError("the response had already started")
        request_id = new_request_id()
        error = type(exc).__name__ if exc is not None else None
        if status >= 500:  # a handler failed (the data path answers its own failures: sidecar.proxy)
            err = SidecarError(status, "internal_error", "The sidecar failed to handle the request.")
            where = raised_at(exc) if exc is not None else []
            log.error("unexpected error", extra={"request_id": request_id, "error": error, "at": where})
        else:
            # The parser's message can quote the caller's bytes: only its class name is shown or logged.
            err = SidecarError(
                status, "invalid_request", f"The request is not valid HTTP/1.1 ({error or 'BadHttpMessage'})."
            )
            log.info(
                "request refused before handling",
                extra={"request_id": request_id, "status": status, "error": error, "peer": _peer(self)},
            )
        response = error_response(err, request_id)
        response.force_close()
        return response


def _peer(handler: RequestHandler) -> str | None:
    peer = handler.peername
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None


class GuardedServer(web.Server):
    """`web.Server` whose connections use `GuardedHandler`; `handler_args` are RequestHandler options."""

    def __init__(
        self,
        handler: Any,
        *,
        loop: asyncio.AbstractEventLoop,
        header_timeout: float,
        request_factory: Any = None,
        handler_cancellation: bool = False,
        **handler_args: Any,
    ) -> None:
        super().__init__(
            handler,
            request_factory=request_factory,
            handler_cancellation=handler_cancellation,
            loop=loop,
            **handler_args,
        )
        self._guarded = (loop, header_timeout, handler_args)

    def __call__(self) -> RequestHandler:
        loop, header_timeout, handler_args = self._guarded
        return GuardedHandler(self, loop=loop, header_timeout=header_timeout, **handler_args)


class GuardedRunner(web.AppRunner):
    """`web.AppRunner` serving its application through `GuardedServer`.

    `handler_args` are RequestHandler options (keepalive_timeout, auto_decompress, ...).
    """

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout: float,
        handler_args: dict[str, Any],
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._guard = (header_timeout, handler_args)

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()  # runs the application's startup and freezes it
        header_timeout, handler_args = self._guard
        return GuardedServer(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=asyncio.get_running_loop(),
            header_timeout=header_timeout,
            access_log=None,
            **handler_args,
        )

"""App factory, middleware (request log, fault injection, API-key check), `/_dev` endpoints and `main`."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import chat, misc, responses
from .common import (
    DEFAULT_ORGANIZATION,
    DEFAULT_PROJECT,
    HDR_DELAY,
    HDR_DROP,
    HDR_FAIL,
    JSON,
    LOG_ENTRY_KEY,
    STATE_KEY,
    ApiError,
    DevState,
    error_response,
    header_flag,
    header_ms,
    json_response,
    state_of,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODY = 256 * 1024 * 1024
LOG_BODY_LIMIT = 1024 * 1024


async def _record(request: web.Request, state: DevState) -> JSON:
    if request.content_type.startswith("multipart/"):
        body_text = ""
        body_bytes = request.content_length or 0
    else:
        raw = await request.read()
        body_bytes = len(raw)
        body_text = raw[:LOG_BODY_LIMIT].decode("utf-8", errors="replace")
    headers: dict[str, str] = {}
    for key, value in request.headers.items():
        k = key.lower()
        headers[k] = f"{headers[k]}, {value}" if k in headers else value
    state.log_seq += 1
    entry: JSON = {
        "seq": state.log_seq,
        "time": time.time(),
        "method": request.method,
        "path": request.path,
        "query": request.query_string,
        "raw_path": request.raw_path,  # the request target exactly as received (path and query)
        "headers": headers,
        "body": body_text,
        "body_bytes": body_bytes,
        "status": None,
    }
    state.log.append(entry)
    return entry


def _injected_failure(raw: str) -> web.Response:
    try:
        status = int(raw.strip())
    except ValueError:
        status = 0
    if not 400 <= status <= 599:
        return error_response(
            400, f"Invalid {HDR_FAIL} header: {raw!r} (expected 400-599).", code="invalid_header"
        )
    return error_response(status)


def _check_auth(request: web.Request, api_key: str) -> web.Response | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip() == api_key:
        return None
    if not auth:
        message = (
            "You didn't provide an API key. You need to provide your API key in an Authorization header."
        )
        return error_response(401, message, code="invalid_api_key")
    # As OpenAI does: the key's first 8 and last 4 characters, in the body and (here) a header too.
    shown = f"{token[:8]}{'*' * max(len(token) - 12, 4)}{token[-4:]}" if len(token) > 12 else "****"
    message = (
        f"Incorrect API key provided: {shown}. "
        "You can find your API key at https://platform.openai.com/account/api-keys."
    )
    if request.headers.get("Accept") == "text/plain":  # as a gateway in front of the API might answer
        resp = web.Response(status=401, text=message)
    else:
        resp = error_response(401, message, code="invalid_api_key")
    resp.headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{shown}"'
    return resp


async def dev_fail_next(request: web.Request) -> web.Response:
    """`{"status": 500, "count": 1}`: the next `count` /v1 calls get that OpenAI error, whatever they send."""
    doc = await request.json()
    status, count = int(doc.get("status", 500)), int(doc.get("count", 1))
    if not 400 <= status <= 599 or not 0 < count <= 100:
        return error_response(400, "status must be 400-599 and count 1-100", code="invalid_request")
    state_of(request).fail_next.extend([status] * count)
    return web.json_response({"queued": len(state_of(request).fail_next)})


@web.middleware
async def dev_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/_dev/"):
        return await handler(request)
    state = state_of(request)
    state.requests += 1
    entry = await _record(request, state)
    request[LOG_ENTRY_KEY] = entry

    delay = state.latency_s + header_ms(request, HDR_DELAY)
    if delay > 0:
        await asyncio.sleep(delay)
    if header_flag(request, HDR_DROP):
        if request.transport is not None:
            request.transport.close()
        entry["status"] = 0
        # Writing this response fails on the closed transport; aiohttp treats it as a client disconnect.
        return web.Response(status=500)
    resp: web.StreamResponse | None = None
    if state.api_key is not None:
        resp = _check_auth(request, state.api_key)
    fail = request.headers.get(HDR_FAIL)
    if resp is None and fail:
        resp = _injected_failure(fail)
    if resp is None and state.fail_next:  # a failure for an otherwise identical request
        resp = error_response(state.fail_next.popleft())
    if resp is None:
        try:
            resp = await handler(request)
        except ApiError as exc:
            resp = exc.response()
    entry["status"] = resp.status
    return resp


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    if "x-request-id" not in response.headers:
        response.headers["x-request-id"] = state_of(request).next_id("req_")
    if not request.path.startswith("/_dev/"):  # the account the call was billed to, as OpenAI says
        response.headers["openai-organization"] = request.headers.get(
            "OpenAI-Organization", DEFAULT_ORGANIZATION
        )
        response.headers["openai-project"] = request.headers.get("OpenAI-Project", DEFAULT_PROJECT)


# ----------------------------------------------------------------------------------------------------
# /_dev endpoints


async def dev_requests(request: web.Request) -> web.Response:
    log = list(state_of(request).log)
    path = request.query.get("path")
    if path:
        log = [e for e in log if e["path"] == path]
    return json_response(log)


async def dev_clear_requests(request: web.Request) -> web.Response:
    state = state_of(request)
    cleared = len(state.log)
    state.log.clear()
    return json_response({"cleared": cleared})


async def dev_stats(request: web.Request) -> web.Response:
    return json_response(state_of(request).stats())


async def dev_reset_stats(request: web.Request) -> web.Response:
    state = state_of(request)
    state.reset_stats()
    return json_response(state.stats())


async def dev_health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def not_found(request: web.Request) -> web.Response:
    return error_response(404, f"Invalid URL ({request.method} {request.path})", code=None)


def create_app(*, api_key: str | None = None, latency_ms: float = 0.0) -> web.Application:
    """The dev upstream app. `api_key`: required bearer token on `/v1`; `latency_ms`: base delay."""
    app = web.Application(middlewares=[dev_middleware], client_max_size=MAX_BODY)
    app[STATE_KEY] = DevState(api_key=api_key or None, latency_s=max(latency_ms, 0.0) / 1000.0)
    app.on_response_prepare.append(_on_prepare)
    responses.add_routes(app)
    chat.add_routes(app)
    misc.add_routes(app)
    r = app.router
    r.add_get("/_dev/requests", dev_requests)
    r.add_delete("/_dev/requests", dev_clear_requests)
    r.add_get("/_dev/stats", dev_stats)
    r.add_delete("/_dev/stats", dev_reset_stats)
    r.add_get("/_dev/health", dev_health)
    r.add_post("/_dev/fail-next", dev_fail_next)
    r.add_route("*", "/{tail:.*}", not_found)
    return app


# ----------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar dev-upstream",
        description="Local OpenAI-compatible stand-in upstream (Responses, Chat Completions, tools, usage).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8090, help="listen port (default 8090; 0 picks a free one)"
    )
    parser.add_argument(
        "--api-key", default=None, help="if set, require 'Authorization: Bearer <key>' (else 401)"
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay added before every /v1 response")
    return parser


async def serve(host: str, port: int, api_key: str | None, latency_ms: float) -> None:
    app = create_app(api_key=api_key, latency_ms=latency_ms)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        addr = runner.addresses[0]
        print(f"dev-upstream listening on http://{addr[0]}:{addr[1]}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port, args.api_key, args.latency_ms))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"dev-upstream: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0

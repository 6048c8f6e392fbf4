"""A bare aiohttp pass-through proxy: the reference point for the sidecar's CPU per request.

No policy, no parsing: read the body, swap the credential for the provider key, forward with one
pooled ClientSession, relay status, content type and body. Same event loop as the sidecar (uvloop).

    python bench/passthrough.py --port 8099 --upstream http://127.0.0.1:8090 --api-key sk-...
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)


def make_app(upstream: str, api_key: str) -> web.Application:
    auth = f"Bearer {api_key}"

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {"Authorization": auth, "Content-Type": request.headers.get("Content-Type", "")}
        session = request.app[SESSION]
        async with session.request(
            request.method, upstream + request.path_qs, data=body, headers=headers
        ) as up:
            payload = await up.read()
            return web.Response(body=payload, status=up.status, content_type=up.content_type)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=256)
        timeout = aiohttp.ClientTimeout(total=300, connect=5)
        app[SESSION] = aiohttp.ClientSession(connector=connector, timeout=timeout)
        yield
        await app[SESSION].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--api-key", required=True)
    args = parser.parse_args()
    app = make_app(args.upstream.rstrip("/"), args.api_key)
    try:
        import uvloop
    except ImportError:
        loop = None
    else:
        loop = uvloop.new_event_loop()
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()

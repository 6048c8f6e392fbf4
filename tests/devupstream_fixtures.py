"""Helpers to run the dev upstream in-process on a free loopback port (usable from any test module).

async with running_dev_upstream() as up:
    client = AsyncOpenAI(base_url=up.base_url, api_key="k", max_retries=0)
    ...
    assert up.stats()["streams_cancelled"] == 1
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sidecar.devupstream.common import STATE_KEY, DevState
from sidecar.devupstream.server import create_app


@dataclass
class DevUpstream:
    url: str  # http://127.0.0.1:PORT
    app: web.Application

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def state(self) -> DevState:
        return self.app[STATE_KEY]

    def requests(self) -> list[dict[str, Any]]:
        return list(self.state.log)

    def stats(self) -> dict[str, Any]:
        return self.state.stats()

    async def wait_for(self, key: str, value: int, within_s: float = 5.0) -> dict[str, Any]:
        """Wait until stats()[key] >= value; returns the stats."""
        deadline = time.monotonic() + within_s
        while self.stats()[key] < value:
            if time.monotonic() > deadline:
                raise AssertionError(f"{key} did not reach {value}: {self.stats()}")
            await asyncio.sleep(0.01)
        return self.stats()


@asynccontextmanager
async def running_dev_upstream(
    *, api_key: str | None = None, latency_ms: float = 0.0, handler_cancellation: bool = True
) -> AsyncIterator[DevUpstream]:
    app = create_app(api_key=api_key, latency_ms=latency_ms)
    runner = web.AppRunner(app, handler_cancellation=handler_cancellation, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield DevUpstream(url=f"http://{host}:{port}", app=app)
    finally:
        await runner.cleanup()

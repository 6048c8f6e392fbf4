"""The daemon engine: an OPA server's REST Data API (`POST /v1/data/<decision path>`).

It uses opa-python-client's async client on a pooled aiohttp session of our own (keep-alive). Retries
are off and the timeout is short: a decision that cannot be had quickly is a 503, not a stalled agent. The
timeout measures OPA (sidecar.deadline): the wait for one of the session's connections and the event
loop's stalls are the sidecar's own load, so a burst of calls does not blame a healthy daemon.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from opa_client import AsyncOpaClient

from sidecar.deadline import within
from sidecar.documents import PolicyInput
from sidecar.policy.engine import EngineError

log = logging.getLogger(__name__)
_T = TypeVar("_T")
CONNECTIONS = 64  # queries in flight at once; more wait for a connection slot, outside the timeout


class DaemonEngine:
    name = "daemon"

    def __init__(self, url: str, decision_path: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"SIDECAR_OPA_URL must be http(s)://host:port, not {url!r}")
        self._client = AsyncOpaClient(
            host=parts.hostname,
            port=parts.port or (443 if parts.scheme == "https" else 80),
            ssl=parts.scheme == "https",
            timeout=timeout,
            retries=0,
        )
        self._timeout = timeout
        self._slots = asyncio.Semaphore(CONNECTIONS)
        self._path = decision_path.strip("/")
        self._revision = ""

    @property
    def revision(self) -> str:
        return self._revision

    async def start(self) -> None:
        # The client's own session has a whole-request timeout, which counts the wait for a pooled
        # connection and the loop's stalls; ours has none: `_timed` bounds each request, connecting included.
        self._client._session = aiohttp.ClientSession(
            headers=self._client.headers,
            connector=aiohttp.TCPConnector(limit=CONNECTIONS),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def _timed(self, work: Callable[[], Awaitable[_T]]) -> _T:
        async with self._slots:
            return await within(self._timeout, work)

    async def close(self) -> None:
        await self._client.close_connection()

    async def query(self, path: str, doc: dict[str, Any]) -> Any:
        try:
            answer = await self._timed(lambda: self._client.query_rule(doc, package_path=path.strip("/")))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise EngineError(f"OPA at {self._client.root_url}: {type(exc).__name__}: {exc}") from None
        if not isinstance(answer, dict):
            raise EngineError("OPA answered with something other than a JSON object")
        return answer.get("result")

    async def evaluate(self, doc: PolicyInput) -> Any:
        return await self.query(self._path, dict(doc))

    async def refresh_revision(self) -> None:
        """Learn the loaded bundles' revisions from OPA's provenance block (for the audit and /readyz)."""
        url = f"{self._client.root_url}/data/{self._path}?provenance=true"

        async def fetch() -> Any:
            async with self._client._request("POST", url, json={"input": {}}) as resp:
                resp.raise_for_status()
                return await resp.json()

        try:
            answer = await self._timed(fetch)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineError(f"OPA at {self._client.root_url}: {exc}") from None
        bundles = answer.get("provenance", {}).get("bundles", {})
        revisions = sorted(f"{name}@{b.get('revision', '')}" for name, b in bundles.items())
        self._revision = ",".join(revisions)

    async def ready(self) -> tuple[bool, str]:
        try:
            healthy = await self._timed(lambda: self._client.check_health(query={"bundles": "true"}))
        except TimeoutError:
            healthy = False
        if not healthy:
            return False, f"OPA at {self._client.root_url} is not healthy (or its bundles are not activated)"
        try:
            await self.refresh_revision()
        except EngineError as exc:
            return False, str(exc)
        return True, f"OPA daemon bundles {self._revision or '(none)'}"

"""The daemon engine: an OPA server's REST Data API (`POST /v1/data/<decision path>`).

It uses opa-python-client's async client, which keeps one pooled aiohttp session (keep-alive). Retries
are off and the timeout is short: a decision that cannot be had quickly is a 503, not a stalled agent.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from opa_client import AsyncOpaClient

from sidecar.documents import PolicyInput
from sidecar.policy.engine import EngineError

log = logging.getLogger(__name__)


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
        self._path = decision_path.strip("/")
        self._revision = ""

    @property
    def revision(self) -> str:
        return self._revision

    async def start(self) -> None:
        await self._client._init_session()

    async def close(self) -> None:
        await self._client.close_connection()

    async def query(self, path: str, doc: dict[str, Any]) -> Any:
        try:
            answer = await self._client.query_rule(doc, package_path=path.strip("/"))
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
        try:
            async with self._client._request("POST", url, json={"input": {}}) as resp:
                resp.raise_for_status()
                answer = await resp.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineError(f"OPA at {self._client.root_url}: {exc}") from None
        bundles = answer.get("provenance", {}).get("bundles", {})
        revisions = sorted(f"{name}@{b.get('revision', '')}" for name, b in bundles.items())
        self._revision = ",".join(revisions)

    async def ready(self) -> tuple[bool, str]:
        healthy = await self._client.check_health(query={"bundles": "true"})
        if not healthy:
            return False, f"OPA at {self._client.root_url} is not healthy (or its bundles are not activated)"
        try:
            await self.refresh_revision()
        except EngineError as exc:
            return False, str(exc)
        return True, f"OPA daemon bundles {self._revision or '(none)'}"

"""Keeping the embedded engine's bundle current: watch a directory or file, or poll a bundle URL with
ETag as OPA's bundle plugin does. A bundle that fails to load or verify is logged and skipped; the
engine keeps serving the last good one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import aiohttp
from watchfiles import awatch

from sidecar.config import Settings
from sidecar.policy import signing
from sidecar.policy.bundle import Bundle, BundleError, parse, read_files, read_tarball
from sidecar.policy.embedded import EmbeddedEngine
from sidecar.policy.engine import EngineError

log = logging.getLogger(__name__)


def _key_pem(setting: str) -> str:
    # The setting holds a PEM file's path or the PEM itself (handy in an environment variable).
    return setting if setting.lstrip().startswith("-----BEGIN") else Path(setting).read_text()


def accept(files: dict[str, bytes], source: str, settings: Settings) -> Bundle:
    """Verify (when a key is configured) and parse a bundle's files."""
    if settings.bundle_verification_key:
        signing.verify(
            files,
            _key_pem(settings.bundle_verification_key),
            settings.bundle_verification_key_id,
            settings.bundle_signing_alg,
        )
    return parse(files, source)


def load_configured(settings: Settings) -> Bundle:
    return accept(read_files(settings.bundle), settings.bundle, settings)


class BundleReloader:
    def __init__(self, engine: EmbeddedEngine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self._etag: str | None = None
        self.reloads = 0
        self.failures = 0

    def _swap(self, files: dict[str, bytes], source: str) -> bool:
        try:
            bundle = accept(files, source, self._settings)
            if bundle.files == self._engine.bundle.files:
                return False
            self._engine.swap(bundle)
        except (BundleError, EngineError) as exc:
            self.failures += 1
            log.error("bundle refused; keeping the current one", extra={"source": source, "error": str(exc)})
            return False
        self.reloads += 1
        return True

    def reload_path(self) -> bool:
        source = self._settings.bundle
        try:
            files = read_files(source)
        except (BundleError, OSError) as exc:
            self.failures += 1
            log.error(
                "bundle unreadable; keeping the current one", extra={"source": source, "error": str(exc)}
            )
            return False
        return self._swap(files, source)

    async def watch(self, stop: asyncio.Event) -> None:
        path = Path(self._settings.bundle)
        target = path if await asyncio.to_thread(path.is_dir) else path.parent
        async for _changes in awatch(target, stop_event=stop, debounce=200, step=50, recursive=True):
            self.reload_path()

    async def poll_once(self, session: aiohttp.ClientSession) -> bool:
        url = self._settings.bundle_url
        headers = {"If-None-Match": self._etag} if self._etag else {}
        try:
            async with session.get(url, headers=headers) as resp:
                if resp.status == 304:
                    return False
                if resp.status != 200:
                    raise BundleError(f"HTTP {resp.status}")
                blob = await resp.read()
                etag = resp.headers.get("ETag")
        except (aiohttp.ClientError, TimeoutError, BundleError) as exc:
            self.failures += 1
            log.error("bundle download failed", extra={"url": url, "error": str(exc)})
            return False
        try:
            files = read_tarball(blob, url)
        except BundleError as exc:
            self.failures += 1
            log.error("bundle download unusable", extra={"url": url, "error": str(exc)})
            return False
        changed = self._swap(files, url)
        if changed or self._etag is None:
            self._etag = etag
        return changed

    async def poll(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                await self.poll_once(session)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self._settings.bundle_poll_seconds)

    async def run(self, stop: asyncio.Event) -> None:
        if self._settings.bundle_url:
            await self.poll(stop)
        elif self._settings.bundle_watch:
            await self.watch(stop)

"""Shared fixtures: real processes on free loopback ports.

- `upstream`: `sidecar dev-upstream` (the only stand-in: the OpenAI API itself) in a subprocess.
- `make_sidecar`: a sidecar in this test's event loop, built from settings exactly as `serve` does.
- `opa_bin` / `opa_daemon`: the real `opa` binary (scripts/get-opa.sh) and `opa run --server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from sidecar import config
from sidecar.app import Sidecar, listen
from sidecar.devupstream.common import TEST_HEADERS
from tests.redis_fixtures import redis_server, redis_url  # noqa: F401  (shared: one redis-server per run)

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "rego"
PROVIDER_KEY = "sk-provider-SECRET-9f8e7d6c5b4a"
ACME_KEY = "ck-acme-agent-key"
GLOBEX_KEY = "ck-globex-agent-key"
CALLERS = {
    ACME_KEY: {"sub": "system:serviceaccount:agents:support-bot", "tenant": "acme", "groups": ["agents"]},
    GLOBEX_KEY: {"sub": "system:serviceaccount:agents:globex-bot", "tenant": "globex", "groups": ["agents"]},
    "ck-nobody-key": {"sub": "nobody", "tenant": "no-such-tenant", "groups": []},
    # Approvers on the admin API (static admin auth): one in the shipped bundle's approver group, one not.
    "ck-ml-lead-key": {"sub": "alice", "tenant": "acme", "groups": ["ml-leads"]},
    "ck-staff-key": {"sub": "mallory", "tenant": "acme", "groups": ["staff"]},
}

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers, even if not 200
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered at {url} within {timeout}s")


@dataclass
class Upstream:
    url: str
    proc: subprocess.Popen[bytes]

    async def _get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as s, s.get(self.url + path) as r:
            return await r.json()

    async def requests(self) -> list[dict[str, Any]]:
        return list(await self._get("/_dev/requests"))

    async def fail_next(self, status: int, count: int = 1) -> None:
        body = {"status": status, "count": count}
        async with aiohttp.ClientSession() as s, s.post(self.url + "/_dev/fail-next", json=body) as r:
            assert r.status == 200, await r.text()

    def requests_sync(self) -> list[dict[str, Any]]:
        """The same, for synchronous tests (hypothesis drives those)."""
        import urllib.request

        with urllib.request.urlopen(self.url + "/_dev/requests", timeout=10) as resp:
            return list(json.load(resp))

    async def stats(self) -> dict[str, int]:
        return dict(await self._get("/_dev/stats"))

    async def clear(self) -> None:
        async with aiohttp.ClientSession() as s:
            async with s.delete(self.url + "/_dev/requests"):
                pass
            async with s.delete(self.url + "/_dev/stats"):
                pass


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "dev-upstream", "--port", str(port), "--api-key", PROVIDER_KEY],
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/_dev/stats", proc=proc)
        yield Upstream(url, proc)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    path.write_text(json.dumps(CALLERS))
    return str(path)


@dataclass
class Served:
    """A `sidecar serve` process (a real process: what an agent's pod runs)."""

    port: int
    admin: int
    proc: subprocess.Popen[bytes]
    audit: Path

    def audited(self, request_id: str) -> list[dict[str, Any]]:
        lines = self.audit.read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["decision_id"] == request_id]


@contextlib.contextmanager
def sidecar_process(upstream: Upstream, keys_file: str, folder: Path, **settings: str) -> Iterator[Served]:
    """Run `sidecar serve` on free ports against `upstream` until the block ends; `settings` add to or
    override SIDECAR_* variables (the bundle defaults to the shipped one, PII to patterns)."""
    port, admin = free_port(), free_port()
    env = {
        **os.environ,
        "SIDECAR_PORT": str(port),
        "SIDECAR_ADMIN_PORT": str(admin),
        "SIDECAR_UPSTREAM_URL": upstream.url,
        "SIDECAR_UPSTREAM_API_KEY": PROVIDER_KEY,
        "SIDECAR_STATIC_KEYS_FILE": keys_file,
        "SIDECAR_AUDIT_LOG": str(folder / "audit.log"),
        "SIDECAR_BUNDLE": str(BUNDLE),
        "SIDECAR_BUNDLE_WATCH": "false",
        "SIDECAR_PII_MODE": "patterns",
        "SIDECAR_PII_WORKERS": "1",
        "SIDECAR_LOG_LEVEL": "error",
        **settings,
    }
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve"], cwd=ROOT, env=env)
    try:
        wait_http(f"http://127.0.0.1:{admin}/readyz", timeout=60, proc=proc)
        yield Served(port, admin, proc, folder / "audit.log")
    finally:
        proc.terminate()
        proc.wait(30)


@dataclass
class RunningSidecar:
    url: str  # base URL for OpenAI clients (ends in /v1)
    admin: str
    sidecar: Sidecar
    audit_path: Path
    runners: list[web.AppRunner]

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line.strip()]

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()
        await self.sidecar.close()


MakeSidecar = Callable[..., Awaitable[RunningSidecar]]


@pytest.fixture
async def make_sidecar(upstream: Upstream, keys_file: str, tmp_path: Path) -> AsyncIterator[MakeSidecar]:
    running: list[RunningSidecar] = []

    async def make(**env: str) -> RunningSidecar:
        audit_path = tmp_path / f"audit-{len(running)}.log"
        environ = {
            "SIDECAR_PORT": str(free_port()),
            "SIDECAR_ADMIN_PORT": str(free_port()),
            "SIDECAR_UPSTREAM_URL": upstream.url,
            "SIDECAR_UPSTREAM_API_KEY": PROVIDER_KEY,
            "SIDECAR_STATIC_KEYS_FILE": keys_file,
            "SIDECAR_AUDIT_LOG": str(audit_path),
            "SIDECAR_BUNDLE": str(BUNDLE),
            "SIDECAR_BUNDLE_WATCH": "false",
            "SIDECAR_UPSTREAM_READ_TIMEOUT": "5",
            # Request headers are forwarded by allowlist: the dev upstream's fault injection is added to it.
            "SIDECAR_FORWARD_HEADERS": ",".join(TEST_HEADERS),
            **env,
        }
        settings = config.load(environ=environ)
        sidecar = await Sidecar.create(settings)
        await sidecar.start()
        runners = await listen(sidecar)
        handle = RunningSidecar(
            f"http://127.0.0.1:{settings.port}/v1",
            f"http://127.0.0.1:{settings.admin_port}",
            sidecar,
            audit_path,
            runners,
        )
        running.append(handle)
        return handle

    yield make
    for handle in running:
        await handle.stop()


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An RSA key pair for bundle signing: (private PEM path, public PEM path)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    folder = tmp_path_factory.mktemp("signing")
    private, public = folder / "private.pem", folder / "public.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@pytest.fixture(scope="session")
def opa_bin() -> str:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "get-opa.sh")], capture_output=True, text=True)
    path = proc.stdout.strip()
    if proc.returncode != 0 or not path or not os.access(path, os.X_OK):
        pytest.fail(
            "These tests need the real `opa` binary. Install it with `make opa` (scripts/get-opa.sh builds it "
            f"offline from Debian packages), or put `opa` on PATH.\n{proc.stderr[-2000:]}"
        )
    return path


@pytest.fixture(scope="session")
def opa_daemon(opa_bin: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            opa_bin,
            "run",
            "--server",
            "--addr",
            f"127.0.0.1:{port}",
            "--log-level",
            "error",
            "-b",
            str(BUNDLE),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc=proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


# Every openai client a test opens is kept until the test ends and then closed. One left to the garbage
# collector breaks the sidecars that share this process: asyncio's transport finalizer closes the client's
# sockets, then openai's finalizer schedules aclose() on whatever loop the collecting thread runs, and that
# aclose unregisters the old fd numbers from the session loop's selector. By then a sidecar may have
# accepted a connection on one of those numbers: it is never read, and its caller waits until it times out.
_OPENED: list[openai.AsyncOpenAI] = []
_client_init = openai.AsyncOpenAI.__init__


def _kept_init(self: openai.AsyncOpenAI, *args: Any, **kwargs: Any) -> None:
    _client_init(self, *args, **kwargs)
    _OPENED.append(self)


openai.AsyncOpenAI.__init__ = _kept_init  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
async def _close_openai_clients() -> AsyncIterator[None]:
    start = len(_OPENED)  # clients of wider-scoped fixtures come first; those fixtures close them
    yield
    opened = _OPENED[start:]
    del _OPENED[start:]
    for client in opened:
        await client.close()

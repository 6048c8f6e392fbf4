"""A real `redis-server` for the tests (no fakeredis, no mocks).

- `redis_server` (session): starts `redis-server` on a free loopback port, without persistence, waits until it
  answers PING, yields its URL `redis://127.0.0.1:PORT/0`, and stops it at the end. Fails (never skips) when
  `redis-server` is not installed.
- `redis_url` (function): the same URL, after a FLUSHDB, so every test starts from an empty database.

Import both into a conftest.py: `from tests.redis_fixtures import redis_server, redis_url`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

INSTALL_HINT = (
    "These tests need a real `redis-server` binary on PATH. Install it with "
    "`apt-get install redis-server` (Debian/Ubuntu; `brew install redis` on macOS)."
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis_server(workdir: Path, attempts: int = 3) -> tuple[subprocess.Popen[bytes], str]:
    """Start redis-server on a free loopback port; (process, URL) once it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    last = ""
    for _ in range(attempts):  # another process may take the port between probing and binding
        port = _free_port()
        log = workdir / f"redis-{port}.log"
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
                "--logfile",
                str(log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if client.ping():
                        return proc, url
                except redis.RedisError:
                    time.sleep(0.02)
        finally:
            client.close()
        stop_redis_server(proc)
        last = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    pytest.fail(f"redis-server did not answer PING after {attempts} attempts:\n{last}", pytrace=False)


def stop_redis_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_redis_server(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        stop_redis_server(proc)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    client = redis.Redis.from_url(redis_server)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server

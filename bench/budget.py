"""Budget store latency, as `make bench` reports it (issue 4 target: reserve + settle p50 <= 0.5 ms with Redis
on loopback).

Times sequential reserve + settle round trips (two Lua scripts, two round trips) against a real Redis, and
the in-memory store beside it for reference. Without --redis-url it starts its own `redis-server` on a free
loopback port (apt-get install redis-server).

    .venv/bin/python bench/budget.py [--redis-url URL] [-n 5000] [--loop uvloop|asyncio] [--json FILE]

`reserve_settle_latency(store, n)` is the reusable measurement (the tests print it too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sidecar.budget.memory_store import MemoryBudgetStore  # noqa: E402
from sidecar.budget.redis_store import RedisBudgetStore  # noqa: E402
from sidecar.budget.store import BudgetStore, Reservation  # noqa: E402

TARGET_P50_MS = 0.5


async def reserve_settle_latency(
    store: BudgetStore, n: int = 2000, warmup: int = 200, tenant: str = "bench"
) -> dict[str, float]:
    """Milliseconds per reserve + settle pair (sequential, one tenant, all four windows tracked)."""
    limits = {"minute": 10**12, "hour": 10**12, "day": 10**12, "month": 10**13}
    stamp = time.time_ns()
    samples: list[float] = []
    for i in range(warmup + n):
        start = time.perf_counter()
        reservation = await store.reserve(tenant, limits, 1500, f"req_bench_{stamp}_{i}", 600)
        if not isinstance(reservation, Reservation):
            raise RuntimeError(f"benchmark reservation refused: {reservation}")
        await store.settle(reservation, 900)
        if i >= warmup:
            samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {
        "n": float(n),
        "p50_ms": statistics.median(samples),
        "p90_ms": samples[int(0.90 * (n - 1))],
        "p99_ms": samples[int(0.99 * (n - 1))],
        "mean_ms": statistics.fmean(samples),
    }


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench/budget.py needs redis-server (apt-get install redis-server) or --redis-url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with tempfile.TemporaryDirectory() as workdir:
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
                workdir,
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("redis-server did not start") from None
                    time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


async def ping_pair_latency(store: RedisBudgetStore, n: int = 2000) -> dict[str, float]:
    """The floor on this machine: two PING round trips through the same client, as milliseconds."""
    samples: list[float] = []
    for _ in range(n):
        start = time.perf_counter()
        await store.ping()
        await store.ping()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {
        "n": float(n),
        "p50_ms": statistics.median(samples),
        "p90_ms": samples[int(0.90 * (n - 1))],
        "p99_ms": samples[int(0.99 * (n - 1))],
        "mean_ms": statistics.fmean(samples),
    }


async def run(url: str, n: int) -> dict[str, Any]:
    redis_store = RedisBudgetStore(url)
    try:
        await redis_store.ping()
        redis_figures = await reserve_settle_latency(redis_store, n)
        floor = await ping_pair_latency(redis_store, n)
    finally:
        await redis_store.close()
    memory_figures = await reserve_settle_latency(MemoryBudgetStore(), n)
    return {
        "redis": redis_figures,
        "memory": memory_figures,
        "2 pings": floor,
        "target_p50_ms": TARGET_P50_MS,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", help="measure this Redis instead of starting one")
    parser.add_argument("-n", type=int, default=5000, help="measured round trips (after 200 warm-up)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--quick", action="store_true", help="n = 1000")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    n = 1000 if args.quick else args.n

    def measure(url: str) -> dict[str, Any]:
        if args.loop == "uvloop":
            import uvloop

            return uvloop.run(run(url, n))
        return asyncio.run(run(url, n))

    if args.redis_url:
        figures = measure(args.redis_url)
    else:
        with redis_server() as url:
            figures = measure(url)
    red = figures["redis"]
    verdict = "ok" if red["p50_ms"] <= TARGET_P50_MS else "MISS"
    print(f"budget reserve+settle ({args.loop}, n={n}, sequential)")
    print(f"  {'store':<8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name in ("redis", "memory", "2 pings"):
        row = figures[name]
        cells = " ".join(f"{row[k]:>8.3f}" for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"))
        print(f"  {name:<8} {cells}")
    print("  (2 pings: two bare PING round trips through the same client, the floor of two calls here)")
    print(f"  target: redis p50 <= {TARGET_P50_MS} ms: {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A small closed-loop HTTP load generator (used when `wrk` is not installed).

Runs in its own process so that its CPU is not the measured process's. `--concurrency` workers share
one keep-alive connection pool and send `--requests` POSTs in total; prints one JSON line with the
same fields as bench/post.lua's wrk report (latencies in microseconds).

    python bench/loadgen.py --url http://127.0.0.1:8080/v1/responses --key K --body '{...}' -n 2000 -c 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time

import aiohttp


def percentile(sorted_values: list[int], pct: float) -> int:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0
    rank = min(max(1, math.ceil(pct / 100 * len(sorted_values))), len(sorted_values))
    return sorted_values[rank - 1]


async def run(url: str, key: str, body: bytes, total: int, concurrency: int) -> dict[str, int]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies: list[int] = []
    counters = {"issued": 0, "non200": 0, "first_bad_status": 0, "socket_errors": 0}
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while counters["issued"] < total:
                counters["issued"] += 1
                started = time.perf_counter_ns()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError):
                    counters["socket_errors"] += 1
                    continue
                latencies.append((time.perf_counter_ns() - started) // 1000)
                if status != 200:
                    counters["non200"] += 1
                    counters["first_bad_status"] = counters["first_bad_status"] or status

        started = time.perf_counter_ns()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed_us = (time.perf_counter_ns() - started) // 1000
    latencies.sort()
    return {
        "requests": len(latencies),
        "duration_us": elapsed_us,
        "p50_us": percentile(latencies, 50),
        "p99_us": percentile(latencies, 99),
        "max_us": latencies[-1] if latencies else 0,
        "non200": counters["non200"],
        "first_bad_status": counters["first_bad_status"],
        "socket_errors": counters["socket_errors"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--body", required=True, help="JSON request body")
    parser.add_argument("-n", "--requests", type=int, required=True)
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    args = parser.parse_args()
    coro = run(args.url, args.key, args.body.encode(), args.requests, args.concurrency)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
    else:
        result = uvloop.run(coro)
    print("__RESULT__ " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

"""Run one closed-loop load (a fixed number of POSTs at a fixed concurrency) in a separate process.

`wrk` when it is installed (C, so the client costs the measured machine little; bench/post.lua sends the
body and stops after N responses), else bench/loadgen.py (aiohttp).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from procs import Children, pinned

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    non200: int
    first_bad_status: int
    socket_errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.non200 + self.socket_errors

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "rps": round(self.rps, 1)}

    @classmethod
    def parse(cls, doc: dict[str, Any]) -> LoadResult:
        return cls(
            requests=int(doc["requests"]),
            seconds=int(doc["duration_us"]) / 1e6,
            p50_ms=int(doc["p50_us"]) / 1000,
            p99_ms=int(doc["p99_us"]) / 1000,
            max_ms=int(doc["max_us"]) / 1000,
            non200=int(doc["non200"]),
            first_bad_status=int(doc["first_bad_status"]),
            socket_errors=int(doc["socket_errors"]),
        )


class LoadError(RuntimeError):
    pass


class LoadGen:
    def __init__(self, children: Children, cpus: tuple[int, ...], prefer: str = "auto") -> None:
        self.children = children
        self.cpus = cpus
        wrk = shutil.which("wrk")
        if prefer == "python" or (prefer == "auto" and wrk is None):
            self.kind, self.wrk = "python (bench/loadgen.py, aiohttp)", ""
        elif wrk is None:
            raise LoadError("--loadgen wrk: wrk is not installed (apt-get install wrk)")
        else:
            self.kind, self.wrk = "wrk", wrk

    def run(self, url: str, key: str, body: str, requests: int, concurrency: int) -> LoadResult:
        if self.wrk:
            return self._wrk(url, key, body, requests, concurrency)
        return self._python(url, key, body, requests, concurrency)

    def _wrk(self, url: str, key: str, body: str, requests: int, concurrency: int) -> LoadResult:
        cap_s = max(120, requests // 5)  # a ceiling only: the script stops wrk after `requests` responses
        argv = [self.wrk, "-t1", f"-c{concurrency}", f"-d{cap_s}s", "--timeout", "30s"]
        argv += ["-s", str(HERE / "post.lua"), url]
        env = {**os.environ, "BENCH_BODY": body, "BENCH_KEY": key, "BENCH_N": str(requests)}
        proc = self.children.start(pinned(argv, self.cpus), env=env, stdout_pipe=True)
        result: dict[str, Any] | None = None
        tail: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("__DONE__"):
                    proc.send_signal(signal.SIGINT)  # wrk then reports at once instead of sleeping out -d
                elif line.startswith("__RESULT__ "):
                    result = json.loads(line.removeprefix("__RESULT__ "))
                else:
                    tail = [*tail[-20:], line.rstrip()]
            proc.wait(30)
        finally:
            self.children.stop(proc)
        if result is None:
            raise LoadError(f"wrk gave no result (exit {proc.returncode}): " + " | ".join(tail[-5:]))
        return LoadResult.parse(result)

    def _python(self, url: str, key: str, body: str, requests: int, concurrency: int) -> LoadResult:
        argv = [sys.executable, str(HERE / "loadgen.py"), "--url", url, "--key", key, "--body", body]
        argv += ["-n", str(requests), "-c", str(concurrency)]
        proc = self.children.start(pinned(argv, self.cpus), stdout_pipe=True)
        try:
            out, _ = proc.communicate(timeout=max(300, requests // 5))
        except subprocess.TimeoutExpired:
            raise LoadError("bench/loadgen.py timed out") from None
        finally:
            self.children.stop(proc)
        for line in (out or "").splitlines():
            if line.startswith("__RESULT__ "):
                return LoadResult.parse(json.loads(line.removeprefix("__RESULT__ ")))
        raise LoadError(f"bench/loadgen.py gave no result (exit {proc.returncode})")

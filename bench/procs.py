"""Benchmark helpers: child processes on loopback, CPU pinning, CPU-time accounting.

Every child starts in its own session (process group), so Ctrl-C in the terminal reaches only the
harness, which then ends each group it started, and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Pinning:
    """Which CPUs the measured process and the rest (upstream, load generator) may use."""

    target: tuple[int, ...] = ()
    others: tuple[int, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.target)

    def describe(self) -> str:
        if not self.active:
            return "no CPU pinning"
        target, others = _cpus(self.target), _cpus(self.others)
        return f"measured process on CPU {target}, upstream + load generator on CPU {others}"


def _cpus(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in cpus)


def plan_pinning(enabled: bool) -> tuple[Pinning, str]:
    """Split the CPUs: the first for the process under test, the others for everything else."""
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled:
        return Pinning(), "pinning disabled (--no-pin)"
    if len(cpus) < 2:
        return Pinning(), "one CPU only: no pinning"
    if shutil.which("taskset") is None:
        return Pinning(), "taskset not found: no pinning"
    return Pinning((cpus[0],), tuple(cpus[1:])), ""


def pinned(argv: Sequence[str], cpus: Sequence[int]) -> list[str]:
    if not cpus:
        return list(argv)
    return ["taskset", "-c", _cpus(cpus), *argv]


@dataclass
class Children:
    """The harness's own child processes; `stop_all` ends each of them (and only them)."""

    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        cwd: Path | None = None,
        stdout_pipe: bool = False,
    ) -> subprocess.Popen[Any]:
        out: Any = subprocess.PIPE if stdout_pipe else subprocess.DEVNULL
        err: Any = subprocess.DEVNULL
        if log is not None:
            handle = log.open("ab")
            err = handle
            if not stdout_pipe:
                out = handle
        proc = subprocess.Popen(
            list(argv),
            env=None if env is None else dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            text=stdout_pipe,
        )
        if log is not None:
            handle.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        else:
            # The leader is gone; make sure nothing it started in its group lingers.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def wait_http(url: str, proc: subprocess.Popen[Any], timeout: float = 60.0, want: int | None = None) -> None:
    """Wait until `url` answers (with status `want`, if given); fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if want is None or resp.status == want:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            if want is None or exc.code == want:
                return
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {timeout:.0f}s ({last})")


def post_json(url: str, key: str, body: Mapping[str, Any], timeout: float = 30.0) -> tuple[int, str]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")


def delete(url: str) -> None:
    with contextlib.suppress(OSError):
        urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=5).close()


def _descendants(pid: int) -> list[int]:
    """`pid` and its live descendants (from /proc/*/stat parent links)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads) and of its live descendants, in seconds."""
    total = 0
    for p in _descendants(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5): utime, stime
    return total / CLK_TCK


@dataclass(frozen=True, slots=True)
class CpuSample:
    at: float  # monotonic seconds
    busy: float  # CPU seconds the whole machine spent busy (user, nice, system, irq, softirq)
    steal: float  # CPU seconds the hypervisor gave to other guests
    ours: float  # CPU seconds of this harness and every child it started (live or reaped)


def sample_cpu(children: Children) -> CpuSample:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6]
    steal = fields[7] if len(fields) > 7 else 0
    stat = Path("/proc/self/stat").read_text()
    own = [int(x) for x in stat[stat.rindex(")") + 2 :].split()[11:15]]  # utime stime cutime cstime
    ours = sum(own) / CLK_TCK + sum(cpu_seconds(p.pid) for p in children.procs if p.poll() is None)
    return CpuSample(time.monotonic(), busy / CLK_TCK, steal / CLK_TCK, ours)


def background_load(start: CpuSample, end: CpuSample) -> tuple[float, float]:
    """CPUs' worth of work by other processes, and of hypervisor steal, between two samples."""
    wall = max(end.at - start.at, 1e-9)
    others = (end.busy - start.busy) - (end.ours - start.ours)
    return max(others, 0.0) / wall, (end.steal - start.steal) / wall


def run_quiet(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
    """Run a short command: its exit status, stdout, and the tail of stderr."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return -1, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr[-3000:]


def note(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)

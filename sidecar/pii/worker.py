"""What runs inside a detector worker process: its set-up (death with the sidecar, a memory ceiling, the
detector) and the task it serves."""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import sys
from collections.abc import Sequence
from typing import Any

from sidecar.pii.engine import Detector, PiiConfig, Span

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_WARM_TIMEOUT = 300.0  # seconds for every worker of a pool to build its detector (a dead one breaks it first)

_detector: Detector | None = None
_started: Any = None  # the pool's multiprocessing Barrier: every worker waits at it once, when warming up


class WorkerOutOfMemory(Exception):
    """A task hit the worker's memory ceiling (SIDECAR_PII_WORKER_MEMORY_MB). Crosses back to the sidecar
    in place of the MemoryError, whose frames (and the memory they hold) are released first."""


def _die_with_parent(parent: int) -> None:
    """On Linux, have the kernel SIGTERM this worker when the sidecar dies, even by SIGKILL: an orphaned
    worker would otherwise keep its model's memory (and any inherited pipes) forever. The kernel ties this
    to the *thread* that started the worker, so the pool only starts workers from long-lived threads."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the sidecar died before the request took effect
        os._exit(0)


def _limit_memory(headroom_mb: int) -> None:
    """Cap the address space at what the warmed-up worker maps plus `headroom_mb`, so a runaway task fails
    with MemoryError in this worker instead of drawing the node's OOM killer. Relative to the warm size
    because that size varies with the machine (thread stacks, BLAS buffers), not with the traffic."""
    if headroom_mb <= 0 or not sys.platform.startswith("linux"):
        return
    with open("/proc/self/statm") as fh:
        mapped = int(fh.read().split()[0]) * resource.getpagesize()
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + headroom_mb * 1024 * 1024
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def init(config: PiiConfig, parent: int, memory_mb: int, started: Any) -> None:
    """The pool's initializer: one detector per worker process, built and warmed before any task."""
    global _detector, _started  # noqa: PLW0603
    _die_with_parent(parent)
    _detector = Detector(config)
    _detector.warm_up()
    _limit_memory(memory_mb)
    _started = started


def warmed() -> int:
    """The pool's warm-up task, one per worker: it returns once every worker has built its detector, so no
    worker takes two of them and a pool is only called warm when all of its workers are."""
    _started.wait(_WARM_TIMEOUT)
    return os.getpid()


def analyze(texts: Sequence[str]) -> list[list[Span]]:
    assert _detector is not None
    try:
        return _detector.analyze_batch(texts)
    except MemoryError:
        log.error("PII worker hit its memory ceiling", extra={"chars": sum(map(len, texts))})
        raise WorkerOutOfMemory from None

"""Detection off the event loop: a process pool of Presidio detectors, and a cache of results.

spaCy holds the GIL, so threads would not add throughput and would stall the loop; processes do both.
Workers are recycled after `max_tasks_per_child` tasks because spaCy's string store only grows. One pool
serves every sidecar in a process (keyed by configuration), so tests and reloads do not pay start-up twice.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import hashlib
import multiprocessing
import os
import signal
import sys
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from sidecar.pii.engine import Detector, PiiConfig, Span

_detector: Detector | None = None


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """On Linux, have the kernel SIGTERM this worker when the sidecar dies, even by SIGKILL: an orphaned
    worker would otherwise keep its model's memory (and any inherited pipes) forever."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the sidecar died before the request took effect
        os._exit(0)


def _init_worker(config: PiiConfig, parent: int) -> None:
    global _detector  # noqa: PLW0603  (one detector per worker process, built by the pool initializer)
    _die_with_parent(parent)
    _detector = Detector(config)
    _detector.warm_up()


def _analyze(texts: Sequence[str]) -> list[list[Span]]:
    assert _detector is not None
    return _detector.analyze_batch(texts)


class DetectorPool:
    _shared: dict[tuple[str, int, int], DetectorPool] = {}

    def __init__(self, config: PiiConfig, workers: int, max_tasks_per_child: int) -> None:
        self.workers = max(1, workers)
        self._executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(config, os.getpid()),
            max_tasks_per_child=max_tasks_per_child,
        )

    @classmethod
    def shared(cls, config: PiiConfig, workers: int, max_tasks_per_child: int) -> DetectorPool:
        key = (config.fingerprint(), workers, max_tasks_per_child)
        pool = cls._shared.get(key)
        if pool is None:
            pool = cls._shared[key] = cls(config, workers, max_tasks_per_child)
        return pool

    async def warm_up(self) -> None:
        """Start every worker (each builds and warms its detector) before the first call needs one."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *[loop.run_in_executor(self._executor, _analyze, ["warm up"]) for _ in range(self.workers)]
        )

    async def analyze(self, texts: list[str]) -> list[list[Span]]:
        """Spans for each text, spread over the workers in batches of similar size."""
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        batches = _split(texts, self.workers)
        results = await asyncio.gather(*[loop.run_in_executor(self._executor, _analyze, b) for b in batches])
        return [spans for batch in results for spans in batch]

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _split(texts: list[str], parts: int) -> list[list[str]]:
    """Contiguous batches of roughly equal total length (order is kept)."""
    total = sum(len(t) for t in texts)
    if parts <= 1 or len(texts) == 1 or total < 4096:
        return [texts]
    target = total / parts
    batches: list[list[str]] = [[]]
    size = 0
    for text in texts:
        if size >= target and len(batches) < parts:
            batches.append([])
            size = 0
        batches[-1].append(text)
        size += len(text)
    return batches


@atexit.register
def _shutdown_shared() -> None:
    for pool in DetectorPool._shared.values():
        pool.shutdown()


class SpanCache:
    """Bounded LRU of detection results keyed by a hash of the text and the detector's configuration.

    Agents resend the whole conversation every turn; with this, a turn only analyses text it has not seen.
    It holds digests and spans, never text.
    """

    def __init__(self, fingerprint: str, entries: int) -> None:
        self._salt = fingerprint.encode()
        self._entries = entries
        self._data: OrderedDict[bytes, tuple[Span, ...]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def key(self, text: str) -> bytes:
        return hashlib.blake2b(text.encode(), digest_size=16, key=self._salt[:64]).digest()

    def get(self, key: bytes) -> tuple[Span, ...] | None:
        spans = self._data.get(key)
        if spans is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return spans

    def put(self, key: bytes, spans: Sequence[Span]) -> None:
        self._data[key] = tuple(spans)
        self._data.move_to_end(key)
        while len(self._data) > self._entries:
            self._data.popitem(last=False)

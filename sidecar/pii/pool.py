"""Detection off the event loop: a process pool of Presidio detectors that replaces itself when a worker
dies or hangs.

spaCy holds the GIL, so threads would not add throughput and would stall the loop; processes do both.
Workers are recycled after `max_tasks_per_child` tasks because spaCy's string store only grows. One pool
serves every sidecar in a process (keyed by configuration), so tests and reloads do not pay start-up twice.

Bounded tasks: a task holds at most `chunk_chars` characters (long texts are cut into overlapping windows,
`sidecar.pii.spans`), and one call has at most `workers` tasks queued or running, so a huge request needs
no huge worker, and the calls behind it take turns with it instead of waiting for all of it.

Replacement: one dead worker (the OOM killer, a crash, a kill) breaks the whole `ProcessPoolExecutor`:
every task on it fails and it takes no more. The pool's keeper thread notices within `_POLL` seconds (or a
failed call tells it), waits out a backoff, starts a new executor and warms it; only the keeper starts
executors, so there is one rebuild however many calls fail, and at most `workers` live processes per
executor. The backoff is none for a first break, then 0.5 s doubling up to SIDECAR_PII_RESTART_BACKOFF_MAX
while breaks keep coming (back to none after twice that long without one), so an agent that kills workers
on purpose gets at most one rebuild per backoff period. Calls on the broken executor fail with 503
`pii_unavailable` (reason `worker_died`); calls that arrive meanwhile wait for the new one within
SIDECAR_PII_TIMEOUT (then reason `restarting`); `status()` feeds /readyz. A task still running `hung_after`
seconds past its timeout (bounded tasks take about a second) means a hung worker: the keeper kills the
executor's workers, and the pool is replaced the same way.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from sidecar.deadline import PerLoop, within
from sidecar.errors import SidecarError
from sidecar.pii import worker
from sidecar.pii.engine import PiiConfig, Span
from sidecar.pii.spans import batches, merge, windows

log = logging.getLogger(__name__)

_POLL = 0.25  # seconds between the keeper's looks for a broken executor
_BACKOFF_FIRST = 0.5  # the wait before a rebuild that follows a recent one; doubles while breaks continue
_SPLIT_FROM = 4096  # characters: less than this goes to one worker (a second round trip costs more)
_Piece = tuple[int, int, str]  # (index of the text, index of the window, the window's text)


@dataclass(slots=True)
class PiiUnavailable(SidecarError):
    """503 `pii_unavailable`; `reason` (worker_died, restarting, timeout, memory_limit, detector_error)
    goes to the audit record."""

    reason: str = ""


def unavailable(reason: str, message: str, *, retry: bool = True) -> PiiUnavailable:
    headers = {"retry-after": "1"} if retry else {"x-should-retry": "false"}
    return PiiUnavailable(503, "pii_unavailable", message, headers, reason=reason)


def _pending() -> Future[None]:
    """A future that waiters cannot cancel for one another (a running future ignores `cancel`)."""
    future: Future[None] = Future()
    future.set_running_or_notify_cancel()
    return future


def _broken(executor: ProcessPoolExecutor) -> bool:
    # `_broken` is private, but set by the executor itself the moment it sees a worker die (CPython 3.3+).
    return bool(getattr(executor, "_broken", False))


def _processes(executor: ProcessPoolExecutor | None) -> dict[int, Any]:
    # `_processes` (pid -> Process) is private too, and stable since CPython 3.2. Copied: the executor's
    # own thread changes it.
    processes: dict[int, Any] = getattr(executor, "_processes", None) or {}
    return processes.copy()


def _kill(executor: ProcessPoolExecutor) -> None:
    """SIGKILL the executor's workers (not yet reaped ones only: `Process.kill` skips those)."""
    for process in _processes(executor).values():
        with contextlib.suppress(ValueError, OSError):  # closed, or gone meanwhile
            process.kill()


class DetectorPool:
    _shared: dict[tuple[Any, ...], DetectorPool] = {}

    def __init__(
        self,
        config: PiiConfig,
        *,
        workers: int,
        max_tasks_per_child: int,
        memory_mb: int = 0,
        backoff_max: float = 30.0,
        hung_after: float = 30.0,
    ) -> None:
        self.config = config
        self.workers = max(1, workers)
        self._max_tasks = max_tasks_per_child
        self._initargs = (config, os.getpid(), memory_mb)  # and a new Barrier per executor
        self._backoff_max = backoff_max
        self._hung_after = hung_after
        # Tasks that timed out but may still be running: (task, when it counts as hung, generation).
        self._overdue: list[tuple[Future[Any], float, int]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._executor: ProcessPoolExecutor | None = None
        self._need_executor = True
        self._ready = _pending()
        self._delay = 0.0
        self._last_break = -float("inf")
        self.generation = 0  # executors started so far
        self.state = "starting"  # then ready; restarting after a break; failed if the first never warmed
        # Free workers, per event loop (the pool is shared; a semaphore is bound to its loop).
        self._free = PerLoop(lambda loop: asyncio.Semaphore(self.workers))
        # The kernel ties a worker's PR_SET_PDEATHSIG to the thread that started it, so executors are
        # started here, on a thread as long-lived as the pool, never on a short-lived one.
        threading.Thread(target=self._keep, name="pii-pool-keeper", daemon=True).start()

    @classmethod
    def shared(cls, config: PiiConfig, **options: Any) -> DetectorPool:
        """The pool for these constructor arguments, started by the first caller."""
        key = (config.fingerprint(), *sorted(options.items()))
        pool = cls._shared.get(key)
        if pool is None:
            pool = cls._shared[key] = cls(config, **options)
        return pool

    async def warm_up(self) -> None:
        """Wait until every worker has built and warmed its detector; raise if the first ones never could."""
        await self._working()

    def status(self) -> dict[str, Any]:
        return {
            "ok": self.state == "ready",
            "state": self.state,
            "restarts": max(0, self.generation - 1),
            "workers": len(self.pids()),
        }

    def pids(self) -> list[int]:
        """The current executor's worker processes (`_processes`: private, stable since CPython 3.2)."""
        return list(_processes(self._executor))

    async def analyze(self, texts: list[str], seconds: float) -> list[list[Span]]:
        """Spans for each text. Windows of long texts and batches of short ones are spread over the workers.
        `PiiUnavailable` when the pool breaks or is not back within `seconds`; TimeoutError when a task
        takes longer than `seconds` on its worker."""
        size = self.config.chunk_chars
        wins = [windows(text, size) if text.strip() else [] for text in texts]
        found: list[list[Sequence[Span]]] = [[() for _ in ws] for ws in wins]
        pieces: list[_Piece] = [
            (i, j, texts[i][w.start : w.end]) for i, ws in enumerate(wins) for j, w in enumerate(ws)
        ]
        if pieces:
            total = sum(len(piece[2]) for piece in pieces)
            per_task = size if total < _SPLIT_FROM else min(size, -(-total // self.workers))
            tasks = list(batches(pieces, lambda piece: len(piece[2]), per_task))
            executor, generation = self._serving() or await self._ready_within(seconds)
            results = await self._run(executor, generation, [[p[2] for p in task] for task in tasks], seconds)
            for task, result in zip(tasks, results, strict=True):
                for (i, j, _), spans in zip(task, result, strict=True):
                    found[i][j] = spans
        return [merge(ws, spans) if ws else [] for ws, spans in zip(wins, found, strict=True)]

    def shutdown(self) -> None:
        with self._lock:
            self.state = "closed"
            executor, self._executor = self._executor, None
            if not self._ready.done():
                self._ready.set_exception(RuntimeError("the PII detector pool is shut down"))
        self._stopped.set()
        self._wake.set()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    # --- calls ---------------------------------------------------------------------------------------

    async def _ready_within(self, seconds: float) -> tuple[ProcessPoolExecutor, int]:
        try:
            return await within(seconds, self._working)
        except TimeoutError:
            raise unavailable(
                "restarting",
                "PII detection is restarting after a detector worker died, and was not back in time. "
                "Retry shortly.",
            ) from None

    def _serving(self) -> tuple[ProcessPoolExecutor, int] | None:
        """The current executor if it is warm and whole (the common case: no waiting, no timer)."""
        with self._lock:
            executor, generation, state = self._executor, self.generation, self.state
        if executor is None or state != "ready":
            return None
        if _broken(executor):
            self._mark_broken(generation, "a worker process died")  # before the keeper noticed
            return None
        return executor, generation

    async def _working(self) -> tuple[ProcessPoolExecutor, int]:
        """The current executor once it is warm (waiting through a rebuild)."""
        while True:
            with self._lock:
                ready = self._ready
            await asyncio.wrap_future(ready)
            if (serving := self._serving()) is not None:
                return serving

    async def _run(
        self, executor: ProcessPoolExecutor, generation: int, tasks: list[list[str]], seconds: float
    ) -> list[list[list[Span]]]:
        if len(tasks) == 1:
            return [await self._on_worker(executor, generation, tasks[0], seconds)]
        mine = asyncio.Semaphore(self.workers)  # this call's share: its other tasks wait behind later calls

        async def one(task: list[str]) -> list[list[Span]]:
            async with mine:
                return await self._on_worker(executor, generation, task, seconds)

        running = [asyncio.ensure_future(one(task)) for task in tasks]
        try:
            return await asyncio.gather(*running)
        finally:
            for future in running:  # after a failure, the rest of this call is not worth a worker
                future.cancel()

    async def _on_worker(
        self, executor: ProcessPoolExecutor, generation: int, texts: list[str], seconds: float
    ) -> list[list[Span]]:
        # Submitted at once, so that no worker idles while the event loop is busy (gating the submit on
        # the loop cost 4x the throughput under load). But the wait for a free worker is queueing inside
        # the sidecar, not the detector's time: the executor runs tasks in order, so a task's clock starts
        # once fewer than `workers` tasks submitted before it are unfinished (a FIFO semaphore), and it
        # does not count the event loop's stalls (sidecar.deadline).
        try:
            task = executor.submit(worker.analyze, texts)
            done = asyncio.wrap_future(task)
            try:
                async with self._free.get():
                    return await within(seconds, lambda: done)
            except TimeoutError:
                with self._lock:  # the keeper takes its worker for hung if it is still at it much later
                    self._overdue.append((task, time.monotonic() + self._hung_after, generation))
                raise
            finally:
                done.cancel()  # given up (a timeout, the caller gone) before it ran: not worth a worker
        except (BrokenExecutor, RuntimeError) as exc:
            # A worker died under this task or another (the executor fails them all), or the keeper
            # already shut this executor down for that reason.
            if not isinstance(exc, BrokenExecutor) and "after shutdown" not in str(exc):
                raise
            self._mark_broken(generation, "a worker process died")
            raise unavailable(
                "worker_died",
                "PII detection was interrupted: a detector worker process died. The scanner is being "
                "restarted; retry the call.",
            ) from None
        except worker.WorkerOutOfMemory:
            raise unavailable(
                "memory_limit",
                "PII detection ran out of memory on this request (SIDECAR_PII_WORKER_MEMORY_MB); "
                "it was not forwarded.",
                retry=False,
            ) from None

    # --- the keeper ----------------------------------------------------------------------------------

    def _keep(self) -> None:
        while not self._stopped.is_set():
            if self._need_executor:
                if self._delay and self._stopped.wait(self._delay):
                    return
                self._start_executor()
            else:
                self._check()
            self._wake.wait(_POLL)
            self._wake.clear()

    def _check(self) -> None:
        now = time.monotonic()
        with self._lock:
            executor, generation = self._executor, self.generation
            self._overdue = [o for o in self._overdue if not o[0].done() and o[2] == generation]
            hung = any(deadline <= now for _, deadline, _ in self._overdue)
        if executor is None:
            return
        if hung:
            _kill(executor)
            self._mark_broken(generation, "a worker hung: a task ran far past SIDECAR_PII_TIMEOUT")
        elif _broken(executor):
            self._mark_broken(generation, "a worker process died")

    def _start_executor(self) -> None:
        with self._lock:
            if self.state == "closed":
                return
            old = self._executor
            spawn = multiprocessing.get_context("spawn")
            executor = self._executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=spawn,
                initializer=worker.init,
                initargs=(*self._initargs, spawn.Barrier(self.workers)),
                max_tasks_per_child=self._max_tasks,
            )
            self.generation += 1
            generation = self.generation
            self._need_executor = False
        if old is not None:
            _kill(old)  # the executor only SIGTERMs the rest, which a stopped or stuck process outlives
            old.shutdown(wait=False, cancel_futures=True)
        try:  # one warm-up task per worker: each submit starts a process while none is idle
            warming = [executor.submit(worker.warmed) for _ in range(self.workers)]
        except RuntimeError as exc:  # BrokenProcessPool: a worker died already
            self._mark_broken(generation, "a worker died while starting", exc)
            return

        def done(_: Future[int]) -> None:
            if all(f.done() for f in warming):
                self._warmed(generation, warming)

        for future in warming:
            future.add_done_callback(done)

    def _warmed(self, generation: int, warming: list[Future[int]]) -> None:
        failed = next((f for f in warming if f.cancelled() or f.exception() is not None), None)
        if failed is not None:
            exc = None if failed.cancelled() else failed.exception()
            self._mark_broken(generation, f"warm-up failed: {exc!r}", exc)
            return
        with self._lock:
            if generation != self.generation or self._need_executor or self._ready.done():
                return
            self.state = "ready"
            self._ready.set_result(None)
        if generation > 1:
            log.warning("PII detector pool serving again", extra={"generation": generation})

    def _mark_broken(self, generation: int, cause: str, exc: BaseException | None = None) -> None:
        """Have the keeper replace executor `generation` (once, however many callers report it)."""
        with self._lock:
            if generation != self.generation or self._need_executor or self.state in ("failed", "closed"):
                return
            if self.state == "starting":  # the first executor never worked: an install or configuration fault
                self.state = "failed"
                self._ready.set_exception(exc or BrokenExecutor(cause))
                return
            self.state = "restarting"
            self._need_executor = True
            if self._ready.done():
                self._ready = _pending()
            now = time.monotonic()
            quiet = now - self._last_break > 2 * self._backoff_max
            self._delay = 0.0 if quiet else min(self._backoff_max, max(_BACKOFF_FIRST, 2 * self._delay))
            self._last_break = now
            delay = self._delay
        log.error(
            "PII detector pool broken; replacing it",
            extra={"cause": cause, "generation": generation, "delay_s": delay},
        )
        self._wake.set()


@atexit.register
def _shutdown_shared() -> None:
    for pool in DetectorPool._shared.values():
        pool.shutdown()

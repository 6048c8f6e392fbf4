"""The full body of an approval-gated upload, read and hashed before anything is forwarded.

An approval binds the exact bytes the upstream receives, so a gated upload (a multipart body, which
otherwise streams straight through) cannot be forwarded as it arrives: it is read in full and hashed, and
the spooled bytes, never the live request, are then sent. The bytes hashed are the bytes sent.

- Up to MEMORY_BYTES stay in memory; beyond, an anonymous temporary file in SIDECAR_APPROVAL_SPOOL_DIR
  (default: the system temporary directory, $TMPDIR). The file is unlinked when it is created, so nothing is
  left on disk even if the process is killed.
- SIDECAR_APPROVAL_SPOOL_BYTES bounds it (default and ceiling: SIDECAR_MAX_UPLOAD_BYTES); a larger gated
  upload is refused with 413 `request_too_large` before anything is sent.
- File writes, reads and the final close of a file-backed spool run in a worker thread, in 1 MiB batches,
  so a large upload never blocks the event loop.
- The spool lives as long as the call: the proxy closes it when the call ends, however it ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, TypeVar

from sidecar.errors import SidecarError, no_retry

MEMORY_BYTES = 1024 * 1024  # kept in memory up to this size
_BATCH = 1024 * 1024  # bytes written or read per step (one worker-thread hop once on disk)

T = TypeVar("T")


def spool_limit(approval_spool_bytes: int, max_upload_bytes: int) -> int:
    """The effective limit: SIDECAR_APPROVAL_SPOOL_BYTES (0: unset), never above the upload limit."""
    return min(approval_spool_bytes or max_upload_bytes, max_upload_bytes)


def too_large_to_spool(limit: int) -> SidecarError:
    return no_retry(
        413,
        "request_too_large",
        f"This upload needs an approval, so the sidecar reads it in full before forwarding it; it exceeds "
        f"the limit for that of {limit} bytes (SIDECAR_APPROVAL_SPOOL_BYTES).",
    )


class SpooledBody:
    """A body read in full: its size, its SHA-256, and its bytes to send (see `fill`)."""

    def __init__(self, directory: str | None = None) -> None:
        # Not a context manager: the file outlives this method, until close().
        self._file = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=MEMORY_BYTES, dir=directory or None
        )
        self._hash = hashlib.sha256()
        self.size = 0
        self.closed = False
        self._busy: asyncio.Future[Any] | None = None  # the file operation a worker thread is running

    @classmethod
    async def fill(
        cls, chunks: AsyncIterable[bytes], limit: int, directory: str | None = None
    ) -> SpooledBody:
        """Read `chunks` to the end (413 past `limit` bytes). On any failure the spool is dropped."""
        body = cls(directory)
        batch = bytearray()
        try:
            async for chunk in chunks:
                if body.size + len(batch) + len(chunk) > limit:
                    raise too_large_to_spool(limit)
                batch += chunk
                if len(batch) >= _BATCH:
                    await body._append(bytes(batch))
                    batch.clear()
            if batch:
                await body._append(bytes(batch))
        except BaseException:
            body.close()
            raise
        return body

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    @property
    def on_disk(self) -> bool:
        # SpooledTemporaryFile moves to disk once it holds more than max_size bytes.
        return self.size > MEMORY_BYTES

    async def chunks(self) -> AsyncIterator[bytes]:
        """The spooled bytes from the start, in batches (each call reads them afresh)."""
        offset = 0
        while offset < self.size:
            if self.closed:  # the call ended while its body was still being sent: abort, never truncate
                raise ConnectionAbortedError("the call ended before its spooled body was sent")
            chunk = await self._io(self._read_at, offset)
            if not chunk:
                raise ConnectionAbortedError("the spooled body is shorter than it was")
            offset += len(chunk)
            yield chunk

    def close(self) -> None:
        """Drop the spool (idempotent). A file operation still running in a thread finishes first."""
        if self.closed:
            return
        self.closed = True
        if self._busy is not None and not self._busy.done():
            self._busy.add_done_callback(lambda _: self._discard())
        else:
            self._discard()

    def _discard(self) -> None:
        if not self.on_disk:
            self._file.close()
            return
        try:  # freeing a large file's pages can take a while: not on the event loop
            asyncio.get_running_loop().run_in_executor(None, self._file.close)
        except RuntimeError:  # no loop (or it is shutting down)
            self._file.close()

    async def _append(self, data: bytes) -> None:
        self.size += len(data)
        await self._io(self._write, data)

    def _write(self, data: bytes) -> None:
        self._hash.update(data)
        self._file.write(data)

    def _read_at(self, offset: int) -> bytes:
        self._file.seek(offset)
        return self._file.read(_BATCH)

    async def _io(self, operation: Callable[[T], bytes | None], arg: T) -> bytes:
        if not self.on_disk:
            return operation(arg) or b""
        busy: asyncio.Future[bytes | None] = asyncio.get_running_loop().run_in_executor(None, operation, arg)
        self._busy = busy
        # Shielded: a cancelled caller leaves `busy` running, and close() waits for it to finish.
        return await asyncio.shield(busy) or b""

"""A cache of detection results, so that a conversation resent every turn is analysed only once."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

from sidecar.pii.spans import Span


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

"""Spans, how overlapping ones are resolved, and the overlapping windows a long text is analysed in.

A text longer than the window size is cut into windows that are analysed independently, each in one pool
task, so the memory and time a worker spends on one task stay bounded whatever an agent sends. NER memory
grows with the text: one 200 KB text peaks near 800 MB in one piece, about 210 MB in 20,000-character
windows.

Neighbouring windows overlap by at least `OVERLAP` characters, and each window owns the span *starts* in
its part of the text; the boundary between two windows is the middle of their overlap. So an entity of up
to `OVERLAP // 2` characters is found whole and once, with at least `OVERLAP // 2` characters of context on
either side (the negative-context filter and context words read fewer), as if the text had not been cut.
A longer one that the previous window saw cut off at its end is also taken from the window that sees more
of it; overlap resolution then keeps the longer.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sidecar.pii.recognizers import NER_ENTITIES

OVERLAP = 512
MIN_WINDOW = 2_000  # windows end no earlier than half-way, so each one moves on past the overlap

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Span:
    entity: str  # Presidio entity type, e.g. "EMAIL_ADDRESS"
    start: int
    end: int
    score: float


@dataclass(frozen=True, slots=True)
class Window:
    start: int  # the window is text[start:end]
    end: int
    owns_from: int  # spans starting in [owns_from, owns_to) of the whole text are this window's
    owns_to: int


def windows(text: str, size: int) -> list[Window]:
    """Windows of at most `size` characters covering `text`. Each ends at a line break or a space in its
    second half where there is one, and the next starts after a space or line break where there is one,
    so words are rarely cut."""
    n = len(text)
    if n <= size:
        return [Window(0, n, 0, n)]
    out: list[Window] = []
    start = owns_from = 0
    while True:
        end = start + size
        if end >= n:
            out.append(Window(start, n, owns_from, n))
            return out
        cut = text.rfind("\n", start + size // 2, end)
        if cut < 0:
            cut = text.rfind(" ", start + size // 2, end)
        if cut >= 0:
            end = cut + 1
        back = end - OVERLAP
        after_space = max(
            text.rfind(" ", back - OVERLAP // 2, back), text.rfind("\n", back - OVERLAP // 2, back)
        )
        following = after_space + 1 if after_space >= 0 else back
        owns_to = (following + end) // 2
        out.append(Window(start, end, owns_from, owns_to))
        start, owns_from = following, owns_to


def merge(wins: Sequence[Window], found: Sequence[Sequence[Span]]) -> list[Span]:
    """One text's spans from its windows' spans (offsets relative to each window's text)."""
    if len(wins) == 1:
        return list(found[0])
    spans: list[Span] = []
    previous_end = 0
    for w, in_window in zip(wins, found, strict=True):
        for s in in_window:
            start, end = s.start + w.start, s.end + w.start
            if w.owns_from <= start < w.owns_to or (start < w.owns_from and end > previous_end):
                spans.append(Span(s.entity, start, end, s.score))
        previous_end = w.end
    return resolve(spans)  # a span owned by one window may still overlap one owned by the next


def resolve(spans: Sequence[Span]) -> list[Span]:
    """Keep the best of overlapping spans: pattern entities (validated, structured) over NER ones
    (so no PERSON inside an email), then higher score, then longer (an email over the URL in it).
    Sorted by start. O(n log n): the kept spans never overlap, so only the neighbours of a candidate's
    place among them can."""
    ranked = sorted(
        spans,
        key=lambda s: (s.entity in NER_ENTITIES, -s.score, -(s.end - s.start), s.start, s.entity),
    )
    starts: list[int] = []
    kept: list[Span] = []
    for span in ranked:
        i = bisect_left(starts, span.start)
        if (i > 0 and kept[i - 1].end > span.start) or (i < len(kept) and kept[i].start < span.end):
            continue
        starts.insert(i, span.start)
        kept.insert(i, span)
    return kept


def batches(items: Sequence[T], size: Callable[[T], int], max_chars: int) -> Iterator[list[T]]:
    """Consecutive groups of items holding at most `max_chars` characters (or one larger item)."""
    group: list[T] = []
    total = 0
    for item in items:
        n = size(item)
        if group and total + n > max_chars:
            yield group
            group, total = [], 0
        group.append(item)
        total += n
    if group:
        yield group

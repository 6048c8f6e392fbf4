"""Long texts in overlapping windows: the windows' geometry, overlap resolution, and detection through the
real worker pool, which finds and masks an entity wherever it falls, window seams included."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.documents import MaskRule
from sidecar.pii.engine import Detector, PiiConfig
from sidecar.pii.fields import collect
from sidecar.pii.mask import Placeholders, mask_fields
from sidecar.pii.pool import DetectorPool
from sidecar.pii.recognizers import NER_ENTITIES
from sidecar.pii.restore import Restorer
from sidecar.pii.spans import MIN_WINDOW, OVERLAP, Span, Window, merge, resolve, windows

WINDOW = MIN_WINDOW  # small windows, so that a few KB of text already has several seams
EMAIL_RULE = MaskRule(("EMAIL_ADDRESS",), "placeholder")

# Texts as runs of one character: long runs without whitespace force hard cuts.
runs = st.lists(st.tuples(st.sampled_from("ab \n"), st.integers(1, 900)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(runs, st.integers(MIN_WINDOW, 5_000))
def test_windows_cover_the_text_overlap_and_own_every_start_once(
    pieces: list[tuple[str, int]], size: int
) -> None:
    text = "".join(c * n for c, n in pieces)
    wins = windows(text, size)
    assert wins[0].start == wins[0].owns_from == 0
    assert wins[-1].end == wins[-1].owns_to == len(text)
    assert (len(wins) == 1) == (len(text) <= size)
    for w in wins:
        assert w.end - w.start <= size
    for a, b in itertools.pairwise(wins):
        assert a.start < b.start < a.end  # progress, and overlap
        assert a.end - b.start >= OVERLAP
        assert a.owns_to == b.owns_from  # every start is owned by exactly one window
        assert b.start + OVERLAP // 2 <= b.owns_from <= a.end - OVERLAP // 2  # with context either side


def _naive_resolve(spans: list[Span]) -> list[Span]:
    """The quadratic original: the reference for the O(n log n) one."""
    ranked = sorted(
        spans, key=lambda s: (s.entity in NER_ENTITIES, -s.score, -(s.end - s.start), s.start, s.entity)
    )
    kept: list[Span] = []
    for span in ranked:
        if all(span.end <= k.start or span.start >= k.end for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)


@st.composite
def span_lists(draw: st.DrawFn) -> list[Span]:
    out = []
    for _ in range(draw(st.integers(0, 40))):
        start = draw(st.integers(0, 200))
        out.append(
            Span(
                draw(st.sampled_from(["EMAIL_ADDRESS", "PHONE_NUMBER", "PERSON", "LOCATION"])),
                start,
                start + draw(st.integers(1, 30)),
                draw(st.sampled_from([0.4, 0.85, 1.0])),
            )
        )
    return out


@settings(max_examples=300, deadline=None)
@given(span_lists())
def test_resolve_matches_the_pairwise_definition(spans: list[Span]) -> None:
    assert resolve(spans) == _naive_resolve(spans)


def test_an_entity_longer_than_half_the_overlap_cut_by_a_window_end_is_taken_whole() -> None:
    first = Window(0, 2_000, 0, 1_744)
    second = Window(1_488, 4_000, 1_744, 4_000)
    cut_off = Span("EMAIL_ADDRESS", 1_700, 2_000, 1.0)  # seen by the first window up to its end
    whole = Span("EMAIL_ADDRESS", 1_700 - 1_488, 2_100 - 1_488, 1.0)  # the second sees all of it
    assert merge([first, second], [[cut_off], [whole]]) == [Span("EMAIL_ADDRESS", 1_700, 2_100, 1.0)]
    # A short one in the overlap is taken from its owner only, not twice.
    short = Span("EMAIL_ADDRESS", 1_600, 1_620, 1.0)
    again = Span("EMAIL_ADDRESS", 1_600 - 1_488, 1_620 - 1_488, 1.0)
    assert merge([first, second], [[short], [again]]) == [short]


# --- through the real worker pool --------------------------------------------------------------------

Analyze = Callable[[list[str]], list[list[Span]]]
FILLER = ["the", "deploy", "report", "of", "and", "review", "metrics,", "ok.", "tomorrow", "budget\n"]
emails = st.builds(
    "{}{}@{}.{}".format,
    st.text("abcdefghij", min_size=1, max_size=12),
    st.sampled_from(["", ".x", "_7", "-ops"]),
    st.text("klmnopqrst", min_size=2, max_size=12),
    st.sampled_from(["com", "org", "io", "co.uk"]),
)


@pytest.fixture(scope="module")
def windowed() -> Iterator[Analyze]:
    """A real pool whose workers each get one window of at most WINDOW characters at a time."""
    pool = DetectorPool.shared(
        PiiConfig(mode="patterns", chunk_chars=WINDOW), workers=2, max_tasks_per_child=2000
    )
    loop = asyncio.new_event_loop()
    loop.run_until_complete(pool.warm_up())
    yield lambda texts: loop.run_until_complete(pool.analyze(texts, 60.0))
    loop.close()


@pytest.fixture(scope="module")
def whole() -> Detector:
    """The same detector on the whole text at once: the reference."""
    return Detector(PiiConfig(mode="patterns", chunk_chars=1_000_000))


def _check_masked_and_restored(text: str, spans: list[Span], addresses: list[str]) -> None:
    doc = {"model": "gpt-4o", "input": text}
    fields = collect("responses.create", doc)
    placeholders = Placeholders()
    mask_fields(fields, [spans], EMAIL_RULE, placeholders)
    sent = json.dumps(doc)
    for address in addresses:
        assert address not in sent, address
    assert Restorer(placeholders.originals).text(doc["input"]) == text


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(FILLER), min_size=700, max_size=2_000), st.data())
def test_an_email_anywhere_is_found_masked_and_restored(
    windowed: Analyze, whole: Detector, words: list[str], data: st.DataObject
) -> None:
    addresses = data.draw(st.lists(emails, min_size=1, max_size=3))
    for address in addresses:
        words.insert(data.draw(st.integers(0, len(words))), address)
    text = " ".join(words)
    assert len(windows(text, WINDOW)) > 1
    [spans] = windowed([text])
    assert spans == whole.analyze(text)  # the seams change nothing
    _check_masked_and_restored(text, spans, addresses)


def test_an_email_slid_across_every_seam_position(windowed: Analyze, whole: Detector) -> None:
    """Deterministic companion: the address starts at each position around the first ownership boundary
    and around a hard cut (a long run without whitespace), and is found once, whole, each time."""
    address = "maria.gonzalez@example.org"
    cases = []
    for filler in ("lorem ipsum " * 400, "x" * 5_000):
        boundary = windows(filler, WINDOW)[0]
        for at in (
            *range(boundary.owns_to - 40, boundary.owns_to + 8),
            *range(boundary.end - 30, boundary.end + 4),
        ):
            cases.append(f"{filler[:at]} {address} {filler[at:]}")
    results = windowed(cases)
    for text, spans in zip(cases, results, strict=True):
        assert [(s.entity, text[s.start : s.end]) for s in spans] == [("EMAIL_ADDRESS", address)], text.index(
            address
        )
        assert spans == whole.analyze(text)
        _check_masked_and_restored(text, spans, [address])

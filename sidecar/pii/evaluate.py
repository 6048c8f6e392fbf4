"""Precision and recall of a `Detector` on a labelled JSONL corpus.

Corpus lines: {"text": "...", "entities": [{"entity": "EMAIL_ADDRESS", "start": n, "end": m}, ...]}.
A detected span matches a labelled one when the entity types are equal and the character ranges
overlap; each labelled span matches at most one detected span (one-to-one).

Run `python -m sidecar.pii.evaluate [corpus.jsonl]` for a table of both modes.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sidecar.pii.engine import PiiConfig, Span

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "tests" / "data" / "pii_corpus.jsonl"
OVERALL = "ALL"

Scores = dict[str, dict[str, float]]


class _Analyzer(Protocol):
    def analyze(self, text: str) -> list[Span]: ...


@dataclass(frozen=True, slots=True)
class Labelled:
    text: str
    spans: tuple[Span, ...]


@dataclass(frozen=True, slots=True)
class Miss:
    kind: str  # "fp" or "fn"
    entity: str
    value: str
    text: str


def load_corpus(path: str | Path) -> list[Labelled]:
    rows: list[Labelled] = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        text = row["text"]
        spans = []
        for e in row["entities"]:
            if not 0 <= e["start"] < e["end"] <= len(text):
                raise ValueError(f"{path}:{n}: span {e} outside the text")
            spans.append(Span(e["entity"], e["start"], e["end"], 1.0))
        rows.append(Labelled(text, tuple(spans)))
    return rows


def _match(gold: tuple[Span, ...], found: list[Span]) -> tuple[list[Span], list[Span], list[Span]]:
    """(matched gold, unmatched gold, unmatched found), one-to-one by entity type and overlap."""
    free = list(found)
    hit, missed = [], []
    for g in sorted(gold, key=lambda s: s.start):
        partner = next(
            (f for f in free if f.entity == g.entity and f.start < g.end and g.start < f.end), None
        )
        if partner is None:
            missed.append(g)
        else:
            free.remove(partner)
            hit.append(g)
    return hit, missed, free


def evaluate_rows(detector: _Analyzer, rows: list[Labelled]) -> tuple[Scores, list[Miss]]:
    counts: dict[str, dict[str, int]] = {}
    misses: list[Miss] = []

    def bump(entity: str, key: str) -> None:
        for name in (entity, OVERALL):
            counts.setdefault(name, {"tp": 0, "fp": 0, "fn": 0})[key] += 1

    for row in rows:
        hit, missed, extra = _match(row.spans, detector.analyze(row.text))
        for s in hit:
            bump(s.entity, "tp")
        for s in missed:
            bump(s.entity, "fn")
            misses.append(Miss("fn", s.entity, row.text[s.start : s.end], row.text))
        for s in extra:
            bump(s.entity, "fp")
            misses.append(Miss("fp", s.entity, row.text[s.start : s.end], row.text))
    scores: Scores = {}
    for entity, c in counts.items():
        tp, fp, fn = c["tp"], c["fp"], c["fn"]
        scores[entity] = {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else 1.0,
            "recall": tp / (tp + fn) if tp + fn else 1.0,
        }
    return scores, misses


def evaluate(detector: _Analyzer, corpus_path: str | Path) -> Scores:
    """{entity: {tp, fp, fn, precision, recall}}, plus the micro-average under "ALL"."""
    return evaluate_rows(detector, load_corpus(corpus_path))[0]


def format_table(scores: Scores, title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"{'entity':<16}{'tp':>5}{'fp':>5}{'fn':>5}{'precision':>11}{'recall':>9}")
    for entity in sorted(scores, key=lambda e: (e == OVERALL, e)):
        s = scores[entity]
        lines.append(
            f"{entity:<16}{int(s['tp']):>5}{int(s['fp']):>5}{int(s['fn']):>5}"
            f"{s['precision']:>11.3f}{s['recall']:>9.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from sidecar.pii.engine import Detector

    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args
    paths = [a for a in args if a != "-v"]
    rows = load_corpus(paths[0] if paths else DEFAULT_CORPUS)
    for mode in ("patterns", "ner"):
        started = time.perf_counter()
        detector = Detector(PiiConfig(mode=mode))
        detector.warm_up()
        built = time.perf_counter()
        scores, misses = evaluate_rows(detector, rows)
        done = time.perf_counter()
        title = (
            f"mode={mode}: {len(rows)} texts, build+warm-up {built - started:.2f}s, "
            f"analysis {1000 * (done - built) / len(rows):.1f} ms/text"
        )
        print(format_table(scores, title))
        if verbose:
            for m in misses:
                print(f"  {m.kind} {m.entity:<14} {m.value!r:<40} in {m.text!r}")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Latency of `Detector.analyze` per mode and text size: one thread, warm, median of repeated runs.

    .venv/bin/python bench/pii_detect.py [--sizes 2000,20000,200000] [--modes patterns,ner]

Texts are built from the labelled corpus (tests/data/pii_corpus.jsonl) with code and prose between
sentences, so they hold about one entity per 120 characters, the density of chatty agent traffic.
Peak RSS per mode is printed too (ru_maxrss of this process after that mode's runs).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar.pii.engine import Detector, PiiConfig  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "pii_corpus.jsonl"
FILLER = (
    "The deployment finished without errors and the dashboards look normal again. ",
    "def handler(event):\n    return {'status': 200, 'body': json.dumps(event)}\n",
    "Next steps: rotate the credentials, re-run the migration, and update the runbook. ",
)


def make_text(size: int) -> str:
    rows = [json.loads(line)["text"] for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    parts: list[str] = []
    total, i = 0, 0
    while total < size:
        piece = rows[i % len(rows)] + "\n" + FILLER[i % len(FILLER)]
        parts.append(piece)
        total += len(piece)
        i += 1
    return "".join(parts)[:size]


def measure(detector: Detector, text: str, budget_s: float = 6.0, max_runs: int = 50) -> tuple[float, int]:
    runs: list[float] = []
    started = time.perf_counter()
    while len(runs) < max_runs and (len(runs) < 3 or time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        detector.analyze(text)
        runs.append((time.perf_counter() - t0) * 1000)
    return statistics.median(runs), len(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000,200000")
    parser.add_argument("--modes", default="patterns,ner")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'mode':<10}{'size':>9}{'spans':>7}{'p50 ms':>10}{'runs':>6}")
    for mode in args.modes.split(","):
        t0 = time.perf_counter()
        detector = Detector(PiiConfig(mode=mode))
        built = time.perf_counter()
        detector.warm_up()
        warm = time.perf_counter()
        for size in sizes:
            text = make_text(size)
            spans = len(detector.analyze(text))
            p50, n = measure(detector, text)
            print(f"{mode:<10}{size:>9}{spans:>7}{p50:>10.1f}{n:>6}")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{mode:<10} build {1000 * (built - t0):.0f} ms, first analysis {1000 * (warm - built):.0f} ms, "
            f"peak RSS so far {rss:.0f} MB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

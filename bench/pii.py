"""PII masking cost, as `make bench` reports it (issue 3 targets).

Measures the sidecar's own scan + mask path (the process pool, the cache, the walkers, the operators) on
Responses payloads of ordinary prose with a PII-laden sentence from the labelled corpus in every four:
- one request of 2 KB, 20 KB and 200 KB of fresh text (nothing cached), per mode;
- one more agent turn (+2 KB) on a 200 KB conversation, with the cache (only the new turn is analysed)
  and without it (everything is analysed again).
Targets (pattern mode): 2 KB <= 10 ms p50; an incremental turn on 200 KB <= 10 ms p50. NER figures are
reported beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from sidecar import config
from sidecar.documents import MaskRule
from sidecar.pii.mask import Placeholders, mask_fields
from sidecar.pii.scanner import PresidioScanner

ROOT = Path(__file__).resolve().parents[1]
CORPUS = [
    json.loads(line)["text"] for line in (ROOT / "tests/data/pii_corpus.jsonl").read_text().splitlines()
]
RULE = MaskRule(
    ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE", "PERSON"), "placeholder"
)


# Agent traffic is mostly ordinary prose: one labelled corpus sentence (dense with PII) per three of these.
PROSE = [
    "The deployment finished and the health checks are green across all regions.",
    "Summarise the attached quarterly report and list the three biggest risks.",
    "I compared both options; the second one is cheaper but needs a longer migration.",
    "Please draft a short reply that thanks them and proposes a call next week.",
    "The tool returned forty-two rows, most of them duplicates from the nightly import.",
    "Let me know if you want the chart as a table instead of a bar graph.",
]


def text_of(size: int, salt: int) -> str:
    out, i = [], salt
    while sum(len(s) + 1 for s in out) < size:
        out.append(CORPUS[i % len(CORPUS)] if i % 4 == 0 else PROSE[i % len(PROSE)])
        i += 1
    return f"[{salt}] " + " ".join(out)


def message(text: str, role: str = "user") -> dict[str, Any]:
    return {"role": role, "content": text}


async def once(scanner: PresidioScanner, doc: dict[str, Any]) -> float:
    started = time.perf_counter()
    scan = await scanner.scan("responses.create", doc)
    mask_fields(scan.fields, scan.spans, RULE, Placeholders())
    return (time.perf_counter() - started) * 1000


def summary(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "p50": round(statistics.median(samples), 2),
        "p99": round(samples[int(len(samples) * 0.99) - 1], 2),
    }


async def run_mode(mode: str, runs: int) -> dict[str, Any]:
    settings = config.load(environ={"SIDECAR_STATIC_KEYS_FILE": "-", "SIDECAR_PII_MODE": mode})
    scanner = PresidioScanner(settings)
    await scanner.start()
    results: dict[str, Any] = {}
    salt = 0
    for size in (2_000, 20_000, 200_000):
        n = runs if size < 200_000 else max(5, runs // 10)
        samples = []
        for _ in range(n):
            salt += 1
            samples.append(await once(scanner, {"model": "gpt-4o", "input": [message(text_of(size, salt))]}))
        results[f"request_{size // 1000}KB"] = summary(samples)
    # An agent conversation of ~200 KB: 100 turns of 2 KB, resent every turn with one more 2 KB turn.
    history = [message(text_of(2_000, 10_000 + i), "user" if i % 2 else "assistant") for i in range(100)]
    await once(scanner, {"model": "gpt-4o", "input": history})  # the earlier turns are now cached
    cached, uncached = [], []
    for turn in range(max(5, runs // 5)):
        history.append(message(text_of(2_000, 50_000 + turn)))
        cached.append(await once(scanner, {"model": "gpt-4o", "input": list(history)}))
        cold = PresidioScanner(settings)  # same pool, empty cache: every fragment analysed again
        uncached.append(await once(cold, {"model": "gpt-4o", "input": [dict(m) for m in history]}))
    results["turn_plus_2KB_on_200KB_cached"] = summary(cached)
    results["turn_plus_2KB_on_200KB_uncached"] = summary(uncached)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    runs = 20 if args.quick else 60
    figures = {mode: asyncio.run(run_mode(mode, runs)) for mode in ("patterns", "ner")}
    print("\nPII masking cost (scan + mask, ms; process pool, 2 workers)")
    print(f"{'case':36} {'patterns p50/p99':>18} {'ner p50/p99':>18}")
    for case in figures["patterns"]:
        cells = [
            f"{figures[m][case]['p50']:.2f} / {figures[m][case]['p99']:.2f}" for m in ("patterns", "ner")
        ]
        print(f"{case:36} {cells[0]:>18} {cells[1]:>18}")
    turn = "turn_plus_2KB_on_200KB_cached"
    checks = [
        ("pattern mode, 2 KB request p50 <= 10 ms", figures["patterns"]["request_2KB"]["p50"] <= 10),
        ("incremental turn on 200 KB p50 <= 10 ms (patterns)", figures["patterns"][turn]["p50"] <= 10),
    ]
    for label, ok in checks:
        print(f"  {'ok  ' if ok else 'MISS'} {label}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

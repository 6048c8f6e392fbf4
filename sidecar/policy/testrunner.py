"""`sidecar policy test`: run every `test_*` rule on the embedded engine, reporting like `opa test -v`."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from sidecar.policy.bundle import parse, read_files
from sidecar.policy.embedded import _first_line, compile_bundle

_PACKAGE = re.compile(r"^package\s+([\w.]+)", re.MULTILINE)
_TEST = re.compile(r"^((?:todo_)?test_\w+)\b", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class TestResult:
    file: str
    rule: str
    outcome: str  # PASS | FAIL | ERROR | SKIPPED
    ms: float
    detail: str = ""


def discover(policies: dict[str, str]) -> list[tuple[str, str]]:
    """(file, fully qualified rule) for every test rule, in file order, each name once."""
    found: list[tuple[str, str]] = []
    for path, text in sorted(policies.items()):
        package = _PACKAGE.search(text)
        if package is None:
            continue
        seen: set[str] = set()
        for name in _TEST.findall(text):
            if name not in seen:
                seen.add(name)
                found.append((path, f"data.{package.group(1)}.{name}"))
    return found


def run(directory: str) -> list[TestResult]:
    bundle = parse(read_files(directory), directory)
    engine = compile_bundle(bundle, include_tests=True)
    results: list[TestResult] = []
    for path, rule in discover(bundle.policies):
        if rule.rsplit(".", 1)[1].startswith("todo_"):
            results.append(TestResult(path, rule, "SKIPPED", 0.0))
            continue
        started = time.perf_counter()
        try:
            value = engine.eval_rule(rule)
            outcome, detail = ("PASS", "") if value is True else ("FAIL", "")
        except RuntimeError as exc:
            outcome, detail = "ERROR", _first_line(exc)
        results.append(TestResult(path, rule, outcome, (time.perf_counter() - started) * 1000, detail))
    return results


def report(results: list[TestResult], verbose: bool = True, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    current = None
    for result in results:
        if not verbose and result.outcome == "PASS":
            continue
        if result.file != current:
            current = result.file
            print(f"{result.file}:", file=out)
        line = f"{result.rule}: {result.outcome} ({result.ms:.3f}ms)"
        print(line + (f"\n  {result.detail}" if result.detail else ""), file=out)
    print("-" * 80, file=out)
    total = len(results)
    counts = {k: sum(1 for r in results if r.outcome == k) for k in ("PASS", "FAIL", "ERROR", "SKIPPED")}
    for outcome, count in counts.items():
        if count:
            print(f"{outcome}: {count}/{total}", file=out)
    return 1 if counts["FAIL"] or counts["ERROR"] or not total else 0

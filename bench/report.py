"""The bench report: one table per endpoint, then the issue's targets marked OK or MISS."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from load import LoadResult

# Issue 2, "How it is checked".
TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P99_MS = 3.0
TARGET_CPU_US = 400.0
TARGET_VS_LITELLM = 10.0  # "ours should beat that by more than an order of magnitude"
LITELLM_REFERENCE = "measured elsewhere: LiteLLM adds ~9.5 ms p50 and serves ~100 req/s on one core"


@dataclass(slots=True)
class Row:
    target: str
    endpoint: str
    info: str
    direct1: LoadResult  # dev-upstream at c=1, measured just before `c1`
    c1: LoadResult
    direct32: LoadResult  # dev-upstream at c=32, measured just before `c32`
    c32: LoadResult
    cpu1: dict[str, float] = field(default_factory=dict)  # µs CPU/request by process ("main", "opa")
    cpu32: dict[str, float] = field(default_factory=dict)
    upstream_cpu1: dict[str, float] = field(default_factory=dict)  # dev-upstream's own, during `direct1`
    upstream_cpu32: dict[str, float] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)  # median ms by stage in `c1` (sidecar audit)

    @property
    def added_p50(self) -> float:
        return self.c1.p50_ms - self.direct1.p50_ms

    @property
    def added_p99(self) -> float:
        return self.c1.p99_ms - self.direct1.p99_ms

    @property
    def ratio_p50(self) -> float:
        return self.c1.p50_ms / self.direct1.p50_ms if self.direct1.p50_ms else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "endpoint": self.endpoint,
            "info": self.info,
            "c1": self.c1.as_json(),
            "direct_c1": self.direct1.as_json(),
            "c32": self.c32.as_json(),
            "direct_c32": self.direct32.as_json(),
            "added_p50_ms": round(self.added_p50, 3),
            "added_p99_ms": round(self.added_p99, 3),
            "ratio_p50": round(self.ratio_p50, 2),
            "ratio_p99": round(self.c1.p99_ms / self.direct1.p99_ms, 2) if self.direct1.p99_ms else None,
            "rps_c32": round(self.c32.rps, 1),
            "direct_rps_c32": round(self.direct32.rps, 1),
            "cpu_us_per_request_c1": {k: round(v, 1) for k, v in self.cpu1.items()},
            "cpu_us_per_request_c32": {k: round(v, 1) for k, v in self.cpu32.items()},
            "upstream_cpu_us_per_request_c1": round(self.upstream_cpu1["main"], 1),
            "upstream_cpu_us_per_request_c32": round(self.upstream_cpu32["main"], 1),
            "sidecar_stage_p50_ms_c1": {k: round(v, 3) for k, v in self.stages.items()},
        }


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


COLUMNS = (
    ("target", "<22"),
    ("p50 ms", ">7"),
    ("p99 ms", ">7"),
    ("+p50 ms", ">8"),
    ("+p99 ms", ">8"),
    ("x p50", ">6"),
    ("req/s@32", ">9"),
    ("CPU us/req @1", ">14"),
    ("@32", ">6"),
)


def _line(cells: list[str], notes: str) -> str:
    text = " ".join(f"{cell:{fmt}}" for cell, (_, fmt) in zip(cells, COLUMNS, strict=True))
    return f"{text}  {notes}".rstrip()


def table(rows: list[Row]) -> list[str]:
    header = _line([name for name, _ in COLUMNS], "notes")
    direct = [
        "direct (dev-upstream)",
        f"{_med([r.direct1.p50_ms for r in rows]):.3f}",
        f"{_med([r.direct1.p99_ms for r in rows]):.3f}",
        "-",
        "-",
        "1.00",
        f"{_med([r.direct32.rps for r in rows]):.0f}",
        f"{_med([r.upstream_cpu1['main'] for r in rows]):.0f}",
        f"{_med([r.upstream_cpu32['main'] for r in rows]):.0f}",
    ]
    lines = [header, "-" * len(header), _line(direct, f"median of {len(rows)} runs; CPU: dev-upstream's own")]
    for r in rows:
        notes = [r.info] if r.info else []
        if "opa" in r.cpu1:
            notes.append(f"+ opa daemon {r.cpu1['opa']:.0f} / {r.cpu32['opa']:.0f} us/req")
        if r.c1.errors or r.c32.errors:
            first = r.c1.first_bad_status or r.c32.first_bad_status
            notes.append(f"ERRORS {r.c1.errors}+{r.c32.errors} (first status {first})")
        cells = [
            r.target,
            f"{r.c1.p50_ms:.3f}",
            f"{r.c1.p99_ms:.3f}",
            f"{r.added_p50:+.3f}",
            f"{r.added_p99:+.3f}",
            f"{r.ratio_p50:.2f}",
            f"{r.c32.rps:.0f}",
            f"{r.cpu1['main']:.0f}",
            f"{r.cpu32['main']:.0f}",
        ]
        lines.append(_line(cells, "; ".join(notes)))
    return lines


Check = tuple[bool | None, str]  # (True = OK, False = MISS, None = for information), text


def checks(rows: list[Row]) -> list[Check]:
    """The issue's targets, checked on the measured rows."""

    def find(target: str, endpoint: str | None = None) -> Row | None:
        return next((r for r in rows if r.target == target and endpoint in (None, r.endpoint)), None)

    emb = find("sidecar embedded", "responses") or find("sidecar embedded")
    if emb is None:
        return [(None, "sidecar embedded: not measured, so the issue's targets are not checked")]
    name = f"sidecar embedded ({emb.endpoint})"
    cpu = emb.cpu1["main"]
    out: list[Check] = [
        (
            emb.added_p50 <= TARGET_ADDED_P50_MS,
            f"{name}: added p50 {emb.added_p50:.3f} ms <= {TARGET_ADDED_P50_MS:g} ms",
        ),
        (
            emb.added_p99 <= TARGET_ADDED_P99_MS,
            f"{name}: added p99 {emb.added_p99:.3f} ms <= {TARGET_ADDED_P99_MS:g} ms",
        ),
        (cpu <= TARGET_CPU_US, f"{name}: CPU {cpu:.0f} us/request <= {TARGET_CPU_US:g} us"),
    ]
    bare = find("aiohttp pass-through", emb.endpoint)
    if bare is not None and bare.cpu1["main"] > 0 and bare.cpu32["main"] > 0:
        x1, x32 = cpu / bare.cpu1["main"], emb.cpu32["main"] / bare.cpu32["main"]
        bare_us = f"{bare.cpu1['main']:.0f} / {bare.cpu32['main']:.0f} us"
        out.append(
            (None, f"{name}: CPU = {x1:.1f}x / {x32:.1f}x (c=1 / c=32) a bare pass-through's {bare_us}")
        )
    if daemon := find("sidecar daemon", emb.endpoint):
        opa = daemon.cpu1.get("opa", 0.0)
        text = f"added p50 {daemon.added_p50:.3f} ms, p99 {daemon.added_p99:.3f} ms"
        dname = f"sidecar daemon ({emb.endpoint})"
        out.append(
            (
                None,
                f"{dname}: {text}, CPU {daemon.cpu1['main']:.0f} us/req + opa {opa:.0f} us/req",
            )
        )
        if daemon.c32.errors:
            failed = f"{daemon.c32.errors} of {daemon.c32.requests} calls failed at c=32"
            out.append(
                (None, f"{dname}: {failed} (status {daemon.c32.first_bad_status}; 503 = OPA too slow)")
            )
    lite = find("LiteLLM proxy", emb.endpoint) or find("LiteLLM proxy")
    if lite is not None:
        ours = find("sidecar embedded", lite.endpoint) or emb
        less = lite.added_p50 / ours.added_p50 if ours.added_p50 > 0 else float("inf")
        more = ours.c32.rps / lite.c32.rps if lite.c32.rps else float("inf")
        vs = f"vs LiteLLM ({lite.endpoint}):"
        goal = f"(issue: > {TARGET_VS_LITELLM:g}x)"
        out.append(
            (
                less >= TARGET_VS_LITELLM,
                f"{vs} added p50 {lite.added_p50:.3f} ms, ours {ours.added_p50:.3f}: {less:.1f}x less {goal}",
            )
        )
        out.append(
            (
                more >= TARGET_VS_LITELLM,
                f"{vs} req/s @32 ours {ours.c32.rps:.0f} vs {lite.c32.rps:.0f} = {more:.1f}x more {goal}",
            )
        )
    return out


def print_report(
    rows: list[Row], skipped: dict[str, str], meta: dict[str, Any], bodies: dict[str, str]
) -> dict[str, Any]:
    print("\n=== sidecar benchmark (issue 2) ===")
    for key, value in meta.items():
        print(f"{key:>8}: {value}")
    for endpoint, body in bodies.items():
        ep_rows = [r for r in rows if r.endpoint == endpoint]
        if not ep_rows:
            continue
        print(f"\n{body}  (non-streaming; +p50/+p99 = target - direct run just before it; x p50 = ratio)")
        print("\n".join(table(ep_rows)))
    staged = [r for r in rows if r.stages]
    if staged:
        print("\nInside the sidecar at c=1 (its audit log's latency_ms, medians; own = total - upstream):")
    for r in staged:
        parts = [f"{k} {v:.3f}" for k, v in sorted(r.stages.items())]
        print(f"  {r.target} ({r.endpoint}): " + ", ".join(parts) + " ms")
    for name, why in skipped.items():
        print(f"\nSKIPPED {name}: {why}")
    results = checks(rows)
    print("\nTargets:")
    for ok, text in results:
        print(f"  [{'info' if ok is None else 'OK' if ok else 'MISS'}] {text}")
    print(f"  ({LITELLM_REFERENCE})")
    return {
        "meta": meta,
        "rows": [r.as_json() for r in rows],
        "skipped": skipped,
        "checks": [
            {"status": "info" if ok is None else "ok" if ok else "miss", "text": t} for ok, t in results
        ],
        "targets": {
            "added_p50_ms": TARGET_ADDED_P50_MS,
            "added_p99_ms": TARGET_ADDED_P99_MS,
            "cpu_us_per_request": TARGET_CPU_US,
            "vs_litellm_factor": TARGET_VS_LITELLM,
        },
    }

"""`make bench`: the added latency, throughput and CPU cost of the sidecar, beside a bare aiohttp
pass-through and LiteLLM proxy, all against one dev-upstream in one run, on loopback.

For each target (sidecar with the embedded engine, with the OPA daemon, the pass-through, LiteLLM):
start it, send the same small non-streaming call straight to dev-upstream and then through the
target (c=1: warm-up + N requests; c=32: M requests), stop it. "Added" compares each target with the
direct run made just before it. CPU per request is utime+stime of the target's process (from
/proc/<pid>/stat) over the run, divided by the requests. The load generator runs in its own process.

    .venv/bin/python bench/bench.py [--quick] [--json FILE] [--chat] [--targets embedded,...]
                                    [--profile FILE.svg]   # py-spy of the embedded sidecar

The sidecar inherits the caller's SIDECAR_* settings (e.g. SIDECAR_PII_MODE=off), except those that
pick the engine, listeners, upstream and keys, which the harness sets. `wrk` (apt-get install wrk) is
used when installed, else bench/loadgen.py. LiteLLM is installed into .bench-venv on first use.

It is a report: it exits 0 even when a target is missed (printed as MISS), and 1 only if nothing could
be measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from load import LoadGen, LoadResult
from procs import (
    Children,
    background_load,
    cpu_seconds,
    delete,
    note,
    pinned,
    plan_pinning,
    post_json,
    sample_cpu,
)
from report import Row, print_report
from targets import ROOT, Launcher, Service, bench_bundle, ensure_litellm, find_opa

ENDPOINTS: dict[str, tuple[str, dict[str, Any]]] = {
    "responses": ("/v1/responses", {"model": "gpt-4o-mini", "input": "hello"}),
    "chat": (
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]},
    ),
}
TARGETS = ("litellm", "embedded", "daemon", "passthrough")
LABELS = {
    "litellm": "LiteLLM proxy",
    "embedded": "sidecar embedded",
    "daemon": "sidecar daemon",
    "passthrough": "aiohttp pass-through",
}


@dataclass(frozen=True, slots=True)
class Counts:
    warmup: int  # at c=1, and again at c=32, before each measured run (not counted)
    n1: int  # measured requests at concurrency 1
    n32: int  # measured requests at concurrency 32
    n32_slow: int  # ... for LiteLLM, which serves ~100 req/s on one core


FULL = Counts(warmup=200, n1=2000, n32=4000, n32_slow=1500)
QUICK = Counts(warmup=50, n1=300, n32=800, n32_slow=300)


Measured = tuple[LoadResult, dict[str, float], dict[str, float]]


class Skip(Exception):
    """A target that cannot be measured; the reason is printed in the report."""


@dataclass
class Bench:
    args: argparse.Namespace
    counts: Counts
    children: Children = field(default_factory=Children)
    rows: list[Row] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    endpoints: list[str] = field(default_factory=lambda: ["responses"])

    def __post_init__(self) -> None:
        self.pin, why = plan_pinning(not self.args.no_pin)
        self.pin_note = why or self.pin.describe()
        self.loadgen = LoadGen(self.children, self.pin.others, self.args.loadgen)
        self.workdir = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
        bundle = bench_bundle(Path(self.args.bundle).resolve(), self.workdir)
        self.launcher = Launcher(self.children, self.pin, self.workdir, bundle)
        if self.args.chat:
            self.endpoints.append("chat")

    # -- one load ------------------------------------------------------------------------------------
    def _load(self, svc: Service, endpoint: str, n: int, c: int) -> LoadResult:
        path, body = ENDPOINTS[endpoint]
        return self.loadgen.run(svc.base + path, svc.key, json.dumps(body), n, c)

    def _measured(self, svc: Service, endpoint: str, n: int, c: int) -> Measured:
        """Warm up, then run `n` requests: the load's figures, CPU µs per request of the service's
        processes and, for a sidecar, the medians of its audit log's stage timings (ms)."""
        self._load(svc, endpoint, self.counts.warmup, c)
        procs = {"main": svc.proc, **svc.extra}
        offset = svc.audit.stat().st_size if svc.audit and svc.audit.exists() else 0
        before = {k: cpu_seconds(p.pid) for k, p in procs.items()}
        result = self._load(svc, endpoint, n, c)
        after = {k: cpu_seconds(p.pid) for k, p in procs.items()}
        done = max(result.requests, 1)
        cpu = {k: (after[k] - before[k]) / done * 1e6 for k in procs}
        stages = audit_stages(svc.audit, offset) if svc.audit is not None else {}
        if result.errors:
            bad = f"{result.errors} errors (first bad status {result.first_bad_status})"
            note(f"{svc.name} {endpoint} c={c}: {bad}")
        return result, cpu, stages

    def smoke(self, svc: Service, endpoint: str) -> str:
        """'' if one call works through `svc`, else why not."""
        path, body = ENDPOINTS[endpoint]
        status, text = post_json(svc.base + path, svc.key, body)
        want = '"output"' if endpoint == "responses" else '"choices"'
        return "" if status == 200 and want in text else f"HTTP {status} on {path}: {text[:300]}"

    def measure(self, svc: Service, upstream: Service, n32: int) -> None:
        for endpoint in self.endpoints:
            if why := self.smoke(svc, endpoint):
                self.skipped[f"{svc.name} ({endpoint})"] = why
                continue
            note(f"measuring {svc.name}, {endpoint}")
            delete(upstream.base + "/_dev/requests")
            direct1, up_cpu1, _ = self._measured(upstream, endpoint, self.counts.n1, 1)
            res1, cpu1, stages = self._measured(svc, endpoint, self.counts.n1, 1)
            direct32, up_cpu32, _ = self._measured(upstream, endpoint, n32, 32)
            res32, cpu32, _ = self._measured(svc, endpoint, n32, 32)
            row = Row(svc.name, endpoint, svc.info, direct1, res1, direct32, res32)
            row.cpu1, row.cpu32, row.upstream_cpu1, row.upstream_cpu32 = cpu1, cpu32, up_cpu1, up_cpu32
            row.stages = stages
            self.rows.append(row)

    # -- the targets ---------------------------------------------------------------------------------
    def run_target(self, name: str, upstream: Service) -> None:
        svc: Service | None = None
        opa = None
        try:
            if name == "embedded":
                svc = self.launcher.sidecar(upstream)
            elif name == "daemon":
                opa_bin, why = find_opa()
                if opa_bin is None:
                    raise Skip(why)
                opa = self.launcher.opa(opa_bin)
                svc = self.launcher.sidecar(upstream, opa)
            elif name == "passthrough":
                svc = self.launcher.passthrough(upstream)
            else:
                svc = self.start_litellm(upstream)
            self.measure(svc, upstream, self.counts.n32_slow if name == "litellm" else self.counts.n32)
            if name == "embedded" and self.args.profile:
                self.profile(svc)
        except Exception as exc:  # one target failing must not lose the others' figures
            label = svc.name if svc else LABELS[name]
            why = str(exc) if isinstance(exc, Skip | RuntimeError) else f"{type(exc).__name__}: {exc}"
            self.skipped[label] = f"{why} (logs: {self.launcher.logs})"
            note(f"{label}: skipped: {why}")
        finally:
            if svc is not None:
                self.children.stop(svc.proc)
            if opa is not None:
                self.children.stop(opa[0])

    def start_litellm(self, upstream: Service) -> Service:
        cli, why = ensure_litellm(install=not self.args.no_install)
        if cli is None:
            raise Skip(why)
        svc = self.launcher.litellm(upstream, cli)
        if self.smoke(svc, "responses") and not self.smoke(svc, "chat") and "chat" not in self.endpoints:
            note("LiteLLM does not proxy /v1/responses here; measuring /v1/chat/completions for every target")
            self.endpoints.append("chat")
        return svc

    def profile(self, svc: Service) -> None:
        """py-spy record of the embedded sidecar under a c=1 load (not one of the measured runs)."""
        out = Path(self.args.profile).resolve()
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(spy).exists():
            note("--profile: py-spy is not installed (pip install py-spy); no profile")
            return
        fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(out.suffix, "raw")
        argv = [
            spy,
            "record",
            "--pid",
            str(svc.proc.pid),
            "--rate",
            "500",
            "--nonblocking",
            "--format",
            fmt,
            "-o",
            str(out),
        ]
        spy_proc = self.children.start(
            pinned(argv, self.pin.others), log=self.workdir / "logs" / "py-spy.log"
        )
        time.sleep(1.0)
        self._load(svc, self.endpoints[0], self.counts.n1, 1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(spy_proc.pid, signal.SIGINT)
        with contextlib.suppress(Exception):
            spy_proc.wait(30)
        self.children.stop(spy_proc)
        note(
            f"profile of the embedded sidecar ({fmt}) written to {out}"
            if out.exists()
            else "py-spy wrote nothing"
        )

    def run(self) -> int:
        started = time.monotonic()
        first = sample_cpu(self.children)
        upstream = self.launcher.upstream()
        if why := self.smoke(upstream, "responses"):
            raise SystemExit(f"bench: dev-upstream does not answer the call: {why}")
        for name in self.args.targets:
            self.run_target(name, upstream)
        others, steal = background_load(first, sample_cpu(self.children))
        busy = (
            f"other processes used {others:.2f} CPUs on average during the run; hypervisor steal {steal:.2f}"
        )
        if others > 0.1 or steal > 0.1:
            busy += (
                "  <-- WARNING: the machine was not quiet, so these figures are noisy; run again when idle"
            )
        meta = {
            "host": f"{cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "loadgen": self.loadgen.kind,
            "pinning": self.pin_note,
            "counts": f"c=1: {self.counts.warmup} warm-up + {self.counts.n1} measured; "
            f"c=32: {self.counts.warmup} warm-up + {self.counts.n32} measured "
            f"({self.counts.n32_slow} for LiteLLM)",
            "bundle": self.args.bundle,
            "env": env_note(),
            "load": busy,
            "wall_s": round(time.monotonic() - started, 1),
            "quick": self.args.quick,
        }
        bodies = {e: f"POST {ENDPOINTS[e][0]} {json.dumps(ENDPOINTS[e][1])}" for e in self.endpoints}
        doc = print_report(self.rows, self.skipped, meta, bodies)
        if self.args.json:
            Path(self.args.json).write_text(json.dumps(doc, indent=2) + "\n")
            print(f"\nfigures written to {self.args.json}")
        return 0 if self.rows else 1

    def cleanup(self) -> None:
        """Stop every process this run started; keep the work directory only if it explains a skip."""
        self.children.stop_all()
        if not self.skipped:
            shutil.rmtree(self.workdir, ignore_errors=True)


def audit_stages(path: Path, offset: int) -> dict[str, float]:
    """Median stage timings (ms) of the calls that ended after `offset` in a sidecar audit log."""
    stages: dict[str, list[float]] = {}
    with contextlib.suppress(OSError), path.open("rb") as fh:
        fh.seek(offset)
        for raw in fh:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                rec = json.loads(raw)
                if rec.get("phase") != "end":
                    continue
                timings = dict(rec.get("latency_ms") or {})
                timings["upstream"] = (rec.get("upstream") or {}).get("latency_ms")
                if isinstance(timings.get("total"), int | float) and isinstance(
                    timings["upstream"], int | float
                ):
                    timings["own"] = timings["total"] - timings["upstream"]
                for key, value in timings.items():
                    if isinstance(value, int | float):
                        stages.setdefault(key, []).append(float(value))
    return {k: statistics.median(v) for k, v in stages.items()}


def env_note() -> str:
    """The caller's settings that change what is measured (the sidecar inherits them)."""
    shown = []
    for key in sorted(os.environ):
        if key.startswith("SIDECAR_") or key in {"RUST_BACKTRACE", "RUST_LIB_BACKTRACE"}:
            secret = any(word in key for word in ("KEY", "TOKEN", "SECRET", "PASSWORD"))
            shown.append(f"{key}={'***' if secret else os.environ[key]}")
    text = ", ".join(shown) or "(no SIDECAR_* or RUST_*BACKTRACE variables)"
    if os.environ.get("RUST_LIB_BACKTRACE", os.environ.get("RUST_BACKTRACE", "0")) != "0":
        text += "  <-- regorus then records a Rust backtrace on each internal error (slower decisions)"
    return text


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run (fewer requests)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--chat", action="store_true", help="also measure /v1/chat/completions")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        type=lambda s: [t for t in s.split(",") if t],
        help=f"comma-separated subset of {','.join(TARGETS)} (default: all)",
    )
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--no-install", action="store_true", help="do not pip-install LiteLLM if missing")
    parser.add_argument(
        "--profile", metavar="FILE", help="py-spy record the embedded sidecar (.svg/.json/.txt)"
    )
    parser.add_argument("-n", type=int, help="override the number of measured c=1 requests")
    parser.add_argument(
        "--bundle",
        default=str(ROOT / "rego"),
        help="policy bundle directory for both engines (default: rego/)",
    )
    args = parser.parse_args(argv)
    if bad := set(args.targets) - set(TARGETS):
        parser.error(f"unknown targets {sorted(bad)}; choose from {', '.join(TARGETS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = QUICK if args.quick else FULL
    if args.n:
        counts = Counts(counts.warmup, args.n, counts.n32, counts.n32_slow)
    bench = Bench(args, counts)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, terminate)
    try:
        return bench.run()
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping every process it started", file=sys.stderr)
        return 130
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())

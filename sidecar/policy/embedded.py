"""The embedded engine: regorus evaluating the OPA bundle in process.

A reload compiles the new bundle into a fresh regorus engine and swaps one reference, so requests in
flight finish on the old policy and none is dropped. Evaluation runs inline on the event loop: it is
a few microseconds for the shipped bundle, cheaper than a hop to a thread.
"""

from __future__ import annotations

import logging
import os
from typing import Any

# regorus reports some internal conditions as errors it then handles; with RUST_BACKTRACE=1 in the
# environment (common on CI and dev machines) each one captures a backtrace, which made every decision
# about 40% slower. Library backtraces are of no use to the sidecar's users, so they are off unless asked.
os.environ.setdefault("RUST_LIB_BACKTRACE", "0")

import orjson
import regorus  # after the setting above: it must precede the first backtrace capture

from sidecar.documents import PolicyInput
from sidecar.policy.bundle import Bundle
from sidecar.policy.cache import DecisionCache
from sidecar.policy.engine import EngineError

log = logging.getLogger(__name__)


def rule_path(decision_path: str) -> str:
    """`sidecar/decision` (REST form, docs/configuration.md) as the Rego path `data.sidecar.decision`."""
    return "data." + decision_path.strip("/").replace("/", ".")


def compile_bundle(bundle: Bundle, *, include_tests: bool = False) -> regorus.Engine:
    engine = regorus.Engine()
    try:
        for path, text in sorted(bundle.policies.items()):
            if include_tests or not path.endswith("_test.rego"):
                engine.add_policy(path, text)
        engine.add_data(bundle.data)
    except RuntimeError as exc:
        raise EngineError(f"bundle {bundle.source} does not compile: {_first_line(exc)}") from None
    return engine


def _first_line(exc: BaseException) -> str:
    # regorus appends a Rust backtrace to its messages; the first lines are the useful part.
    return "\n".join(str(exc).split("\nStack backtrace:")[0].splitlines()[:6])


class EmbeddedEngine:
    name = "embedded"

    def __init__(self, bundle: Bundle, decision_path: str, cache_entries: int = 0) -> None:
        self._rule = rule_path(decision_path)
        self._cache_entries = cache_entries
        self._bundle = bundle
        self._engine = self._compile(bundle)
        self.cache = self._cache_for(self._engine, bundle)

    def _compile(self, bundle: Bundle) -> regorus.Engine:
        engine = compile_bundle(bundle)
        # Evaluate once so a bundle whose decision rule is missing or broken is refused at load time.
        engine.set_input({})
        try:
            engine.eval_rule(self._rule)
        except RuntimeError as exc:
            raise EngineError(f"bundle {bundle.source}: {self._rule}: {_first_line(exc)}") from None
        return engine

    def _cache_for(self, engine: regorus.Engine, bundle: Bundle) -> DecisionCache:
        cache = DecisionCache.for_engine(engine, self._cache_entries)
        if cache.refusal:  # once per load: the bundle is correct, only slower
            log.warning(
                "decision cache off for this bundle: %s",
                cache.refusal,
                extra={"revision": bundle.revision, "source": bundle.source},
            )
        return cache

    @property
    def revision(self) -> str:
        return self._bundle.revision

    @property
    def bundle(self) -> Bundle:
        return self._bundle

    def swap(self, bundle: Bundle) -> None:
        """Replace the policy atomically; raises EngineError and keeps the old one if it does not compile."""
        engine = self._compile(bundle)
        cache = self._cache_for(engine, bundle)
        self._engine, self._bundle, self.cache = engine, bundle, cache
        log.info("policy bundle loaded", extra={"revision": bundle.revision, "source": bundle.source})

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def evaluate_sync(self, rule: str, doc: Any) -> Any:
        engine = self._engine
        try:
            engine.set_input(doc)
            return engine.eval_rule(rule)
        except RuntimeError as exc:
            # A conflict or a builtin error at evaluation time: the policy cannot answer.
            raise EngineError(f"evaluation failed: {_first_line(exc)}") from None

    async def evaluate(self, doc: PolicyInput) -> Any:
        cache = self.cache
        key = cache.key(doc)
        if key is None:
            return self.evaluate_sync(self._rule, doc)
        hit, decision = cache.get(key, doc)
        if hit:
            return decision
        # A miss: evaluate with line coverage on, to learn which volatile inputs this decision read.
        engine = self._engine
        engine.set_enable_coverage(True)
        engine.clear_coverage_data()
        try:
            decision = self.evaluate_sync(self._rule, doc)
            report = orjson.loads(engine.get_coverage_report_as_json())
        finally:
            engine.set_enable_coverage(False)
        cache.put(key, doc, decision, report)
        return decision

    async def query(self, path: str, doc: dict[str, Any]) -> Any:
        return self.evaluate_sync(rule_path(path), doc)

    async def ready(self) -> tuple[bool, str]:
        return True, f"embedded bundle {self.revision or '(no revision)'} loaded"

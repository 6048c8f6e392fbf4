"""A decision cache for the embedded engine, keyed on what the compiled bundle reads of its input.

A decision is a pure function of the input and the bundle's data, as long as the policy calls no
non-deterministic builtin. `reads.read_set` derives from the engine's parsed AST every `input` path
the bundle can read (see there for how references are bounded and when a bundle is refused):

- Stable paths (tenant, operation, model, PII counts, ...) always form the key.
- Volatile paths change on nearly every call (`budget`, `time`, `request.id`, body sizes). They join the
  key of an entry only if this evaluation actually read them: on a miss the engine evaluates with line
  coverage on, and a volatile path counts as read when a line referencing it ran. An evaluation that never
  read a value cannot depend on it, so e.g. a budget guard that only looks at budgets for expensive models
  does not defeat the cache for every other call.

A key records, for each path, the value found there or that there was none: `null` and a missing
field are different inputs to a policy (`input.a == null`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from sidecar.policy.bundle import Bundle
from sidecar.policy.reads import VOLATILE, InputReads, Path, Place, Unbounded, minimal, read_set

if TYPE_CHECKING:
    import regorus

__all__ = ["VOLATILE", "DecisionCache", "InputReads", "covered_lines", "input_paths", "input_reads"]

log = logging.getLogger(__name__)
_ABSENT = object()


def input_reads(bundle: Bundle) -> InputReads | None:
    """What the bundle's policies read of `input`, or None when that cannot be bounded."""
    from sidecar.policy.embedded import compile_bundle  # embedded imports this module

    try:
        return read_set(compile_bundle(bundle).get_ast_as_json())
    except Unbounded:
        return None


def input_paths(bundle: Bundle) -> list[Path] | None:
    """Every input path the bundle references (stable and volatile), or None."""
    reads = input_reads(bundle)
    return None if reads is None else minimal([*reads.stable, *reads.volatile])


def project(doc: Any, paths: list[Path] | tuple[Path, ...]) -> bytes:
    """The values at `paths`, with a bit per path that has none; raises TypeError if not JSON."""
    out: list[Any] = []
    absent = 0
    for i, path in enumerate(paths):
        node = doc
        for key in path:
            node = node.get(key, _ABSENT) if isinstance(node, dict) else _ABSENT
            if node is _ABSENT:
                absent |= 1 << i
                node = None
                break
        out.append(node)
    out.append(absent)
    return orjson.dumps(out, option=orjson.OPT_SORT_KEYS)


def covered_lines(report: dict[str, Any]) -> set[Place]:
    """(file, line) of every line regorus's coverage report marks as executed."""
    return {(f["path"], int(n)) for f in report.get("files", []) for n in f.get("covered", [])}


def _unreportable(report: dict[str, Any], places: dict[str, set[int]]) -> tuple[str, set[int]]:
    """Lines of `places` that a file of the report can mark neither covered nor not covered."""
    for f in report.get("files", []):
        missing = places.get(f["path"], set()) - {
            int(n) for k in ("covered", "not_covered") for n in f.get(k, [])
        }
        if missing:
            return f["path"], missing
    return "", set()


@dataclass(slots=True)
class _Variant:
    volatile: tuple[Path, ...]  # the volatile paths this evaluation read
    key: bytes  # the input projected onto them
    decision: Any


@dataclass(slots=True)
class DecisionCache:
    reads: InputReads | None
    entries: int
    refusal: str | None = None  # why a bundle is evaluated uncached, when the analysis refused it
    _data: OrderedDict[bytes, list[_Variant]] = field(default_factory=OrderedDict)
    hits: int = 0
    misses: int = 0

    # Volatile read lines per file, until a coverage report shows it can report them (see put).
    _unconfirmed: dict[str, set[int]] = field(default_factory=dict)

    @classmethod
    def for_engine(cls, engine: regorus.Engine, entries: int) -> DecisionCache:
        """A cache for the bundle compiled into `engine`, read from the engine's own AST."""
        if entries <= 0:
            return cls(None, 0)
        try:
            reads = read_set(engine.get_ast_as_json())
        except Unbounded as exc:
            return cls(None, entries, str(exc))
        unconfirmed: dict[str, set[int]] = {}
        for file, line in (place for places in reads.volatile.values() for place in places):
            unconfirmed.setdefault(file, set()).add(line)
        return cls(reads, entries, _unconfirmed=unconfirmed)

    @property
    def enabled(self) -> bool:
        return self.reads is not None

    def key(self, doc: Any) -> bytes | None:
        if self.reads is None:
            return None
        try:
            return project(doc, self.reads.stable)
        except TypeError:  # not JSON (e.g. a lone surrogate): evaluate uncached
            return None

    def get(self, key: bytes, doc: Any) -> tuple[bool, Any]:
        for variant in self._data.get(key, ()):
            try:
                same = not variant.volatile or project(doc, variant.volatile) == variant.key
            except TypeError:
                same = False
            if same:
                self._data.move_to_end(key)
                self.hits += 1
                return True, variant.decision
        self.misses += 1
        return False, None

    def put(self, key: bytes, doc: Any, decision: Any, report: dict[str, Any]) -> None:
        """Store the decision of a miss, evaluated with line coverage on (`report`)."""
        if self.reads is None:
            return
        if self._unconfirmed and not self._confirm(report):
            return
        executed = covered_lines(report)
        read = tuple(sorted(p for p, lines in self.reads.volatile.items() if lines & executed))
        try:
            variant = _Variant(read, project(doc, read), decision)
        except TypeError:
            return
        variants = self._data.setdefault(key, [])
        variants.append(variant)
        if len(variants) > 16:  # many budget states of one key: keep the newest
            del variants[0]
        self._data.move_to_end(key)
        if len(self._data) > self.entries:
            self._data.popitem(last=False)

    def _confirm(self, report: dict[str, Any]) -> bool:
        """Whether the report can show every volatile read line of the files it covers.

        A volatile read is unread only if its line is reported not covered. Should a regorus version
        leave such a line out of its report, coverage proves nothing: the cache turns itself off. A
        file is checked the first time it appears, before any entry whose evaluation ran in it is kept.
        """
        file, lines = _unreportable(report, self._unconfirmed)
        if lines:
            self.reads, self.refusal = None, f"{file}: coverage does not report lines {sorted(lines)}"
            self._data.clear()
            log.warning("decision cache off for this bundle: %s", self.refusal)
            return False
        for f in report.get("files", []):
            self._unconfirmed.pop(f["path"], None)
        return True

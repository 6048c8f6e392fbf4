"""A decision cache for the embedded engine, keyed on what the bundle reads of its input.

A decision is a pure function of the input and the bundle's data, as long as the policy calls no
non-deterministic builtin. The bundle's Rego is scanned for every `input.<path>` it references:

- Stable paths (tenant, operation, model, PII counts, ...) always form the key.
- Volatile paths change on nearly every call (`budget`, `time`, `request.id`, body sizes). They join the
  key of an entry only if this evaluation actually read them: on a miss the engine evaluates with line
  coverage on, and a volatile path counts as read when a line referencing it ran. An evaluation that never
  read a value cannot depend on it, so e.g. a budget guard that only looks at budgets for expensive models
  does not defeat the cache for every other call.

The analysis only ever widens the key: an alias (`x := input.request`) or an index (`input.a[k]`) keeps
the whole subtree, and `input` used whole, or any non-deterministic builtin, turns caching off.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from sidecar.policy.bundle import Bundle

_COMMENT = re.compile(r"#[^\n]*")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|`[^`]*`')
_INPUT = re.compile(r"\binput\b((?:\.[A-Za-z_]\w*)*)")
_VOLATILE_BUILTINS = re.compile(
    r"\b(time\.now_ns|rand\.|uuid\.|http\.send|net\.lookup|opa\.runtime|crypto\.x509\.parse)"
)
VOLATILE = (
    ("budget",),
    ("time",),
    ("request", "id"),
    ("request", "body_bytes"),
    ("request", "estimated_input_tokens"),
)

Path = tuple[str, ...]


def _is_volatile(path: Path) -> bool:
    return any(path[: len(v)] == v or v[: len(path)] == path for v in VOLATILE)


@dataclass(frozen=True, slots=True)
class InputReads:
    stable: list[Path]
    volatile: dict[Path, set[tuple[str, int]]]  # path -> the (file, line) places that read it


def _minimal(paths: set[Path]) -> list[Path]:
    return sorted(p for p in paths if not any(p[: len(q)] == q and p != q for q in paths))


def input_reads(bundle: Bundle) -> InputReads | None:
    """What the bundle's policies read of `input`, or None when that cannot be known."""
    stable: set[Path] = set()
    volatile: dict[Path, set[tuple[str, int]]] = {}
    for name, text in bundle.policies.items():
        if name.endswith("_test.rego"):
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            code = _STRING.sub('""', _COMMENT.sub("", line))
            if _VOLATILE_BUILTINS.search(code):
                return None
            for match in _INPUT.finditer(code):
                dotted = match.group(1)
                if not dotted:
                    return None  # `input` as a whole (or `input[x]`): anything may be read
                path = tuple(dotted[1:].split("."))
                if _is_volatile(path):
                    volatile.setdefault(path, set()).add((name, number))
                else:
                    stable.add(path)
    return InputReads(_minimal(stable), volatile)


def input_paths(bundle: Bundle) -> list[Path] | None:
    """Every input path the bundle references (stable and volatile), or None."""
    reads = input_reads(bundle)
    return None if reads is None else _minimal(set(reads.stable) | set(reads.volatile))


def project(doc: Any, paths: list[Path] | tuple[Path, ...]) -> bytes:
    out = []
    for path in paths:
        node = doc
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                break
        out.append(node)
    return orjson.dumps(out, option=orjson.OPT_SORT_KEYS)


def covered_lines(report: dict[str, Any]) -> set[tuple[str, int]]:
    """(file, line) of every line regorus's coverage report marks as executed."""
    return {(f["path"], int(n)) for f in report.get("files", []) for n in f.get("covered", [])}


@dataclass(slots=True)
class _Variant:
    volatile: tuple[Path, ...]  # the volatile paths this evaluation read
    key: bytes  # the input projected onto them
    decision: Any


@dataclass(slots=True)
class DecisionCache:
    reads: InputReads | None
    entries: int
    _data: OrderedDict[bytes, list[_Variant]] = field(default_factory=OrderedDict)
    hits: int = 0
    misses: int = 0

    @classmethod
    def for_bundle(cls, bundle: Bundle, entries: int) -> DecisionCache:
        return cls(input_reads(bundle) if entries > 0 else None, entries)

    @property
    def enabled(self) -> bool:
        return self.reads is not None

    def key(self, doc: Any) -> bytes | None:
        if self.reads is None:
            return None
        try:
            return project(doc, self.reads.stable)
        except TypeError:
            return None

    def get(self, key: bytes, doc: Any) -> tuple[bool, Any]:
        for variant in self._data.get(key, ()):
            if not variant.volatile or project(doc, variant.volatile) == variant.key:
                self._data.move_to_end(key)
                self.hits += 1
                return True, variant.decision
        self.misses += 1
        return False, None

    def put(self, key: bytes, doc: Any, decision: Any, executed: set[tuple[str, int]]) -> None:
        assert self.reads is not None
        read = tuple(sorted(p for p, lines in self.reads.volatile.items() if lines & executed))
        variants = self._data.setdefault(key, [])
        variants.append(_Variant(read, project(doc, read), decision))
        if len(variants) > 16:  # many budget states of one key: keep the newest
            del variants[0]
        self._data.move_to_end(key)
        if len(self._data) > self.entries:
            self._data.popitem(last=False)

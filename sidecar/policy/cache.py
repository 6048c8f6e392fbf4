"""A decision cache for the embedded engine, keyed on exactly what the bundle reads of its input.

A decision is a pure function of the input and the bundle's data, as long as the policy calls no
non-deterministic builtin. Most of the input changes on every call (`request.id`, `time.now`,
`body_bytes`), but a policy usually reads only a few stable parts of it (tenant, operation, model, PII
counts). The bundle's Rego is scanned for every `input.<path>` it references; the key is the input
projected onto those paths, so two calls that agree on everything the policy can see share a decision.

The analysis only ever widens the key: an alias (`x := input.request`) or an index (`input.a[k]`) keeps
the whole subtree, and `input` used whole, or any non-deterministic builtin, turns caching off.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

import orjson

from sidecar.policy.bundle import Bundle

_COMMENT = re.compile(r"#[^\n]*")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|`[^`]*`')
_INPUT = re.compile(r"\binput\b((?:\.[A-Za-z_]\w*)*)")
_VOLATILE = re.compile(
    r"\b(time\.now_ns|rand\.|uuid\.|http\.send|net\.lookup|opa\.runtime|crypto\.x509\.parse)"
)


def input_paths(bundle: Bundle) -> list[tuple[str, ...]] | None:
    """The input paths the bundle's policies read, or None when they cannot be known."""
    paths: set[tuple[str, ...]] = set()
    for name, text in bundle.policies.items():
        if name.endswith("_test.rego"):
            continue
        code = _STRING.sub('""', _COMMENT.sub("", text))
        if _VOLATILE.search(code):
            return None
        for match in _INPUT.finditer(code):
            dotted = match.group(1)
            if not dotted:
                return None  # `input` as a whole (or `input[x]`): anything may be read
            # `input.a.b[x]` or `input.a.b.c` both read within input.a.b...: the prefix covers them.
            paths.add(tuple(dotted[1:].split(".")))
    # A path already covered by a shorter one adds nothing.
    return sorted(p for p in paths if not any(p[: len(q)] == q and p != q for q in paths))


def _project(doc: Any, paths: list[tuple[str, ...]]) -> list[Any]:
    out = []
    for path in paths:
        node = doc
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                break
        out.append(node)
    return out


class DecisionCache:
    def __init__(self, bundle: Bundle, entries: int) -> None:
        self.paths = input_paths(bundle) if entries > 0 else None
        self._entries = entries
        self._data: OrderedDict[bytes, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.paths is not None

    def key(self, doc: Any) -> bytes | None:
        if self.paths is None:
            return None
        try:
            return orjson.dumps(_project(doc, self.paths), option=orjson.OPT_SORT_KEYS)
        except TypeError:
            return None

    def get(self, key: bytes) -> tuple[bool, Any]:
        if key in self._data:
            self._data.move_to_end(key)
            self.hits += 1
            return True, self._data[key]
        self.misses += 1
        return False, None

    def put(self, key: bytes, decision: Any) -> None:
        self._data[key] = decision
        if len(self._data) > self._entries:
            self._data.popitem(last=False)

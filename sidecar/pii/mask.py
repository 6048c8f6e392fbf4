"""Applying the decision's mask to the scanned fragments.

`placeholder` swaps each value for a stable per-request token (`<EMAIL_ADDRESS_1>`; the same value gets the
same token everywhere in the request) and remembers the original so the response can be restored.
`redact`, `replace`, `mask` and `hash` are presidio-anonymizer operators and are one-way.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Sequence

from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

from sidecar.documents import MaskRule
from sidecar.pii.engine import Span
from sidecar.pii.fields import Fields

# Hashes are salted so they cannot be reversed by a dictionary of likely values; one salt per process
# keeps a value's hash stable across calls, so hashed values can still be correlated in the upstream logs.
_SALT = os.urandom(16).hex()
_OPERATORS = {
    "redact": OperatorConfig("redact", {}),
    "replace": OperatorConfig("replace", {}),  # `<EMAIL_ADDRESS>`: the entity type, no value
    "mask": OperatorConfig("mask", {"masking_char": "*", "chars_to_mask": 1 << 20, "from_end": False}),
    "hash": OperatorConfig("hash", {"hash_type": "sha256", "salt": _SALT}),
}


class Placeholders:
    """The token map of one request. It lives only as long as the request and is never logged."""

    __slots__ = ("_counts", "_tokens", "originals")

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], str] = {}
        self._counts: Counter[str] = Counter()
        self.originals: dict[str, str] = {}

    def token(self, entity: str, value: str) -> str:
        token = self._tokens.get((entity, value))
        if token is None:
            self._counts[entity] += 1
            token = f"<{entity}_{self._counts[entity]}>"
            self._tokens[(entity, value)] = token
            self.originals[token] = value
        return token

    def __bool__(self) -> bool:
        return bool(self.originals)

    def __repr__(self) -> str:  # never show the values
        return f"Placeholders({len(self.originals)} tokens)"


@functools.cache
def _engine() -> AnonymizerEngine:
    return AnonymizerEngine()  # type: ignore[no-untyped-call]


def apply(text: str, spans: Sequence[Span], operator: str, placeholders: Placeholders) -> str:
    """`text` with each span rewritten by the operator (spans are non-overlapping, sorted by start)."""
    if operator == "placeholder":
        out: list[str] = []
        pos = 0
        for span in spans:
            out.append(text[pos : span.start])
            out.append(placeholders.token(span.entity, text[span.start : span.end]))
            pos = span.end
        out.append(text[pos:])
        return "".join(out)
    results = [RecognizerResult(s.entity, s.start, s.end, s.score) for s in spans]
    return str(_engine().anonymize(text, results, {"DEFAULT": _OPERATORS[operator]}).text)


def mask_fields(
    fields: Fields, spans: Sequence[Sequence[Span]], rule: MaskRule, placeholders: Placeholders
) -> Counter[str]:
    """Rewrite every fragment's spans of the rule's entities; returns how many values were masked, by type."""
    wanted = set(rule.entities)
    masked: Counter[str] = Counter()
    for fragment, found in zip(fields.fragments, spans, strict=True):
        chosen = [s for s in found if s.entity in wanted]
        if chosen:
            fields.replace(fragment, apply(fragment.text, chosen, rule.operator, placeholders))
            masked.update(s.entity for s in chosen)
    fields.commit()
    return masked

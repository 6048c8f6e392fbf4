"""Putting original values back where the model echoes placeholders (`mask.restore: true`).

In JSON bodies and in every non-delta stream event, each string is restored whole. Deltas arrive in
pieces, and a placeholder may be split across them (`<EMAIL_` + `ADDRESS_1>`), so each delta channel holds
back only the shortest tail that is still the beginning of one of this request's tokens, and releases it
with the next piece or when the channel ends. Inside `arguments` (JSON text) originals are JSON-escaped.
"""

from __future__ import annotations

import json
import re
from typing import Any

_TOKEN = re.compile(r"<[A-Z][A-Z0-9_]*_\d+>")


class Restorer:
    def __init__(self, originals: dict[str, str]) -> None:
        self._plain = dict(originals)
        self._escaped = {tok: json.dumps(value, ensure_ascii=False)[1:-1] for tok, value in originals.items()}
        self._prefixes = {tok[:i] for tok in originals for i in range(1, len(tok))}

    def text(self, value: str, in_json: bool = False) -> str:
        if "<" not in value:
            return value
        table = self._escaped if in_json else self._plain
        return _TOKEN.sub(lambda m: table.get(m.group(0), m.group(0)), value)

    def value(self, doc: Any, key: str | None = None) -> Any:
        """Restore every string in a JSON value; `arguments` strings hold JSON text."""
        if isinstance(doc, str):
            return self.text(doc, in_json=key == "arguments")
        if isinstance(doc, dict):
            return {k: self.value(v, k) for k, v in doc.items()}
        if isinstance(doc, list):
            return [self.value(v, key) for v in doc]
        return doc

    def held_from(self, text: str) -> int:
        """Where the tail that could still grow into a token begins (len(text) when nothing is held)."""
        start = text.rfind("<")
        if start < 0 or text[start:] not in self._prefixes:
            return len(text)
        return start


class Channel:
    """One text that arrives as deltas."""

    __slots__ = ("_in_json", "_pending", "_restorer")

    def __init__(self, restorer: Restorer, in_json: bool) -> None:
        self._restorer = restorer
        self._in_json = in_json
        self._pending = ""

    def feed(self, piece: str) -> str:
        text = self._pending + piece
        cut = self._restorer.held_from(text)
        self._pending = text[cut:]
        return self._restorer.text(text[:cut], self._in_json)

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return self._restorer.text(rest, self._in_json)

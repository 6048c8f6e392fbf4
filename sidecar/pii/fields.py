"""Where the user content is: the text fields of each operation's payload that are scanned and masked.

A `Fragment` is one string of the request document plus where to put a rewritten string back. JSON held
inside a string (function-call `arguments`, JSON tool outputs) is parsed once and its string leaves become
fragments of their own, so masking keeps it valid JSON; the owner is re-serialised after rewriting.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

Path = tuple[str | int, ...]

_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


@dataclass(slots=True)
class Fragment:
    path: Path  # where the string lives in the request document
    text: str
    inner: Path | None = None  # for JSON inside a string: the leaf's path in the parsed value


def leaves(value: Any, prefix: Path = ()) -> Iterator[tuple[Path, str]]:
    """Every non-empty string in a JSON value, with its path."""
    if isinstance(value, str):
        if value:
            yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from leaves(item, (*prefix, i))


def _set(root: Any, path: Path, value: str) -> None:
    node = root
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


class Fields:
    """The fragments of one request document, and the means to rewrite them in place."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.fragments: list[Fragment] = []
        self._parsed: dict[Path, Any] = {}
        self._dirty: set[Path] = set()

    def text(self, path: Path, value: Any) -> None:
        if isinstance(value, str) and value:
            self.fragments.append(Fragment(path, value))

    def json_text(self, path: Path, value: Any) -> None:
        """A string that usually holds JSON; plain text when it does not."""
        if not isinstance(value, str) or not value:
            return
        stripped = value.lstrip()
        if stripped[:1] in ("{", "["):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict | list):
                self._parsed[path] = parsed
                self.fragments.extend(Fragment(path, leaf, inner) for inner, leaf in leaves(parsed))
                return
        self.fragments.append(Fragment(path, value))

    def tree(self, path: Path, value: Any) -> None:
        for inner, leaf in leaves(value):
            self.fragments.append(Fragment((*path, *inner), leaf))

    def replace(self, fragment: Fragment, new_text: str) -> None:
        if fragment.inner is None:
            _set(self.doc, fragment.path, new_text)
        else:
            _set(self._parsed[fragment.path], fragment.inner, new_text)
            self._dirty.add(fragment.path)

    def commit(self) -> None:
        for path in self._dirty:
            _set(self.doc, path, json.dumps(self._parsed[path], ensure_ascii=False))
        self._dirty.clear()


def _content(fields: Fields, path: Path, content: Any) -> None:
    """A message's content: a string, or a list of parts of which the text parts count."""
    if isinstance(content, str):
        fields.text(path, content)
    elif isinstance(content, list):
        for i, part in enumerate(content):
            if isinstance(part, dict):
                if part.get("type") in _TEXT_PARTS:
                    fields.text((*path, i, "text"), part.get("text"))
                elif part.get("type") == "refusal":
                    fields.text((*path, i, "refusal"), part.get("refusal"))


def _response_items(fields: Fields, path: Path, items: Any) -> None:
    if isinstance(items, str):
        fields.text(path, items)
        return
    if not isinstance(items, list):
        return
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        at = (*path, i)
        kind = item.get("type", "message")
        if kind == "message":
            _content(fields, (*at, "content"), item.get("content"))
        elif kind in ("function_call", "mcp_call"):
            fields.json_text((*at, "arguments"), item.get("arguments"))
            fields.json_text((*at, "output"), item.get("output"))
        elif kind in ("function_call_output", "custom_tool_call_output", "local_shell_call_output"):
            output = item.get("output")
            if isinstance(output, list):
                _content(fields, (*at, "output"), output)
            else:
                fields.json_text((*at, "output"), output)
        elif kind == "custom_tool_call":
            fields.text((*at, "input"), item.get("input"))
        elif kind == "reasoning":
            for j, summary in enumerate(item.get("summary") or []):
                if isinstance(summary, dict):
                    fields.text((*at, "summary", j, "text"), summary.get("text"))


def _chat_messages(fields: Fields, messages: Any) -> None:
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        at: Path = ("messages", i)
        if message.get("role") == "tool" and isinstance(message.get("content"), str):
            fields.json_text((*at, "content"), message["content"])
        else:
            _content(fields, (*at, "content"), message.get("content"))
        fields.text((*at, "refusal"), message.get("refusal"))
        for j, call in enumerate(message.get("tool_calls") or []):
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                fields.json_text(
                    (*at, "tool_calls", j, "function", "arguments"), call["function"].get("arguments")
                )
        legacy = message.get("function_call")
        if isinstance(legacy, dict):
            fields.json_text((*at, "function_call", "arguments"), legacy.get("arguments"))


def _strings(fields: Fields, doc: dict[str, Any], key: str) -> None:
    value = doc.get(key)
    if isinstance(value, str):
        fields.text((key,), value)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            fields.text((key, i), item)  # token-id arrays are skipped: they are not strings


def _traces(fields: Fields, doc: dict[str, Any]) -> None:
    # The Agents SDK's exporter: {"data": [trace | span]}; spans carry messages, tool inputs and outputs.
    for i, item in enumerate(doc.get("data") or []):
        data = item.get("span_data") if isinstance(item, dict) else None
        if isinstance(data, dict):
            for key in ("input", "output", "instructions"):
                if key in data:
                    fields.tree(("data", i, "span_data", key), data[key])


def collect_output(doc: dict[str, Any]) -> Fields:
    """The model-written text of a response object (Responses or Chat), for response masking."""
    fields = Fields(doc)
    if isinstance(doc.get("output"), list):
        _response_items(fields, ("output",), doc["output"])
    for i, choice in enumerate(doc.get("choices") or []):
        if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
            message = choice["message"]
            _content(fields, ("choices", i, "message", "content"), message.get("content"))
            fields.text(("choices", i, "message", "refusal"), message.get("refusal"))
            for j, call in enumerate(message.get("tool_calls") or []):
                if isinstance(call, dict) and isinstance(call.get("function"), dict):
                    path = ("choices", i, "message", "tool_calls", j, "function", "arguments")
                    fields.json_text(path, call["function"].get("arguments"))
    return fields


def collect(operation: str, doc: dict[str, Any]) -> Fields:
    """The user-content fragments of a request, by operation (docs/operations.md names)."""
    fields = Fields(doc)
    if operation in ("responses.create", "responses.input_tokens", "responses.compact"):
        fields.text(("instructions",), doc.get("instructions"))
        _response_items(fields, ("input",), doc.get("input"))
    elif operation == "chat.completions.create":
        _chat_messages(fields, doc.get("messages"))
    elif operation in ("embeddings.create", "moderations.create"):
        _strings(fields, doc, "input")
    elif operation == "completions.create":
        _strings(fields, doc, "prompt")
    elif operation in ("conversations.create", "conversations.items.create"):
        _response_items(fields, ("items",), doc.get("items"))
    elif operation == "traces.ingest":
        _traces(fields, doc)
    return fields

"""Finding user content in each operation's payload, and masking it with every operator."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from sidecar.documents import MaskRule
from sidecar.pii.engine import Span
from sidecar.pii.fields import collect
from sidecar.pii.mask import Placeholders, apply, mask_fields

EMAIL = re.compile(r"[\w.]+@[\w.]+\.\w+")


def fake_spans(text: str) -> list[Span]:
    """Stand-in detector output for these unit tests: e-mail addresses only (the real one is tested apart)."""
    return [Span("EMAIL_ADDRESS", m.start(), m.end(), 1.0) for m in EMAIL.finditer(text)]


RESPONSES = {
    "model": "gpt-4o",
    "instructions": "Reply to ops@acme.io",
    "input": [
        {"role": "user", "content": "Mail ana@example.com please"},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "and bo@example.com"},
                {"type": "input_image", "image_url": "x"},
            ],
        },
        {
            "type": "function_call",
            "call_id": "c1",
            "name": "send",
            "arguments": json.dumps({"to": "ana@example.com", "n": 1}),
        },
        {
            "type": "function_call_output",
            "call_id": "c1",
            "output": json.dumps({"sent_to": ["ana@example.com"]}),
        },
        {"type": "function_call_output", "call_id": "c2", "output": "plain text from cy@example.com"},
    ],
    "tools": [{"type": "function", "name": "send", "description": "never scanned: dev@tools.io"}],
}
CHAT = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "I am ana@example.com"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"email": "ana@example.com"}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": '{"ok": true, "owner": "bo@example.com"}'},
        {"role": "user", "content": [{"type": "text", "text": "cc cy@example.com"}]},
    ],
}  # fmt: skip


def _texts(operation: str, doc: dict[str, Any]) -> list[str]:
    return [f.text for f in collect(operation, json.loads(json.dumps(doc))).fragments]


def test_fields_of_each_operation() -> None:
    responses = _texts("responses.create", RESPONSES)
    assert "Reply to ops@acme.io" in responses and "and bo@example.com" in responses
    assert "ana@example.com" in responses  # leaves of the JSON arguments and output
    assert "plain text from cy@example.com" in responses
    assert not any("dev@tools.io" in t for t in responses)  # tool definitions are not user content
    chat = _texts("chat.completions.create", CHAT)
    assert {"I am ana@example.com", "ana@example.com", "bo@example.com", "cc cy@example.com"} <= set(chat)
    assert _texts("embeddings.create", {"input": ["a@b.io", "x", [1, 2]]}) == ["a@b.io", "x"]
    assert _texts("embeddings.create", {"input": "one"}) == ["one"]
    traces = {
        "data": [
            {
                "object": "trace.span",
                "span_data": {"type": "function", "input": '{"q": "a@b.io"}', "output": "done"},
            }
        ]
    }
    assert _texts("traces.ingest", traces) == ['{"q": "a@b.io"}', "done"]
    assert _texts("models.list", {"x": "a@b.io"}) == []


def _mask(
    operation: str, doc: dict[str, Any], operator: str = "placeholder"
) -> tuple[dict[str, Any], Placeholders, Any]:
    doc = json.loads(json.dumps(doc))
    fields = collect(operation, doc)
    placeholders = Placeholders()
    spans = [fake_spans(f.text) for f in fields.fragments]
    masked = mask_fields(fields, spans, MaskRule(("EMAIL_ADDRESS",), operator), placeholders)
    return doc, placeholders, masked


def test_placeholders_are_stable_and_json_stays_valid() -> None:
    doc, placeholders, masked = _mask("responses.create", RESPONSES)
    text = json.dumps(doc)
    for value in ["ana@example.com", "bo@example.com", "cy@example.com", "ops@acme.io"]:
        assert value not in text
    assert "dev@tools.io" in text  # outside user content: untouched
    args = json.loads(doc["input"][2]["arguments"])
    assert args == {"to": placeholders.token("EMAIL_ADDRESS", "ana@example.com"), "n": 1}
    assert json.loads(doc["input"][3]["output"]) == {"sent_to": [args["to"]]}  # same value, same token
    assert doc["input"][0]["content"] == f"Mail {args['to']} please"
    assert set(placeholders.originals.values()) == {
        "ana@example.com",
        "bo@example.com",
        "cy@example.com",
        "ops@acme.io",
    }
    assert masked["EMAIL_ADDRESS"] == 6
    assert re.fullmatch(r"<EMAIL_ADDRESS_\d+>", args["to"])
    assert "ana@example.com" not in repr(placeholders)


def test_chat_masking_keeps_tool_arguments_valid() -> None:
    doc, placeholders, _ = _mask("chat.completions.create", CHAT)
    args = json.loads(doc["messages"][2]["tool_calls"][0]["function"]["arguments"])
    assert args["email"] == placeholders.token("EMAIL_ADDRESS", "ana@example.com")
    assert json.loads(doc["messages"][3]["content"])["owner"].startswith("<EMAIL_ADDRESS_")
    assert "example.com" not in json.dumps(doc)


@pytest.mark.parametrize(
    ("operator", "check"),
    [
        ("redact", lambda out: out == "Mail  please"),
        ("replace", lambda out: out == "Mail <EMAIL_ADDRESS> please"),
        ("mask", lambda out: out == "Mail " + "*" * len("ana@example.com") + " please"),
        ("hash", lambda out: re.fullmatch(r"Mail [0-9a-f]{64} please", out) is not None),
        ("placeholder", lambda out: out == "Mail <EMAIL_ADDRESS_1> please"),
    ],
)
def test_operators(operator: str, check: Any) -> None:
    text = "Mail ana@example.com please"
    placeholders = Placeholders()
    out = apply(text, fake_spans(text), operator, placeholders)
    assert check(out), out
    assert bool(placeholders) == (operator == "placeholder")


def test_hash_is_stable_within_the_process() -> None:
    text = "ana@example.com"
    one = apply(text, fake_spans(text), "hash", Placeholders())
    two = apply(text, fake_spans(text), "hash", Placeholders())
    assert one == two and text not in one

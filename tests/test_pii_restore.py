"""Placeholder restore: for any split of the upstream text into chunks, the restored stream equals the
restored whole (Responses and Chat events, text and JSON arguments)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AnyStr

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.pii.restore import Channel, Restorer
from sidecar.pii.transforms import ChatRestore, JsonRestore, ResponsesRestore
from sidecar.pipeline.stream import SseSplitter, event_data

ORIGINALS = {
    "<EMAIL_ADDRESS_1>": "ana@example.com",
    "<EMAIL_ADDRESS_10>": "x@y.io",
    "<PERSON_1>": 'Zoë "Z" O\'Brien',
    "<PHONE_NUMBER_1>": "+1 (415) 555-0100",
}
RESTORER = Restorer(ORIGINALS)

pieces = st.sampled_from(
    [*ORIGINALS, "<", ">", "<EMAIL_", "ADDRESS_1>", "<NOT_A_TOKEN_1>", "a < b", " ", "é", "1"]
)
texts = st.lists(st.one_of(pieces, st.text(alphabet='abc <>_EMAIL1\n"\\', max_size=6)), max_size=25).map(
    "".join
)


def split(text: AnyStr, cuts: list[int]) -> list[AnyStr]:
    """`text` cut at the given offsets (taken modulo its length)."""
    out, pos = [], 0
    for cut in sorted({c % (len(text) + 1) for c in cuts}):
        out.append(text[pos:cut])
        pos = cut
    out.append(text[pos:])
    return out


def expected(text: str) -> str:
    out = text
    for token in sorted(ORIGINALS, key=len, reverse=True):
        out = out.replace(token, ORIGINALS[token])
    return out


@given(texts, st.lists(st.integers(min_value=0, max_value=400), max_size=20))
def test_channel_equals_whole(text: str, cuts: list[int]) -> None:
    channel = Channel(RESTORER, in_json=False)
    streamed = "".join(channel.feed(p) for p in split(text, cuts)) + channel.flush()
    assert streamed == RESTORER.text(text) == expected(text)


def test_only_the_shortest_possible_tail_is_held() -> None:
    channel = Channel(RESTORER, in_json=False)
    assert channel.feed("Write to <EMAIL_") == "Write to "
    assert channel.feed("ADDRESS_1> now <") == "ana@example.com now "
    assert channel.feed("b") == "<b"  # `<b` starts no token: released at once
    assert channel.feed(" <PERSON_1") == " "
    assert channel.feed(">") == 'Zoë "Z" O\'Brien'
    assert channel.flush() == ""


def test_arguments_are_restored_as_valid_json() -> None:
    args = json.dumps({"to": "<PERSON_1>", "cc": ["<EMAIL_ADDRESS_1>"]})
    restored = RESTORER.text(args, in_json=True)
    assert json.loads(restored) == {"to": 'Zoë "Z" O\'Brien', "cc": ["ana@example.com"]}


def _sse(name: str | None, data: dict[str, Any]) -> bytes:
    head = f"event: {name}\n" if name else ""
    return (head + "data: " + json.dumps(data) + "\n\n").encode()


def _run(transform: Any, events: list[bytes], chunking: list[int]) -> list[Any]:
    async def go() -> bytes:
        out = b""
        splitter = SseSplitter()
        for chunk in split(b"".join(events), chunking):
            for event in splitter.feed(chunk):
                out += await transform.event(event)
        return out

    out = asyncio.run(go())
    splitter = SseSplitter()
    return [event_data(e) for e in splitter.feed(out)]


@settings(max_examples=150, deadline=None)
@given(
    texts,
    st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    st.lists(st.integers(0, 4000), max_size=10),
)
def test_responses_stream_equals_whole(text: str, cuts: list[int], byte_cuts: list[int]) -> None:
    base = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    deltas = [p for p in split(text, cuts) if p]
    events = [
        _sse("response.output_text.delta", {"type": "response.output_text.delta", **base, "delta": d})
        for d in deltas
    ]
    events.append(
        _sse("response.output_text.done", {"type": "response.output_text.done", **base, "text": text})
    )
    final = {
        "output": [{"type": "message", "id": "msg_1", "content": [{"type": "output_text", "text": text}]}]
    }
    events.append(_sse("response.completed", {"type": "response.completed", "response": final}))
    datas = _run(ResponsesRestore(RESTORER), events, byte_cuts)
    streamed = "".join(d["delta"] for d in datas if d["type"] == "response.output_text.delta")
    done = next(d for d in datas if d["type"] == "response.output_text.done")
    completed = next(d for d in datas if d["type"] == "response.completed")
    whole = expected(text)
    assert streamed == whole and done["text"] == whole
    assert completed["response"]["output"][0]["content"][0]["text"] == whole


@settings(max_examples=150, deadline=None)
@given(texts, st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_chat_stream_equals_whole(text: str, cuts: list[int]) -> None:
    args = json.dumps({"note": text})
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    ]
    chunks += [
        {"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
        for p in split(text, cuts)
        if p
    ]
    first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [first]}, "finish_reason": None}]})
    for piece in split(args, cuts):
        call = {"index": 0, "function": {"arguments": piece}}
        chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]})
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events = [_sse(None, c) for c in chunks] + [b"data: [DONE]\n\n"]
    datas = [d for d in _run(ChatRestore(RESTORER), events, []) if d]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in datas)
    arguments = "".join(
        call["function"]["arguments"]
        for c in datas
        for call in c["choices"][0]["delta"].get("tool_calls") or []
    )
    assert content == expected(text)
    assert json.loads(arguments) == {"note": expected(text)}


def test_json_bodies_are_restored() -> None:
    body = {
        "object": "response",
        "output": [
            {
                "type": "message",
                "content": [{"type": "output_text", "text": "Hi <PERSON_1>, mail <EMAIL_ADDRESS_1>"}],
            },
            {"type": "function_call", "arguments": json.dumps({"to": "<PERSON_1>"})},
        ],
    }
    out = json.loads(asyncio.run(JsonRestore(RESTORER).body(json.dumps(body).encode())))
    assert out["output"][0]["content"][0]["text"] == 'Hi Zoë "Z" O\'Brien, mail ana@example.com'
    assert json.loads(out["output"][1]["arguments"]) == {"to": 'Zoë "Z" O\'Brien'}
    untouched = b'{"no": "placeholders"}'
    assert asyncio.run(JsonRestore(RESTORER).body(untouched)) is untouched

"""The dev upstream, driven by the real `openai` client and the real Agents SDK."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from agents import Agent, ModelSettings, RunConfig, Runner, function_tool
from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel
from agents.models.openai_responses import OpenAIResponsesModel
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseFunctionToolCall, ResponseStreamEvent
from pydantic import TypeAdapter

from sidecar.devupstream.answers import sample_arguments
from sidecar.devupstream.common import count_tokens, text_chunks, truncate_tokens
from sidecar.devupstream.server import build_parser
from tests.devupstream_fixtures import DevUpstream, running_dev_upstream

MODEL = "gpt-4o"
USER_TEXT = "hello <EMAIL_ADDRESS_1>"  # 4 tokens: hello < EMAIL_ADDRESS_1 >
ECHO = "Echo: hello <EMAIL_ADDRESS_1>"  # 6 tokens

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "metric": {"type": "boolean"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days", "metric", "unit"],
    "additionalProperties": False,
}
WEATHER_ARGS = {"city": "sample", "days": 1, "metric": True, "unit": "celsius"}
RESPONSES_TOOL = {"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA, "strict": True}
CHAT_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}

_EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(scope="module")
async def up() -> AsyncIterator[DevUpstream]:
    async with running_dev_upstream() as server:
        yield server


@pytest.fixture(scope="module")
async def client(up: DevUpstream) -> AsyncIterator[AsyncOpenAI]:
    c = AsyncOpenAI(base_url=up.base_url, api_key="sk-test", max_retries=0)
    yield c
    await c.close()


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def sse_events(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    """(event name, data) pairs of a raw SSE response."""
    async with http.post(url, json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        text = await resp.text()
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event, data = "", ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        out.append((event, data))
    return out


# ----------------------------------------------------------------------------------------------------
# Pure helpers


def test_token_counting_and_truncation() -> None:
    assert count_tokens(USER_TEXT) == 4
    assert count_tokens(ECHO) == 6
    assert count_tokens("Don't stop!") == 5  # Don ' t stop !
    assert truncate_tokens(ECHO, 3) == ("Echo: hello", 3, True)
    assert truncate_tokens(ECHO, 6) == (ECHO, 6, False)
    assert truncate_tokens(ECHO, None) == (ECHO, 6, False)
    for text in (ECHO, "  a b  ", "", "x\ny"):
        assert "".join(text_chunks(text)) == text
    assert len(text_chunks(ECHO)) == 6


def test_sample_arguments_from_schema() -> None:
    assert json.loads(sample_arguments(WEATHER_SCHEMA)) == WEATHER_ARGS
    schema = {
        "type": "object",
        "properties": {
            "loc": {"$ref": "#/$defs/Loc"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "opt": {"anyOf": [{"type": "null"}, {"type": "number"}]},
            "fixed": {"const": "x"},
            "dflt": {"type": "string", "default": "d"},
        },
        "$defs": {"Loc": {"type": "object", "properties": {"lat": {"type": "number"}}}},
    }
    assert json.loads(sample_arguments(schema)) == {
        "loc": {"lat": 1},
        "tags": ["sample"],
        "opt": 1,
        "fixed": "x",
        "dflt": "d",
    }
    assert json.loads(sample_arguments(None)) == {}


def test_cli_parser_defaults() -> None:
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.api_key, args.latency_ms) == ("127.0.0.1", 8090, None, 0.0)


# ----------------------------------------------------------------------------------------------------
# Responses


async def test_responses_json_echo_and_usage(client: AsyncOpenAI) -> None:
    raw = await client.responses.with_raw_response.create(
        model=MODEL, input=USER_TEXT, instructions="Be brief."
    )
    assert raw.headers.get("x-request-id")
    resp = Response.model_validate(raw.http_response.json())  # strict validation of the wire JSON
    assert resp.status == "completed"
    assert resp.output_text == ECHO
    assert resp.usage is not None
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (4 + 3, 6, 13)
    assert resp.usage.input_tokens_details.cached_tokens == 0
    assert resp.usage.output_tokens_details.reasoning_tokens == 0
    assert resp.model == MODEL and resp.instructions == "Be brief."


async def test_responses_echoes_last_user_message(client: AsyncOpenAI) -> None:
    resp = await client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "Echo: first"},
            {"role": "user", "content": [{"type": "input_text", "text": "second one"}]},
        ],
    )
    assert resp.output_text == "Echo: second one"
    assert resp.usage is not None and resp.usage.input_tokens == 1 + 3 + 2


async def test_responses_stream_event_sequence(client: AsyncOpenAI, up: DevUpstream) -> None:
    stream = await client.responses.create(model=MODEL, input=USER_TEXT, stream=True)
    events = [event async for event in stream]
    types = [e.type for e in events]
    n_deltas = types.count("response.output_text.delta")
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * n_deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert n_deltas == 6
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(getattr(e, "delta", "") for e in events if e.type == "response.output_text.delta")
    assert deltas == ECHO
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == ECHO
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (4, 6)
    assert events[0].response.status == "in_progress"  # type: ignore[union-attr]


async def test_responses_stream_validates_against_types(http: aiohttp.ClientSession, up: DevUpstream) -> None:
    for body in (
        {"model": MODEL, "input": USER_TEXT, "stream": True},
        {"model": MODEL, "input": "x", "tools": [RESPONSES_TOOL], "stream": True},
        {"model": MODEL, "input": USER_TEXT, "stream": True, "max_output_tokens": 2},
    ):
        events = await sse_events(http, up.base_url + "/responses", body)
        for name, data in events:
            parsed = _EVENT_ADAPTER.validate_python(json.loads(data))
            assert parsed.type == name
        assert not any(data == "[DONE]" for _, data in events)


async def test_responses_function_call_json_and_stream(client: AsyncOpenAI) -> None:
    tools: Any = [RESPONSES_TOOL]
    raw = await client.responses.with_raw_response.create(model=MODEL, input="weather?", tools=tools)
    resp = Response.model_validate(raw.http_response.json())
    (item,) = resp.output
    assert item.type == "function_call"
    assert item.name == "get_weather" and item.call_id.startswith("call_")
    assert json.loads(item.arguments) == WEATHER_ARGS
    assert resp.usage is not None and resp.usage.output_tokens == count_tokens(item.arguments)

    stream = await client.responses.create(model=MODEL, input="weather?", tools=tools, stream=True)
    events = [e async for e in stream]
    types = [e.type for e in events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert types[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) > 1
    args = "".join(d.delta for d in deltas)
    assert json.loads(args) == WEATHER_ARGS
    added = events[2].item  # type: ignore[union-attr]
    assert isinstance(added, ResponseFunctionToolCall)
    assert added.name == "get_weather" and added.arguments == ""


async def test_responses_tool_choice_picks_named_tool(client: AsyncOpenAI) -> None:
    other = {"type": "function", "name": "other", "parameters": {"type": "object", "properties": {}}}
    tools: Any = [RESPONSES_TOOL, other]
    resp = await client.responses.create(
        model=MODEL, input="x", tools=tools, tool_choice={"type": "function", "name": "other"}
    )
    assert resp.output[0].type == "function_call" and resp.output[0].name == "other"
    resp = await client.responses.create(model=MODEL, input="x", tools=tools, tool_choice="none")
    assert resp.output_text == "Echo: x"


async def test_responses_function_call_output_is_quoted(client: AsyncOpenAI) -> None:
    resp = await client.responses.create(
        model=MODEL,
        tools=[RESPONSES_TOOL],  # type: ignore[list-item]
        input=[
            {"role": "user", "content": "weather?"},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 21C"},
        ],
    )
    assert resp.output_text == "Tool result: Sunny, 21C"


async def test_responses_max_output_tokens_truncates(client: AsyncOpenAI) -> None:
    resp = await client.responses.create(model=MODEL, input=USER_TEXT, max_output_tokens=3)
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output_text == "Echo: hello"
    assert resp.usage is not None and resp.usage.output_tokens == 3

    stream = await client.responses.create(model=MODEL, input=USER_TEXT, max_output_tokens=3, stream=True)
    events = [e async for e in stream]
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.status == "incomplete"
    assert events[-1].response.output_text == "Echo: hello"


async def test_responses_retrieve_and_delete(client: AsyncOpenAI) -> None:
    resp = await client.responses.create(model=MODEL, input="keep me")
    again = await client.responses.retrieve(resp.id)
    assert again.output_text == "Echo: keep me"
    await client.responses.delete(resp.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(resp.id)


async def test_responses_stream_error_event(client: AsyncOpenAI) -> None:
    stream = await client.responses.create(
        model=MODEL, input="x", stream=True, extra_headers={"x-dev-upstream-stream-fail": "1"}
    )
    events = [e async for e in stream]
    assert events[-1].type == "error"
    assert "response.completed" not in [e.type for e in events]


async def test_reply_and_tool_args_override_headers(client: AsyncOpenAI) -> None:
    resp = await client.responses.create(
        model=MODEL, input="x", extra_headers={"x-dev-upstream-reply": "card 4111 1111 1111 1111"}
    )
    assert resp.output_text == "card 4111 1111 1111 1111"
    resp = await client.responses.create(
        model=MODEL,
        input="x",
        tools=[RESPONSES_TOOL],  # type: ignore[list-item]
        extra_headers={"x-dev-upstream-tool-args": '{"city":"<LOCATION_1>"}'},
    )
    assert resp.output[0].type == "function_call" and resp.output[0].arguments == '{"city":"<LOCATION_1>"}'


# ----------------------------------------------------------------------------------------------------
# Chat Completions


async def test_chat_json_echo_and_usage(client: AsyncOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": USER_TEXT}],
    )
    completion = ChatCompletion.model_validate(raw.http_response.json())
    choice = completion.choices[0]
    assert choice.message.content == ECHO and choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3 + 4, 6)
    assert completion.usage.total_tokens == 13


async def test_chat_stream_with_and_without_usage(
    client: AsyncOpenAI, http: aiohttp.ClientSession, up: DevUpstream
) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": USER_TEXT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ECHO
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, 6)
    assert all(c.usage is None for c in chunks[:-1])

    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": USER_TEXT}],
        "stream": True,
    }
    events = await sse_events(http, up.base_url + "/chat/completions", body)
    assert events[-1] == ("", "[DONE]")
    parsed = [ChatCompletionChunk.model_validate(json.loads(d)) for _, d in events[:-1]]
    assert all(p.choices for p in parsed), "no usage chunk without include_usage"
    assert parsed[-1].choices[0].finish_reason == "stop"
    assert all("usage" not in json.loads(d) for _, d in events[:-1])


async def test_chat_tool_calls_json_and_stream(client: AsyncOpenAI) -> None:
    tools: Any = [CHAT_TOOL]
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "weather?"}], tools=tools
    )
    completion = ChatCompletion.model_validate(raw.http_response.json())
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS

    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "weather?"}], tools=tools, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    tool_deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    first, rest = tool_deltas[0], tool_deltas[1:]
    assert first.index == 0 and first.id and first.id.startswith("call_") and first.type == "function"
    assert first.function is not None and first.function.name == "get_weather"
    assert len(rest) > 1 and all(d.id is None and d.function and d.function.name is None for d in rest)
    args = "".join((d.function.arguments or "") for d in tool_deltas if d.function)
    assert json.loads(args) == WEATHER_ARGS
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_chat_tool_message_is_quoted(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model=MODEL,
        tools=[CHAT_TOOL],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21C"},
        ],
    )
    assert completion.choices[0].message.content == "Tool result: Sunny, 21C"
    assert (
        completion.usage is not None and completion.usage.prompt_tokens == 2 + 2 + 3
    )  # weather ? / { } / Sunny , 21C


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
async def test_chat_max_tokens_truncates(client: AsyncOpenAI, param: str) -> None:
    kwargs: Any = {param: 3}
    completion = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": USER_TEXT}], **kwargs
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "Echo: hello"
    assert completion.usage is not None and completion.usage.completion_tokens == 3

    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": USER_TEXT}], stream=True, **kwargs
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_chat_stream_error_raises(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "x"}],
        stream=True,
        extra_headers={"x-dev-upstream-stream-fail": "1"},
    )
    with pytest.raises(openai.APIError, match="Injected mid-stream failure"):
        async for _ in stream:
            pass


# ----------------------------------------------------------------------------------------------------
# Fault injection, auth, request log


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (409, openai.ConflictError),
        (422, openai.UnprocessableEntityError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
async def test_fail_header_maps_to_openai_exceptions(
    client: AsyncOpenAI, status: int, exc: type[openai.APIStatusError]
) -> None:
    headers = {"x-dev-upstream-fail": str(status)}
    with pytest.raises(exc) as info:
        await client.responses.create(model=MODEL, input="x", extra_headers=headers)
    assert info.value.status_code == status
    assert isinstance(info.value.body, dict) and set(info.value.body) == {"message", "type", "param", "code"}
    with pytest.raises(exc):
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True, extra_headers=headers
        )


async def test_delay_header_and_timeout(client: AsyncOpenAI) -> None:
    start = time.monotonic()
    await client.models.list(extra_headers={"x-dev-upstream-delay-ms": "150"})
    assert time.monotonic() - start >= 0.15
    with pytest.raises(openai.APITimeoutError):
        await client.models.list(extra_headers={"x-dev-upstream-delay-ms": "2000"}, timeout=0.2)


async def test_drop_header_closes_connection(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        await client.responses.create(model=MODEL, input="x", extra_headers={"x-dev-upstream-drop": "1"})
    # the server is still fine afterwards
    assert (await client.responses.create(model=MODEL, input="ok")).output_text == "Echo: ok"


@pytest.mark.parametrize("handler_cancellation", [True, False])
async def test_client_disconnect_counts_cancelled_stream(handler_cancellation: bool) -> None:
    async with running_dev_upstream(handler_cancellation=handler_cancellation) as server:
        c = AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        stream = await c.responses.create(
            model=MODEL,
            input="one two three four five six seven",
            stream=True,
            extra_headers={"x-dev-upstream-stream-delay-ms": "50"},
        )
        async for event in stream:
            if event.type == "response.output_text.delta":
                break
        await stream.close()
        stats = await server.wait_for("streams_cancelled", 1)
        assert stats == {"requests": 1, "streams_started": 1, "streams_completed": 0, "streams_cancelled": 1}

        # an uninterrupted delayed stream completes
        chat_stream = await c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "a b"}],
            stream=True,
            extra_headers={"x-dev-upstream-stream-delay-ms": "5"},
        )
        text = "".join([ch.choices[0].delta.content or "" async for ch in chat_stream if ch.choices])
        assert text == "Echo: a b"
        assert server.stats()["streams_completed"] == 1
        await c.close()


async def test_api_key_check() -> None:
    async with running_dev_upstream(api_key="sk-upstream") as server:
        bad = AsyncOpenAI(base_url=server.base_url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            await bad.responses.create(model=MODEL, input="x")
        assert info.value.code == "invalid_api_key"
        assert "sk-upstream" not in str(info.value.body) and "sk-wrong" not in str(info.value.body)
        good = AsyncOpenAI(base_url=server.base_url, api_key="sk-upstream", max_retries=0)
        assert (await good.responses.create(model=MODEL, input="x")).output_text == "Echo: x"
        async with aiohttp.ClientSession() as http, http.get(server.url + "/_dev/stats") as resp:
            assert resp.status == 200  # /_dev is not behind the key
        await bad.close()
        await good.close()


async def test_request_log_and_stats_endpoints(up: DevUpstream, http: aiohttp.ClientSession) -> None:
    async with http.delete(up.url + "/_dev/requests") as resp:
        assert resp.status == 200
    async with http.delete(up.url + "/_dev/stats") as resp:
        assert await resp.json() == {
            "requests": 0,
            "streams_started": 0,
            "streams_completed": 0,
            "streams_cancelled": 0,
        }
    c = AsyncOpenAI(
        base_url=up.base_url, api_key="sk-log", max_retries=0, default_headers={"x-tenant-id": "acme"}
    )
    await c.responses.create(model=MODEL, input="logged <PERSON_1>")
    stream = await c.responses.create(model=MODEL, input="streamed", stream=True)
    async for _ in stream:
        pass
    await c.close()

    async with http.get(up.url + "/_dev/requests") as resp:
        log = await resp.json()
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("POST", "/v1/responses", 200),
        ("POST", "/v1/responses", 200),
    ]
    first = log[0]
    assert first["headers"]["authorization"] == "Bearer sk-log"
    assert first["headers"]["x-tenant-id"] == "acme"
    assert json.loads(first["body"])["input"] == "logged <PERSON_1>"
    assert first["body_bytes"] == len(first["body"].encode())
    async with http.get(up.url + "/_dev/requests", params={"path": "/v1/models"}) as resp:
        assert await resp.json() == []
    async with http.get(up.url + "/_dev/stats") as resp:
        assert await resp.json() == {
            "requests": 2,
            "streams_started": 1,
            "streams_completed": 1,
            "streams_cancelled": 0,
        }
    async with http.delete(up.url + "/_dev/requests") as resp:
        assert await resp.json() == {"cleared": 2}
    async with http.get(up.url + "/_dev/requests") as resp:
        assert await resp.json() == []


# ----------------------------------------------------------------------------------------------------
# Other endpoints


async def test_models(client: AsyncOpenAI) -> None:
    models = await client.models.list()
    ids = [m.id async for m in models]
    assert MODEL in ids
    assert (await client.models.retrieve(MODEL)).id == MODEL
    with pytest.raises(openai.NotFoundError) as info:
        await client.models.retrieve("no-such-model")
    assert info.value.code == "model_not_found"


async def test_embeddings_and_moderations(client: AsyncOpenAI) -> None:
    emb = await client.embeddings.create(model="text-embedding-3-small", input=["hello world", "x"])  # base64
    assert [len(d.embedding) for d in emb.data] == [8, 8]
    assert emb.usage.prompt_tokens == 3 and emb.usage.total_tokens == 3
    again = await client.embeddings.create(
        model="text-embedding-3-small", input="hello world", encoding_format="float", dimensions=4
    )
    assert len(again.data[0].embedding) == 4
    assert sum(v * v for v in emb.data[0].embedding) == pytest.approx(1.0, abs=1e-4)
    emb2 = await client.embeddings.create(model="text-embedding-3-small", input=["hello world"])
    assert emb2.data[0].embedding == emb.data[0].embedding  # deterministic

    mod = await client.moderations.create(input=["a", "b"])
    assert len(mod.results) == 2 and not mod.results[0].flagged
    assert mod.results[0].categories.violence is False


async def test_files_upload_and_content(client: AsyncOpenAI, up: DevUpstream) -> None:
    payload = b"line one\nline two\n" * 5000
    created = await client.files.create(file=("data.jsonl", payload), purpose="batch")
    assert created.bytes == len(payload) and created.filename == "data.jsonl" and created.purpose == "batch"
    content = await client.files.content(created.id)
    assert content.content == payload
    assert (await client.files.retrieve(created.id)).id == created.id
    assert created.id in [f.id async for f in await client.files.list()]
    entry = [e for e in up.requests() if e["path"] == "/v1/files" and e["method"] == "POST"][-1]
    assert entry["body"] == "" and entry["body_bytes"] > len(payload)
    await client.files.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        await client.files.content(created.id)


async def test_traces_ingest_and_unknown_path(http: aiohttp.ClientSession, up: DevUpstream) -> None:
    async with http.post(up.base_url + "/traces/ingest", json={"data": [{"object": "trace"}]}) as resp:
        assert resp.status == 204
    assert json.loads(up.requests()[-1]["body"]) == {"data": [{"object": "trace"}]}
    async with http.post(up.base_url + "/no/such/thing", json={}) as resp:
        assert resp.status == 404
        body = await resp.json()
    assert body == {
        "error": {
            "message": "Invalid URL (POST /v1/no/such/thing)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    async with http.post(
        up.base_url + "/responses", data=b"{not json", headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"


# ----------------------------------------------------------------------------------------------------
# The real Agents SDK


@function_tool
def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return f"The weather in {city} is sunny"


TOOL_OUTPUT = "The weather in sample is sunny"
ANSWER = f"Tool result: {TOOL_OUTPUT}"


def _agent(model: Any, settings: ModelSettings | None = None) -> Agent[Any]:
    return Agent(
        name="weather",
        instructions="Use the tool.",
        tools=[get_weather],
        model=model,
        model_settings=settings or ModelSettings(),
    )


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
async def test_agents_sdk_run_and_run_streamed(client: AsyncOpenAI, up: DevUpstream, api: str) -> None:
    model: Any
    if api == "responses":
        model = OpenAIResponsesModel(model=MODEL, openai_client=client)
        path = "/v1/responses"
    else:
        model = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
        path = "/v1/chat/completions"
    config = RunConfig(tracing_disabled=True)
    before = len([e for e in up.requests() if e["path"] == path])

    result = await Runner.run(_agent(model), "What's the weather in Paris?", run_config=config)
    assert TOOL_OUTPUT in str(result.final_output)
    assert str(result.final_output) == ANSWER
    assert result.context_wrapper.usage.requests == 2
    assert result.context_wrapper.usage.input_tokens > 0 and result.context_wrapper.usage.output_tokens > 0

    streamed = Runner.run_streamed(_agent(model), "What's the weather in Paris?", run_config=config)
    event_types = [event.type async for event in streamed.stream_events()]
    assert "raw_response_event" in event_types and "run_item_stream_event" in event_types
    assert str(streamed.final_output) == ANSWER
    usage = streamed.context_wrapper.usage
    assert usage.requests == 2
    if api == "responses":
        assert usage.input_tokens > 0 and usage.output_tokens > 0
    else:
        # Off api.openai.com the SDK does not ask for stream usage, and the stand-in (like OpenAI) sends none.
        assert usage.input_tokens == 0
        sent = [json.loads(e["body"]) for e in up.requests() if e["path"] == path][-1]
        assert sent["stream"] is True and "stream_options" not in sent

    assert len([e for e in up.requests() if e["path"] == path]) - before == 4  # 2 turns x 2 runs


async def test_agents_sdk_chat_stream_usage_when_requested(client: AsyncOpenAI) -> None:
    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    streamed = Runner.run_streamed(
        _agent(model, ModelSettings(include_usage=True)),
        "What's the weather?",
        run_config=RunConfig(tracing_disabled=True),
    )
    async for _ in streamed.stream_events():
        pass
    assert str(streamed.final_output) == ANSWER
    usage = streamed.context_wrapper.usage
    assert usage.requests == 2 and usage.input_tokens > 0 and usage.output_tokens > 0


# ----------------------------------------------------------------------------------------------------
# The command line entry point


async def test_python_m_entry_point_serves_and_stops() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar.devupstream",
        "--port",
        "0",
        "--api-key",
        "sk-cli",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("dev-upstream listening on http://127.0.0.1:")
        url = line.split()[-1]
        c = AsyncOpenAI(base_url=url + "/v1", api_key="sk-cli", max_retries=0)
        assert (await c.responses.create(model=MODEL, input="cli")).output_text == "Echo: cli"
        await c.close()
    finally:
        proc.terminate()
        rc = await asyncio.wait_for(proc.wait(), 10)
    assert rc == 0

"""PII through the real openai client: nothing raw reaches the upstream, the caller sees originals."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
)

from tests.conftest import ACME_KEY, GLOBEX_KEY, MakeSidecar, Upstream

EMAIL, PHONE, NAME = "maria.gonzalez@example.org", "415-555-0187", "Maria Gonzalez"
PROMPT = f"Write to {NAME} at {EMAIL} or call {PHONE} about the refund."
RAW = [EMAIL, PHONE, "Gonzalez"]


async def _upstream_text(upstream: Upstream) -> str:
    return json.dumps(await upstream.requests())


def _assert_clean(seen: str) -> None:
    for value in RAW:
        assert value not in seen, value
    assert "<EMAIL_ADDRESS_1>" in seen and "<PHONE_NUMBER_1>" in seen and "<PERSON_1>" in seen


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_responses_masked_upstream_restored_for_caller(
    make_sidecar: MakeSidecar, upstream: Upstream, stream: bool
) -> None:
    sc = await make_sidecar()
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    if stream:
        deltas, final = "", ""
        async for event in await client.responses.create(model="gpt-4o", input=PROMPT, stream=True):
            if event.type == "response.output_text.delta":
                deltas += event.delta
            elif event.type == "response.completed":
                final = event.response.output_text
        assert deltas == final == f"Echo: {PROMPT}"
    else:
        answer = await client.responses.create(model="gpt-4o", input=PROMPT)
        assert answer.output_text == f"Echo: {PROMPT}"
    _assert_clean(await _upstream_text(upstream))
    record = sc.audit()[-1]
    assert (
        record["pii"]["found"]
        == record["pii"]["masked"]
        == {"PERSON": 1, "EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}
    )
    assert not any(v in sc.audit_path.read_text() for v in RAW)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_chat_masked_upstream_restored_for_caller(
    make_sidecar: MakeSidecar, upstream: Upstream, stream: bool
) -> None:
    sc = await make_sidecar()
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    messages: Any = [{"role": "user", "content": PROMPT}]
    if stream:
        text = ""
        async for chunk in await client.chat.completions.create(
            model="gpt-4o", messages=messages, stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
    else:
        text = (await client.chat.completions.create(model="gpt-4o", messages=messages)).choices[
            0
        ].message.content or ""
    assert text == f"Echo: {PROMPT}"
    _assert_clean(await _upstream_text(upstream))


@function_tool
def send_email(to: str, body: str) -> str:
    """Send an e-mail."""
    return f"sent to {to}"


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_agent_tool_arguments_are_restored(
    make_sidecar: MakeSidecar, upstream: Upstream, api: str
) -> None:
    sc = await make_sidecar()
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    model = (
        OpenAIResponsesModel(model="gpt-4o", openai_client=client)
        if api == "responses"
        else OpenAIChatCompletionsModel(model="gpt-4o", openai_client=client)
    )
    agent = Agent(name="mailer", instructions="Use the tool.", tools=[send_email], model=model)
    # The stand-in echoes these arguments back as the tool call, so they travel upstream as placeholders
    # and must come back to the tool as the originals.
    forced = json.dumps({"to": "<EMAIL_ADDRESS_1>", "body": "Hi <PERSON_1>"})
    agent.model_settings = ModelSettings(extra_headers={"x-dev-upstream-tool-args": forced})
    run = await Runner.run(agent, f"Send {NAME} a note at {EMAIL}")
    assert f"sent to {EMAIL}" in str(run.final_output)
    seen = await _upstream_text(upstream)
    assert EMAIL not in seen and "Gonzalez" not in seen


async def test_credit_card_is_denied_before_anything_is_forwarded(
    make_sidecar: MakeSidecar, upstream: Upstream
) -> None:
    sc = await make_sidecar()
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=GLOBEX_KEY, max_retries=2)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await client.responses.create(model="gpt-4o-mini", input="Charge 4111 1111 1111 1111 for the order")
    assert caught.value.code == "pii_violation" and "CREDIT_CARD" in caught.value.message
    assert "4111" not in caught.value.message
    assert await upstream.requests() == []
    assert sc.audit()[-1]["pii"]["found"] == {"CREDIT_CARD": 1}


async def test_trace_exports_are_masked(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    sc = await make_sidecar()
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    payload = {"data": [{"object": "trace.span", "id": "span_1", "trace_id": "trace_1",
                         "span_data": {"type": "function", "name": "lookup", "input": json.dumps({"email": EMAIL}),
                                       "output": f"found {NAME}"}}]}  # fmt: skip
    await client.post("/traces/ingest", cast_to=object, body=payload)
    seen = await upstream.requests()
    span = json.loads(seen[-1]["body"])["data"][0]["span_data"]
    assert EMAIL not in json.dumps(span) and "Gonzalez" not in json.dumps(span)
    assert json.loads(span["input"])["email"].startswith("<EMAIL_ADDRESS_")


async def test_detector_failure_fails_closed_or_open(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    closed = await make_sidecar(SIDECAR_PII_TIMEOUT="0.000001", SIDECAR_PII_CACHE_ENTRIES="1")
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=closed.url, api_key=ACME_KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        await client.responses.create(model="gpt-4o", input=f"never seen before: {EMAIL} 7d1f")
    assert caught.value.status_code == 503 and caught.value.code == "pii_unavailable"
    assert await upstream.requests() == []

    opened = await make_sidecar(
        SIDECAR_PII_TIMEOUT="0.000001", SIDECAR_PII_CACHE_ENTRIES="1", SIDECAR_FAIL_MODE="open"
    )
    client = openai.AsyncOpenAI(base_url=opened.url, api_key=ACME_KEY, max_retries=0)
    await client.responses.create(model="gpt-4o", input="fail open, unscanned 9c2e")
    assert opened.audit()[-1]["fail_open"] == ["pii"]


CARD, SSN = "4111 1111 1111 1111", "536-90-4399"
LONG_REPLY = (
    ("All good here. " * 40) + f"Your card {CARD} is on file. " + ("More filler text. " * 30) + f"SSN {SSN}."
)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_response_entities_are_masked_in_every_mode(
    make_sidecar: MakeSidecar, api: str, stream: bool
) -> None:
    sc = await make_sidecar()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    headers = {"x-dev-upstream-reply": LONG_REPLY}
    seen = ""
    if api == "responses" and stream:
        final = ""
        async for event in await client.responses.create(
            model="gpt-4o", input="hi", stream=True, extra_headers=headers
        ):
            seen += event.model_dump_json()
            if event.type == "response.output_text.delta":
                final += event.delta
            elif event.type == "response.completed":
                assert event.response.output_text == final
        text = final
    elif api == "responses":
        answer = await client.responses.create(model="gpt-4o", input="hi", extra_headers=headers)
        text, seen = answer.output_text, answer.model_dump_json()
    elif stream:
        text = ""
        messages: Any = [{"role": "user", "content": "hi"}]
        async for chunk in await client.chat.completions.create(
            model="gpt-4o", messages=messages, stream=True, extra_headers=headers
        ):
            seen += chunk.model_dump_json()
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
    else:
        completion = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], extra_headers=headers
        )
        text, seen = completion.choices[0].message.content or "", completion.model_dump_json()
    assert CARD not in seen and SSN not in seen and "4111" not in seen
    assert text == LONG_REPLY.replace(CARD, "").replace(
        SSN, ""
    )  # redact: the values are gone, the rest intact

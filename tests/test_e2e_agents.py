"""The real openai-agents SDK and openai client through a running sidecar to dev-upstream."""

from __future__ import annotations

import json

import openai
import pytest
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)

from tests.conftest import ACME_KEY, PROVIDER_KEY, MakeSidecar, Upstream

set_tracing_disabled(True)


def _header(logged: dict[str, object], name: str) -> object:
    headers = logged["headers"]
    assert isinstance(headers, dict)
    return {k.lower(): v for k, v in headers.items()}.get(name)


@function_tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"Sunny and 21C in {city}"


def _agent(client: openai.AsyncOpenAI, api: str, model: str = "gpt-4o") -> Agent:
    chosen = (
        OpenAIResponsesModel(model=model, openai_client=client)
        if api == "responses"
        else OpenAIChatCompletionsModel(model=model, openai_client=client)
    )
    return Agent(name="weather", instructions="Answer with the tool.", tools=[get_weather], model=chosen)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_agent_with_tool_completes_in_every_mode(
    make_sidecar: MakeSidecar, upstream: Upstream, api: str, stream: bool
) -> None:
    sc = await make_sidecar()
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    agent = _agent(client, api)
    if stream:
        result = Runner.run_streamed(agent, "What is the weather in Paris?")
        kinds = [event.type async for event in result.stream_events()]
        assert "raw_response_event" in kinds
    else:
        result = await Runner.run(agent, "What is the weather in Paris?")  # type: ignore[assignment]
    assert "Sunny and 21C" in str(result.final_output)

    seen = await upstream.requests()
    path = "/v1/responses" if api == "responses" else "/v1/chat/completions"
    assert [r["path"] for r in seen] == [path, path]  # the tool call, then the answer
    assert all(_header(r, "authorization") == f"Bearer {PROVIDER_KEY}" for r in seen)
    assert all(json.loads(r["body"])["stream"] is stream for r in seen) if stream else True

    records = [r for r in sc.audit() if r["phase"] == "end"]
    assert [r["outcome"] for r in records] == ["forwarded", "forwarded"]
    assert all(r["decision"]["allow"] and r["request"]["operation"].endswith("create") for r in records)
    assert all(r["budget"]["used"] and r["budget"]["used"] > 0 for r in records)  # usage was read back


async def test_deny_is_permission_denied_with_no_retry(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    sc = await make_sidecar()
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=3)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await client.responses.create(model="o1-pro", input="hello")
    err = caught.value
    assert err.code == "policy_violation"
    assert err.response.headers["x-should-retry"] == "false"
    assert err.response.headers["x-request-id"].startswith("req_")
    assert "o1-pro" in err.message
    assert await upstream.requests() == []  # never forwarded
    ends = [r for r in sc.audit() if r["phase"] == "end"]
    assert len(ends) == 1 and ends[0]["decision"]["allow"] is False  # exactly one attempt
    assert not [r for r in sc.audit() if r["phase"] == "start"]


async def test_agent_run_with_denied_model_raises(make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY)
    with pytest.raises(openai.PermissionDeniedError):
        await Runner.run(_agent(client, "chat", model="o1-pro"), "hi")


async def test_keys_stay_where_they_belong(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    sc = await make_sidecar()
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    raw = await client.responses.with_raw_response.create(model="gpt-4o", input="hello there")
    shown = json.dumps(dict(raw.headers)) + raw.text
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    async for chunk in stream:
        shown += chunk.model_dump_json()
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="gpt-4o", input="x", extra_headers={"x-dev-upstream-fail": "400"})
    shown += caught.value.response.text + json.dumps(dict(caught.value.response.headers))
    assert PROVIDER_KEY not in shown

    upstream_seen = json.dumps(await upstream.requests())
    assert ACME_KEY not in upstream_seen
    assert upstream_seen.count(f"Bearer {PROVIDER_KEY}") == 3
    audit = sc.audit_path.read_text()
    assert PROVIDER_KEY not in audit and ACME_KEY not in audit
    assert "hello there" not in audit  # no prompt text in the audit


async def test_unknown_caller_is_unauthenticated(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    sc = await make_sidecar()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key="ck-stolen", max_retries=2)
    with pytest.raises(openai.AuthenticationError) as caught:
        await client.models.list()
    assert caught.value.code == "unauthenticated"
    ends = [r for r in sc.audit() if r["phase"] == "end"]
    assert ends[-1]["error"] == {
        "status": 401, "code": "unauthenticated", "reason": "unknown_credential", "credential": "api_key"
    }  # fmt: skip


async def test_output_cap_is_rewritten_upstream(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    from tests.conftest import GLOBEX_KEY

    sc = await make_sidecar()
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=GLOBEX_KEY, max_retries=0)
    await client.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=50_000)
    await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    await client.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=16)
    bodies = [json.loads(r["body"]) for r in await upstream.requests()]
    assert bodies[0]["max_output_tokens"] == 1024
    assert bodies[1]["max_completion_tokens"] == 1024
    assert bodies[2]["max_output_tokens"] == 16  # under the cap: untouched


async def test_file_upload_streams_through(make_sidecar: MakeSidecar, upstream: Upstream) -> None:
    sc = await make_sidecar()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    content = b'{"prompt": "x"}\n' * 20_000
    uploaded = await client.files.create(file=("train.jsonl", content), purpose="fine-tune")
    assert uploaded.bytes == len(content)
    listed = await client.files.list()
    assert any(f.id == uploaded.id for f in listed.data)

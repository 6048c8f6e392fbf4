"""`POST /v1/chat/completions` (JSON and SSE chunks ending with `data: [DONE]`)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .answers import Plan, make_plan
from .common import (
    HDR_STREAM_FAIL,
    JSON,
    ApiError,
    arg_chunks,
    count_input_tokens,
    dumps_bytes,
    error_body,
    header_flag,
    json_response,
    max_tokens_of,
    read_json_object,
    require_model,
    send_sse,
    state_of,
    text_chunks,
    text_of,
)
from .common import truncate_tokens as _truncate

SYSTEM_FINGERPRINT = "fp_devupstream"
_DONE = b"data: [DONE]\n\n"


def _function_tool(body: JSON) -> tuple[str, Any] | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or choice == "none":
        return None
    functions = [
        t["function"]
        for t in tools
        if isinstance(t, dict)
        and t.get("type") == "function"
        and isinstance(t.get("function"), dict)
        and t["function"].get("name")
    ]
    if not functions:
        return None
    chosen = functions[0]
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        wanted = choice["function"].get("name")
        chosen = next((f for f in functions if f["name"] == wanted), chosen)
    return str(chosen["name"]), chosen.get("parameters")


def plan_for(request: web.Request, messages: list[Any], body: JSON) -> Plan:
    last_user = -1
    for i in range(len(messages) - 1, -1, -1):
        msg = messages[i]
        if isinstance(msg, dict) and msg.get("role") == "user":
            last_user = i
            break
    user_text = text_of(messages[last_user].get("content")) if last_user >= 0 else ""
    outputs = [
        text_of(msg.get("content"))
        for msg in messages[last_user + 1 :]
        if isinstance(msg, dict) and msg.get("role") in ("tool", "function")
    ]
    return make_plan(request, user_text, outputs, _function_tool(body))


def _usage(prompt: int, completion: int) -> JSON:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _stream_events(
    head: JSON,
    *,
    plan: Plan,
    produced: str,
    call_id: str,
    finish: str,
    usage: JSON,
    include_usage: bool,
    stream_fail: bool,
) -> list[bytes]:
    events: list[bytes] = []
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: JSON, finish_reason: str | None = None) -> None:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        events.append(b"data: " + dumps_bytes({**head, "choices": [choice], **extra}) + b"\n\n")

    if plan.tool_name is None:
        chunk({"role": "assistant", "content": "", "refusal": None})
        for piece in text_chunks(produced) if produced else []:
            chunk({"content": piece})
    else:
        chunk({"role": "assistant", "content": None, "refusal": None})
        first = {
            "index": 0,
            "id": call_id,
            "type": "function",
            "function": {"name": plan.tool_name, "arguments": ""},
        }
        chunk({"tool_calls": [first]})
        for piece in arg_chunks(produced) if produced else []:
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    if stream_fail:
        err = error_body(
            "Injected mid-stream failure (x-dev-upstream-stream-fail).", "server_error", "server_error"
        )
        events.append(b"data: " + dumps_bytes(err) + b"\n\n")
        return events
    chunk({}, finish)
    if include_usage:
        events.append(b"data: " + dumps_bytes({**head, "choices": [], "usage": usage}) + b"\n\n")
    events.append(_DONE)
    return events


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    body = await read_json_object(request)
    model = require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(
            400,
            "Missing required parameter: 'messages'.",
            code="missing_required_parameter",
            param="messages",
        )
    limit = max_tokens_of(body, "max_completion_tokens", "max_tokens")
    plan = plan_for(request, messages, body)
    prompt_tokens = count_input_tokens(messages)
    source = plan.text if plan.tool_name is None else plan.arguments
    produced, completion_tokens, truncated = _truncate(source, limit)
    finish = "length" if truncated else ("stop" if plan.tool_name is None else "tool_calls")
    usage = _usage(prompt_tokens, completion_tokens)
    call_id = state.next_id("call_") if plan.tool_name is not None else ""
    head = {
        "id": state.next_id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }

    if body.get("stream") is True:
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        events = _stream_events(
            head,
            plan=plan,
            produced=produced,
            call_id=call_id,
            finish=finish,
            usage=usage,
            include_usage=include_usage,
            stream_fail=header_flag(request, HDR_STREAM_FAIL),
        )
        return await send_sse(request, events)

    message: JSON = {"role": "assistant", "content": None, "refusal": None, "annotations": []}
    if plan.tool_name is None:
        message["content"] = produced
    else:
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": plan.tool_name, "arguments": produced}}
        ]
    completion = {
        **head,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }
    return json_response(completion)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", create_chat_completion)

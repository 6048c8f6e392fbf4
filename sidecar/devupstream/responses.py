"""`POST /v1/responses` (JSON and SSE) and the stored-response routes."""

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
    header_flag,
    json_response,
    max_tokens_of,
    read_json_object,
    require_model,
    send_sse,
    state_of,
    text_chunks,
    text_of,
    truncate_tokens,
)

_DEFAULT_TEXT = {"format": {"type": "text"}, "verbosity": "medium"}
_DEFAULT_REASONING = {"effort": None, "summary": None}


def _items(body: JSON) -> list[Any]:
    inp = body.get("input")
    if isinstance(inp, str):
        return [{"role": "user", "content": inp}]
    return inp if isinstance(inp, list) else []


def _function_tool(body: JSON) -> tuple[str, Any] | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or choice == "none":
        return None
    functions = [t for t in tools if isinstance(t, dict) and t.get("type") == "function" and t.get("name")]
    if not functions:
        return None
    chosen = functions[0]
    if isinstance(choice, dict) and choice.get("type") == "function":
        chosen = next((t for t in functions if t["name"] == choice.get("name")), chosen)
    return str(chosen["name"]), chosen.get("parameters")


def plan_for(request: web.Request, body: JSON) -> Plan:
    items = _items(body)
    last_user = -1
    for i in range(len(items) - 1, -1, -1):
        item = items[i]
        if isinstance(item, dict) and item.get("role") == "user" and item.get("type", "message") == "message":
            last_user = i
            break
    user_text = text_of(items[last_user].get("content")) if last_user >= 0 else ""
    outputs = [
        text_of(item.get("output"))
        for item in items[last_user + 1 :]
        if isinstance(item, dict) and item.get("type") in ("function_call_output", "custom_tool_call_output")
    ]
    return make_plan(request, user_text, outputs, _function_tool(body))


def _echo_tools(tools: Any) -> list[Any]:
    if not isinstance(tools, list):
        return []
    out: list[Any] = []
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == "function":
            out.append(
                {
                    "type": "function",
                    "name": tool.get("name"),
                    "description": tool.get("description"),
                    "parameters": tool.get("parameters"),
                    "strict": tool.get("strict", True),
                }
            )
        else:
            out.append(tool)
    return out


def _or(body: JSON, key: str, default: Any) -> Any:
    value = body.get(key)
    return default if value is None else value


def _skeleton(body: JSON, resp_id: str, model: str, created: int) -> JSON:
    return {
        "id": resp_id,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": model,
        "output": [],
        "parallel_tool_calls": _or(body, "parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": _or(body, "reasoning", _DEFAULT_REASONING),
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default",
        "store": _or(body, "store", True),
        "temperature": _or(body, "temperature", 1.0),
        "text": _or(body, "text", _DEFAULT_TEXT),
        "tool_choice": _or(body, "tool_choice", "auto"),
        "tools": _echo_tools(body.get("tools")),
        "top_logprobs": _or(body, "top_logprobs", 0),
        "top_p": _or(body, "top_p", 1.0),
        "truncation": _or(body, "truncation", "disabled"),
        "usage": None,
        "user": body.get("user"),
        "metadata": _or(body, "metadata", {}),
    }


def _usage(input_tokens: int, output_tokens: int) -> JSON:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


class _Events:
    """Accumulates rendered SSE events with increasing `sequence_number`."""

    __slots__ = ("events", "seq")

    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.seq = 0

    def add(self, type_: str, **fields: Any) -> None:
        payload = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        self.events.append(b"event: " + type_.encode() + b"\ndata: " + dumps_bytes(payload) + b"\n\n")


def _stream_events(
    skeleton: JSON, final: JSON, item: JSON, *, plan: Plan, produced: str, stream_fail: bool
) -> list[bytes]:
    ev = _Events()
    ev.add("response.created", response=skeleton)
    ev.add("response.in_progress", response=skeleton)
    item_id = item["id"]
    common = {"item_id": item_id, "output_index": 0}
    if plan.tool_name is None:
        ev.add(
            "response.output_item.added",
            output_index=0,
            item={**item, "status": "in_progress", "content": []},
        )
        empty_part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
        ev.add("response.content_part.added", **common, content_index=0, part=empty_part)
        for chunk in text_chunks(produced):
            ev.add("response.output_text.delta", **common, content_index=0, delta=chunk, logprobs=[])
        if stream_fail:
            return _fail(ev)
        ev.add("response.output_text.done", **common, content_index=0, text=produced, logprobs=[])
        ev.add("response.content_part.done", **common, content_index=0, part=item["content"][0])
    else:
        ev.add(
            "response.output_item.added",
            output_index=0,
            item={**item, "status": "in_progress", "arguments": ""},
        )
        for chunk in arg_chunks(produced):
            ev.add("response.function_call_arguments.delta", **common, delta=chunk)
        if stream_fail:
            return _fail(ev)
        ev.add("response.function_call_arguments.done", **common, arguments=produced)
    ev.add("response.output_item.done", output_index=0, item=item)
    terminal = "response.completed" if final["status"] == "completed" else "response.incomplete"
    ev.add(terminal, response=final)
    return ev.events


def _fail(ev: _Events) -> list[bytes]:
    ev.add(
        "error",
        code="server_error",
        message="Injected mid-stream failure (x-dev-upstream-stream-fail).",
        param=None,
    )
    return ev.events


async def create_response(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    body = await read_json_object(request)
    model = require_model(body)
    if body.get("input") is None and body.get("previous_response_id") is None:
        raise ApiError(
            400, "Missing required parameter: 'input'.", code="missing_required_parameter", param="input"
        )
    limit = max_tokens_of(body, "max_output_tokens")
    plan = plan_for(request, body)
    input_tokens = count_input_tokens(body.get("instructions"), body.get("input"))
    created = int(time.time())
    skeleton = _skeleton(body, state.next_id("resp_"), model, created)

    if plan.tool_name is None:
        produced, output_tokens, truncated = truncate_tokens(plan.text, limit)
        item: JSON = {
            "id": state.next_id("msg_"),
            "type": "message",
            "status": "incomplete" if truncated else "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": produced}],
        }
    else:
        produced, output_tokens, truncated = truncate_tokens(plan.arguments, limit)
        item = {
            "id": state.next_id("fc_"),
            "type": "function_call",
            "status": "incomplete" if truncated else "completed",
            "arguments": produced,
            "call_id": state.next_id("call_"),
            "name": plan.tool_name,
        }
    final = {
        **skeleton,
        "status": "incomplete" if truncated else "completed",
        "completed_at": None if truncated else created,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "output": [item],
        "usage": _usage(input_tokens, output_tokens),
    }
    if final["store"] is not False:
        state.remember_response(final)
    if body.get("stream") is True:
        events = _stream_events(
            skeleton,
            final,
            item,
            plan=plan,
            produced=produced,
            stream_fail=header_flag(request, HDR_STREAM_FAIL),
        )
        return await send_sse(request, events)
    return json_response(final)


async def get_response(request: web.Request) -> web.Response:
    resp_id = request.match_info["response_id"]
    stored = state_of(request).responses.get(resp_id)
    if stored is None:
        raise ApiError(404, f"Response with id '{resp_id}' not found.", code=None, param="response_id")
    return json_response(stored)


async def delete_response(request: web.Request) -> web.Response:
    resp_id = request.match_info["response_id"]
    if state_of(request).responses.pop(resp_id, None) is None:
        raise ApiError(404, f"Response with id '{resp_id}' not found.", code=None, param="response_id")
    return json_response({"id": resp_id, "object": "response", "deleted": True})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/responses", create_response)
    app.router.add_get("/v1/responses/{response_id}", get_response)
    app.router.add_delete("/v1/responses/{response_id}", delete_response)

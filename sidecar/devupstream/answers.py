"""How the stand-in answers: a tool call with arguments generated from the tool's JSON schema, a quote
of tool outputs, or an echo of the last user message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .common import ECHO_PREFIX, HDR_REPLY, HDR_TOOL_ARGS, JSON, SAMPLE_STRING, TOOL_RESULT_PREFIX, dumps


@dataclass(slots=True)
class Plan:
    """The deterministic answer: a text, or a call of tool `tool_name` with JSON `arguments`."""

    text: str = ""
    tool_name: str | None = None
    arguments: str = ""


def sample_value(schema: Any, root: JSON, depth: int = 0) -> Any:
    """A deterministic sample instance of a JSON schema (strings "sample", numbers 1, booleans true, ...)."""
    if not isinstance(schema, dict) or depth > 16:
        return SAMPLE_STRING
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return sample_value(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        variants = schema.get(key)
        if isinstance(variants, list) and variants:
            non_null = [v for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
            return sample_value((non_null or variants)[0], root, depth + 1)
    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "null")
    if typ == "object" or (typ is None and "properties" in schema):
        props = schema.get("properties")
        if not isinstance(props, dict):
            return {}
        return {name: sample_value(sub, root, depth + 1) for name, sub in props.items()}
    if typ == "array":
        return [sample_value(schema.get("items", {"type": "string"}), root, depth + 1)]
    if typ in ("integer", "number"):
        return 1
    if typ == "boolean":
        return True
    if typ == "null":
        return None
    return SAMPLE_STRING


def sample_arguments(parameters: Any) -> str:
    root = parameters if isinstance(parameters, dict) else {}
    value = sample_value(root, root) if root else {}
    return dumps(value if isinstance(value, dict) else {"value": value})


def make_plan(
    request: web.Request,
    user_text: str,
    tool_outputs: list[str],
    tool: tuple[str, Any] | None,
) -> Plan:
    """Tool outputs after the last user message -> quote them; else a function tool -> call it; else echo."""
    reply = request.headers.get(HDR_REPLY)
    if reply is not None:
        return Plan(text=reply)
    if tool_outputs:
        return Plan(text="\n".join(TOOL_RESULT_PREFIX + o for o in tool_outputs))
    if tool is not None:
        name, parameters = tool
        override = request.headers.get(HDR_TOOL_ARGS)
        return Plan(
            tool_name=name, arguments=override if override is not None else sample_arguments(parameters)
        )
    return Plan(text=ECHO_PREFIX + user_text)


# ----------------------------------------------------------------------------------------------------
# SSE

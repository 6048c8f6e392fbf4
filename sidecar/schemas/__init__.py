"""The JSON Schemas the sidecar ships, and validation that lists every problem with its JSON pointer.

- data.schema.json: the shipped bundle's data (rego/README.md, "data.json")
- policy-input.schema.json: the policy input (docs/policy-input.md)
- approver-input.schema.json: the approver check's input (docs/policy-input.md)

A schema shipped here is named "sidecar:<file>" (its `$id`) wherever a bundle refers to it.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing.exceptions import Unresolvable

SCHEMA_DIR = Path(__file__).resolve().parent
PREFIX = "sidecar:"
DATA = PREFIX + "data.schema.json"
POLICY_INPUT = PREFIX + "policy-input.schema.json"
APPROVER_INPUT = PREFIX + "approver-input.schema.json"
_MAX_MESSAGE = 240


class InvalidSchema(ValueError):
    """The schema itself is unusable: not a JSON Schema, or a reference that does not resolve."""


@functools.cache
def shipped(name: str) -> dict[str, Any]:
    """A schema shipped with the sidecar, by its name ("sidecar:data.schema.json")."""
    file = name.removeprefix(PREFIX)
    path = SCHEMA_DIR / file
    if not name.startswith(PREFIX) or "/" in file or not file.endswith(".json") or not path.is_file():
        known = sorted(PREFIX + p.name for p in SCHEMA_DIR.glob("*.schema.json"))
        raise InvalidSchema(f"no schema {name!r} ships with the sidecar (known: {', '.join(known)})")
    schema: dict[str, Any] = orjson.loads(path.read_bytes())
    return schema


def validator(schema: object) -> Validator:
    """A validator for `schema` (JSON Schema 2020-12 unless its `$schema` says otherwise)."""
    if not isinstance(schema, dict):
        raise InvalidSchema(f"a schema must be an object, not {type(schema).__name__}")
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise InvalidSchema(f"not a valid JSON Schema: {_short(exc.message)}") from None
    return cls(schema)


@functools.cache
def shipped_validator(name: str) -> Validator:
    return validator(shipped(name))


def problems(check: Validator, doc: Any) -> list[str]:
    """Every way `doc` fails `check`, as "<JSON pointer>: <what is wrong>", sorted by pointer."""
    try:
        errors = list(check.iter_errors(doc))
    except Unresolvable as exc:  # no remote retrieval: a $ref must resolve within the schema
        raise InvalidSchema(f"unresolvable reference {exc}") from None
    except (re.error, RecursionError) as exc:  # a schema's own fault; never an unhandled error in a reload
        raise InvalidSchema(f"cannot be applied: {_short(str(exc) or type(exc).__name__)}") from None
    found = {(tuple(map(str, where)), text) for error in errors for where, text in _describe(error)}
    return [f"{pointer(where)}: {text}" for where, text in sorted(found)]  # parents before children


def pointer(parts: Iterable[str | int]) -> str:
    """RFC 6901 JSON pointer ("" is the whole document, shown as "/")."""
    text = "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)
    return text or "/"


def _describe(error: ValidationError) -> list[tuple[list[str | int], str]]:
    where = list(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = list(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        extra = [k for k in error.instance if k not in known and not any(re.search(p, k) for p in patterns)]
        if extra:  # else the generic message below: an error is never dropped
            return [([*where, k], f"unknown key {k!r}{_hint(k, known)}") for k in extra]
    if error.validator in ("anyOf", "oneOf") and error.context:
        return _describe(best_match(error.context))
    message = _short(error.message)
    if error.validator == "pattern" and isinstance(schema.get("description"), str):
        message = f"{_short(repr(error.instance))} is not {schema['description']}"  # not the raw regex
    if _under_property_names(error.relative_schema_path):
        return [([*where, str(error.instance)], f"invalid key: {message}")]
    return [(where, message)]


def _under_property_names(schema_path: Sequence[str | int]) -> bool:
    # "propertyNames" as a keyword, not as the name of a property that happens to be called so
    path = list(schema_path)
    return any(p == "propertyNames" and (i == 0 or path[i - 1] != "properties") for i, p in enumerate(path))


def _hint(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})" if known else ""


def _short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def opa_input_schema() -> dict[str, Any]:
    """One input schema for `opa check --schema`: the bundle answers both the decision and the approver
    check, so its rules may read either input. Local `$ref`s are inlined, since OPA resolves them only
    from a schema's root."""
    branches = []
    for name in (POLICY_INPUT, APPROVER_INPUT):
        schema = shipped(name)
        branches.append(_inline(schema, schema.get("$defs", {})))
    return {"anyOf": branches}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        skip = {"$schema", "$id", "$defs"}
        return {k: _inline(v, defs) for k, v in node.items() if k not in skip}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node

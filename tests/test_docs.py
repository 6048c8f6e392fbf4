"""The docs/ pages are the contracts (docs/README.md): every name the code uses must be on its page.

Each test collects names from the code itself (the classifier's table, `Settings`, the error call sites,
what `Decision.parse` reads, the `PolicyInput` types, the argument parser) and fails naming the ones a page
does not list. Names only ever get added, so a new setting, code, field or command fails here until it is
documented.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, is_typeddict

from jsonschema import Draft202012Validator

from sidecar import cli, documents
from sidecar.config import Settings
from sidecar.documents import PolicyInput
from sidecar.pipeline.classify import TABLE

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SOURCE = ROOT / "sidecar"
# The stand-in upstream answers with OpenAI's errors, not the sidecar's.
NOT_THE_SIDECAR = (SOURCE / "devupstream",)
CODE_SHAPE = re.compile(r"[a-z][a-z0-9_]*\Z")


def backticked(page: str) -> set[str]:
    """Every `name` on a docs page."""
    return set(re.findall(r"`([^`\n]+)`", (DOCS / page).read_text()))


def documented(name: str, tokens: set[str]) -> bool:
    """`name` (a dotted path) is a token, the start of one, or a run of a token's components."""
    want = name.split(".")
    for token in tokens:
        parts = token.split(".")
        if any(parts[i : i + len(want)] == want for i in range(len(parts) - len(want) + 1)):
            return True
    return False


def sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(SOURCE.rglob("*.py")):
        if not any(path.is_relative_to(skip) for skip in NOT_THE_SIDECAR):
            yield path, ast.parse(path.read_text(), str(path))


def _called(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _strings(node: ast.expr | None) -> set[str]:
    """String constants an argument evaluates to: `"x"`, `a or "x"`, `"x" if c else "y"`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.BoolOp):
        return set().union(*(_strings(v) for v in node.values))
    if isinstance(node, ast.IfExp):
        return _strings(node.body) | _strings(node.orelse)
    return set()


def _code_positions(modules: list[ast.Module]) -> tuple[dict[str, int], set[str]]:
    """Callables with a `code` parameter (functions, `__init__`s, dataclass fields), its position, and
    the string defaults it has."""
    positions: dict[str, int] = {}
    defaults: set[str] = set()
    classes: list[ast.ClassDef] = []
    for module in modules:
        for node in ast.walk(module):
            if isinstance(node, ast.ClassDef):
                classes.append(node)
                fields = [
                    s.target.id
                    for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                ]
                if "code" in fields:
                    positions[node.name] = fields.index("code")
                for stmt in node.body:
                    if (
                        isinstance(stmt, ast.AnnAssign)
                        and isinstance(stmt.target, ast.Name)
                        and stmt.target.id == "code"
                    ):
                        defaults |= _strings(stmt.value)
                    if isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__":
                        names = [a.arg for a in stmt.args.args][1:]
                        if "code" in names:
                            positions[node.name] = names.index("code")
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name != "__init__":
                args = node.args.args
                names = [a.arg for a in args][1 if args and args[0].arg in ("self", "cls") else 0 :]
                if "code" in names:
                    positions[node.name] = names.index("code")
                    pad = [None] * (len(args) - len(node.args.defaults))
                    for arg, default in zip(args, pad + list(node.args.defaults), strict=True):
                        if arg.arg == "code":
                            defaults |= _strings(default)
    # Dataclass subclasses (IdentityError(SidecarError)) take the base's fields first.
    for cls in classes:
        for base in cls.bases:
            if isinstance(base, ast.Name) and base.id in positions and cls.name not in positions:
                positions[cls.name] = positions[base.id]
    return positions, defaults


def error_codes() -> dict[str, set[str]]:
    """Every error code string in sidecar/, with the files it appears in."""
    parsed = list(sources())
    positions, defaults = _code_positions([module for _, module in parsed])
    found: dict[str, set[str]] = {code: {"(a default)"} for code in defaults}
    for path, module in parsed:
        for node in ast.walk(module):
            codes: set[str] = set()
            if isinstance(node, ast.Call) and (name := _called(node)) in positions:
                index = positions[name]
                if index < len(node.args):
                    codes |= _strings(node.args[index])
                codes |= set().union(*(_strings(k.value) for k in node.keywords if k.arg == "code"))
            if isinstance(node, ast.Dict):  # in-band errors: {"code": "..."}
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "code":
                        codes |= _strings(value)
            for code in codes:
                if CODE_SHAPE.match(code):
                    found.setdefault(code, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_operation_is_documented() -> None:
    tokens = backticked("operations.md")
    undocumented = sorted({op for _, _, op in TABLE} - tokens)
    assert not undocumented, f"add these operations to docs/operations.md: {undocumented}"
    assert {"unknown", "organization.<resource>.<verb>"} <= tokens


def test_every_setting_is_documented() -> None:
    tokens = backticked("configuration.md")
    variables = [f"SIDECAR_{f.name.upper()}" for f in dataclasses.fields(Settings)]
    assert len(variables) > 50
    undocumented = [v for v in variables if v not in tokens]
    assert not undocumented, f"add these settings to docs/configuration.md: {undocumented}"


def test_every_error_code_is_documented() -> None:
    codes = error_codes()
    # The collector itself must work: these come from a helper, a direct call, a keyword, a subclass, a
    # default, a wrapper with the code first, and an in-band dict.
    assert {
        "request_too_large", "audit_unavailable", "identity_unavailable", "unauthenticated",
        "policy_violation", "approval_required", "approval_conflict", "upstream_stream_error",
    } <= set(codes)  # fmt: skip
    tokens = backticked("errors.md")
    undocumented = {code: sorted(where) for code, where in codes.items() if code not in tokens}
    assert not undocumented, f"add these error codes to docs/errors.md: {undocumented}"


def _decision_reads() -> set[str]:
    """What `Decision.parse` reads: `doc.get("x")`, and the key argument of its helpers."""
    module = ast.parse(Path(documents.__file__).read_text())
    keyed: dict[str, int] = {}
    for node in ast.walk(module):
        if isinstance(node, ast.FunctionDef):
            names = [a.arg for a in node.args.args]
            if "key" in names:
                keyed[node.name] = names.index("key")
    reads: set[str] = set()
    for node in ast.walk(module):
        if isinstance(node, ast.Call) and (name := _called(node)) is not None:
            if name == "get" and node.args:
                reads |= _strings(node.args[0])
            elif name in keyed and keyed[name] < len(node.args):
                reads |= _strings(node.args[keyed[name]])
    return reads


def _schema_properties(schema: Any) -> set[str]:
    if isinstance(schema, dict):
        own = set(schema.get("properties", {}))
        return own.union(*(_schema_properties(v) for v in schema.values()))
    if isinstance(schema, list):
        return set().union(*(_schema_properties(v) for v in schema))
    return set()


def _json_blocks(page: str) -> list[Any]:
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", (DOCS / page).read_text(), re.S)]


def _decision_schema() -> dict[str, Any]:
    schemas = [b for b in _json_blocks("decision.md") if "$schema" in b]
    assert len(schemas) == 1, "docs/decision.md has one JSON Schema block"
    return dict(schemas[0])


def test_every_decision_field_is_documented() -> None:
    reads = _decision_reads()
    assert {"allow", "budget.default_output_tokens", "per", "entities", "request", "limits"} <= reads
    tokens = backticked("decision.md")
    undocumented = sorted(r for r in reads if not documented(r, tokens))
    assert not undocumented, f"add these decision fields to docs/decision.md: {undocumented}"
    values = sorted((set(documents.WINDOWS) | documents.OPERATORS) - tokens)
    assert not values, f"add these windows / operators to docs/decision.md: {values}"
    in_schema = _schema_properties(_decision_schema())
    missing = sorted(r for r in reads if r.rsplit(".", 1)[-1] not in in_schema)
    assert not missing, f"add these fields to the JSON Schema in docs/decision.md: {missing}"


def _input_paths(kind: Any, prefix: str) -> Iterator[str]:
    """Dotted paths of a TypedDict's fields; a `dict[str, X]` level is written `<...>` on the page."""
    for name, hint in typing.get_type_hints(kind).items():
        path = f"{prefix}{name}"
        yield path
        yield from _nested(hint, path)


def _nested(hint: Any, path: str) -> Iterator[str]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if is_typeddict(hint):
        yield from _input_paths(hint, path + ".")
    elif typing.get_origin(hint) is dict and len(args) == 2:
        yield from _nested(args[1], path + ".<>")
    elif typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in args:
            yield from _nested(arg, path)


def test_every_input_field_is_documented() -> None:
    paths = sorted(set(_input_paths(PolicyInput, "")))
    assert {"request.headers", "subject.user.email", "budget.windows.<>.resets_at", "sidecar"} <= set(paths)
    tokens = {re.sub(r"<[^>]*>", "<>", t) for t in backticked("policy-input.md")}
    undocumented = [p for p in paths if not any(t == p or t.startswith(p + ".") for t in tokens)]
    assert not undocumented, f"add these input fields to docs/policy-input.md: {undocumented}"


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> Iterator[tuple[str, list[str]]]:
    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    yield " ".join(words), options
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*words, name))


def test_every_command_and_option_is_documented() -> None:
    page = (DOCS / "cli.md").read_text()
    tokens = backticked("cli.md")
    commands = dict(_commands(cli.parser(), ("sidecar",)))
    assert "sidecar approvals deny" in commands and "--signing-key" in commands["sidecar policy build"]
    undocumented = [c for c in commands if c != "sidecar" and not any(t.startswith(c) for t in tokens)]
    assert not undocumented, f"add these commands to docs/cli.md: {undocumented}"
    options = sorted({f"{c} {o}" for c, opts in commands.items() for o in opts if o not in page})
    assert not options, f"add these options to docs/cli.md: {options}"


CITING = ["sidecar", "tests", "rego", "charts", "bench", "examples", "scripts", "README.md", "Makefile"]
SPEC_CITATION = re.compile(r"\bSPEC\b(?:\s*§|\s+section)")


def _cited_files() -> Iterator[Path]:
    for entry in CITING:
        root = ROOT / entry
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            if (
                path.suffix in {".py", ".rego", ".md", ".yaml", ".tpl", ".sh", ".txt", ""}
                and path != Path(__file__).resolve()
            ):
                yield path


def test_code_cites_docs_pages_that_exist() -> None:
    pages = {p.name for p in DOCS.glob("*.md")}
    assert {"cli.md", "configuration.md", "decision.md", "errors.md", "operations.md"} <= pages
    stale, dangling = [], []
    for path in _cited_files():
        text = path.read_text(errors="replace")
        where = str(path.relative_to(ROOT))
        stale += [f"{where}: {m.group(0)}" for m in SPEC_CITATION.finditer(text)]
        dangling += [f"{where}: {m}" for m in re.findall(r"docs/([\w.-]+\.md)", text) if m not in pages]
    assert not stale, f"cite a docs/ page instead of the spec: {stale}"
    assert not dangling, f"these cite docs pages that do not exist: {dangling}"


def _parses(doc: object) -> bool:
    try:
        documents.Decision.parse(doc)
    except documents.MalformedDecision:
        return False
    return True


def test_the_decision_schema_agrees_with_the_parser() -> None:
    example = _json_blocks("decision.md")[0]
    accepted: list[Any] = [
        example,
        documents.Decision.parse(example).as_dict(),
        {"allow": False},
        {"allow": True, "code": None, "max_output_tokens": 1024.0, "rate_limit": {"requests_per_minute": 5}},
        {"allow": True, "budget": {"limits": {"day": 0}}, "mask": {"restore": None}},
    ]
    refused: list[Any] = [
        None, [], {}, {"allow": "yes"}, {"allow": True, "reasons": [1]}, {"allow": True, "code": 5},
        {"allow": True, "require_approval": "yes"}, {"allow": True, "approvers": "group:x"},
        {"allow": True, "mask": {"request": {"operator": "rot13"}}},
        {"allow": True, "mask": {"response": {"entities": "PERSON"}}},
        {"allow": True, "budget": {"limits": {"week": 1}}}, {"allow": True, "budget": {"limits": {"day": -1}}},
        {"allow": True, "budget": {"limits": {"day": True}}}, {"allow": True, "budget": {"default_output_tokens": 0}},
        {"allow": True, "max_output_tokens": 1.5}, {"allow": True, "max_output_tokens": True},
        {"allow": True, "rate_limit": {"requests_per_minute": -1}}, {"allow": True, "rate_limit": {"per": "ip"}},
    ]  # fmt: skip
    validator = Draft202012Validator(_decision_schema())
    for doc in accepted + refused:
        assert validator.is_valid(doc) == _parses(doc), f"schema and parser disagree on {doc!r}"
    assert all(_parses(doc) for doc in accepted) and not any(_parses(doc) for doc in refused)

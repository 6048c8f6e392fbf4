"""What a compiled bundle can read of `input`, from the engine's own parsed AST.

The decision cache keys an entry on these reads, so the analysis may over-approximate but never miss
one. It walks every expression of every module the engine compiled (regorus's `get_ast_as_json`):

- A ref rooted at `input` whose fields are constant strings (`input.a.b`, `input["a"]`) reads that
  path; the first computed or non-string index (`input.a[k]`, `input.a[0]`) ends the path there, so
  the read covers the whole subtree. The same holds wherever the ref appears: an argument to a
  function or builtin (`count(input.a)` reads all of `a`), the right side of an alias
  (`x := input.a`: whatever `x` is used for stays inside `a`), an import (`import input.a as x`).
- `input` read as a whole (bare, `input[k]`, `walk(input)`, `object.get(input, ...)`), `with`
  replacing the input or a function, and a call to anything not known to be a deterministic builtin
  or a function of the bundle raise `Unbounded`: that bundle is evaluated without a cache.

Volatile paths (`VOLATILE`) are keyed only when an evaluation read them, which the engine's line
coverage tells: a read's places are its own lines and those of the expressions around it. That needs
lines regorus reports: its report walks rule bodies, head values and set keys, but not comprehension
terms, `else :=` values, rule head refs, function head arguments, `some k, v in` keys or `with`
modifiers. A volatile read there is keyed always, as a stable one. (The cache also checks, per file,
that the report does show every volatile place, and turns itself off if not.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

Path = tuple[str, ...]
Place = tuple[str, int]  # (policy file, line)

VOLATILE: tuple[Path, ...] = (
    ("budget",),
    ("time",),
    ("request", "id"),
    ("request", "body_bytes"),
    ("request", "estimated_input_tokens"),
)

# Builtins whose result depends on their arguments alone. Anything else (time.now_ns, rand.intn,
# uuid.rfc4122, http.send, net.lookup_ip_addr, opa.runtime, crypto.x509.*, io.jwt.*, a builtin this
# list does not know) makes a decision unrepeatable, so the bundle is not cached.
PURE_BUILTINS = frozenset(
    """
    count max min product sort sum array.concat array.reverse array.slice
    bits.and bits.lsh bits.negate bits.or bits.rsh bits.xor to_number
    base64.decode base64.encode base64.is_valid base64url.decode base64url.encode
    base64url.encode_no_pad hex.decode hex.encode urlquery.decode urlquery.decode_object
    urlquery.encode urlquery.encode_object json.is_valid json.marshal json.marshal_with_options
    json.unmarshal yaml.is_valid yaml.marshal yaml.unmarshal glob.match glob.quote_meta
    graph.reachable graph.reachable_paths walk net.cidr_is_valid net.cidr_contains net.cidr_expand
    abs ceil floor numbers.range numbers.range_step round json.filter json.remove object.filter
    object.get object.keys object.remove object.subset object.union object.union_n
    json.match_schema json.verify_schema json.patch regex.find_n regex.globs_match regex.is_valid
    regex.match regex.replace regex.split regex.template_match semver.compare semver.is_valid
    intersection union concat contains endswith format_int indexof indexof_n lower replace split
    sprintf startswith strings.any_prefix_match strings.any_suffix_match strings.count
    strings.replace_n strings.reverse substring trim trim_left trim_prefix trim_right trim_space
    trim_suffix upper time.add_date time.clock time.date time.diff time.format
    time.parse_duration_ns time.parse_ns time.parse_rfc3339_ns time.weekday is_array is_boolean
    is_null is_number is_object is_set is_string type_name units.parse units.parse_bytes uuid.parse
    print trace
    """.split()  # noqa: SIM905  (a block of names reads and diffs better than 115 quoted lines)
)
# Namespaces of non-deterministic builtins: a bundle function of the same name is refused too,
# rather than guess which of the two the engine calls.
_IMPURE_PREFIXES = ("time.now", "rand.", "uuid.rfc", "http.", "net.lookup", "opa.", "crypto.", "io.")

_SCALARS = frozenset({"String", "RawString", "Number", "Bool", "Null"})
_BINARY = frozenset({"BinExpr", "BoolExpr", "ArithExpr", "AssignExpr", "OrExpr"})
_REFS = frozenset({"Var", "RefDot", "RefBrack"})


class Unbounded(Exception):
    """The bundle reads `input` in a way the analysis cannot bound."""


@dataclass(frozen=True, slots=True)
class InputReads:
    stable: list[Path]  # always part of the key
    volatile: dict[Path, frozenset[Place]]  # keyed only when one of these lines ran


def read_set(ast_json: str | bytes) -> InputReads:
    """The reads of every module in `Engine.get_ast_as_json()`; raises Unbounded."""
    stable: set[Path] = set()
    volatile: dict[Path, set[Place]] = {}
    try:
        modules = orjson.loads(ast_json)
        functions = {f for module in modules for f in _functions(module["ast"])}
        for module in modules:
            walker = _Walker(module, functions)
            walker.module(module["ast"])
            stable |= walker.stable
            for path, places in walker.volatile.items():
                volatile.setdefault(path, set()).update(places)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # An AST shape this walker does not know (another regorus version): refuse, never guess.
        raise Unbounded(f"unexpected AST shape ({type(exc).__name__}: {exc})") from None
    keyed = minimal(stable)
    return InputReads(
        keyed,
        {p: frozenset(v) for p, v in volatile.items() if not any(_under(p, s) for s in keyed)},
    )


def minimal(paths: Iterable[Path]) -> list[Path]:
    """The paths not under another one of them, sorted."""
    unique = set(paths)
    return sorted(p for p in unique if not any(_under(p, q) and p != q for q in unique))


def _under(path: Path, prefix: Path) -> bool:
    return path[: len(prefix)] == prefix


def _one(node: Any) -> tuple[str, dict[str, Any]]:
    """An AST enum value is serialised as {"Kind": {fields}}."""
    if not isinstance(node, dict) or len(node) != 1:
        raise Unbounded(f"unexpected AST node {str(node)[:80]}")
    ((kind, body),) = node.items()
    return kind, body


def _chain(node: Any) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    """A ref's links from the outermost inwards, and the expression it is rooted at."""
    links = []
    kind, body = _one(node)
    while kind in ("RefDot", "RefBrack"):
        links.append((kind, body))
        node = body["refr"]
        kind, body = _one(node)
    return links, node


def _names(node: Any) -> list[str] | None:
    """`a.b["c"]` as ["a", "b", "c"]; None when the ref has a computed part."""
    links, root = _chain(node)
    kind, body = _one(root)
    if kind != "Var":
        return None
    names = [body["value"]]
    for link_kind, link in reversed(links):
        field = _field(link_kind, link)
        if field is None:
            return None
        names.append(field)
    return names


def _field(kind: str, link: dict[str, Any]) -> str | None:
    if kind == "RefDot":
        return str(link["field"][1])
    index_kind, index = _one(link["index"])
    return index["value"] if index_kind in ("String", "RawString") else None


def _package(ast: dict[str, Any]) -> str:
    names = _names(ast["package"]["refr"])
    if names is None:
        raise Unbounded("a package name with a computed part")
    return ".".join(["data", *names])


def _functions(ast: dict[str, Any]) -> Iterable[str]:
    """Full names (`data.pkg.f`) of the functions the module defines."""
    package = _package(ast)
    for rule in ast["rules"]:
        kind, body = _one(rule)
        head = body["refr"] if kind == "Default" else _one(body["head"])[1]["refr"]
        is_function = bool(body["args"]) if kind == "Default" else "Func" in body["head"]
        names = _names(head)
        if is_function and names is not None:
            yield ".".join([package, *names])


class _Walker:
    def __init__(self, module: dict[str, Any], functions: set[str]) -> None:
        self.file: str = module["source"]["file"]
        self.text: bytes = module["source"]["contents"].encode()
        self.functions = functions
        self.package = ""
        self.aliases: dict[str, str] = {}
        self.stable: set[Path] = set()
        self.volatile: dict[Path, set[Place]] = {}
        self.enclosing: list[int] = []  # lines of the expressions around the one being walked

    def fail(self, span: dict[str, Any], why: str) -> Unbounded:
        return Unbounded(f"{self.file}:{span['line']}: {why}")

    def module(self, ast: dict[str, Any]) -> None:
        self.package = _package(ast)
        for item in ast["imports"]:
            self.import_(item)
        for rule in ast["rules"]:
            kind, body = _one(rule)
            if kind == "Default":
                for part in [body["refr"], *body["args"], body["value"]]:
                    self.expr(part, tracked=False)
                continue
            if kind != "Spec":
                raise self.fail(body["span"], f"unsupported rule kind {kind}")
            _, head = _one(body["head"])
            self.expr(head["refr"], tracked=False)
            for arg in head.get("args", []):
                self.expr(arg, tracked=False)
            if head.get("assign"):
                self.expr(head["assign"]["value"], tracked=True)
            if head.get("key"):
                self.expr(head["key"], tracked=True)
            for rule_body in body["bodies"]:
                if rule_body["assign"]:  # `else := v`: not in the coverage report
                    self.expr(rule_body["assign"]["value"], tracked=False)
                self.query(rule_body["query"], tracked=True)

    def import_(self, item: dict[str, Any]) -> None:
        names = _names(item["refr"])
        if names is None:
            raise self.fail(item["span"], "an import with a computed part")
        span = item.get("as")
        alias = self.text[span["start"] : span["end"]].decode() if span else names[-1]
        if names[0] == "input":
            if len(names) > 1 or span:  # plain `import input` binds nothing new
                self.read(tuple(names[1:]), {item["span"]["line"]}, item["span"], tracked=False)
        elif names[0] == "data":
            self.aliases[alias] = ".".join(names)

    def query(self, query: dict[str, Any], tracked: bool) -> None:
        for stmt in query["stmts"]:
            for modifier in stmt.get("with_mods", []):
                self.with_modifier(modifier)
            kind, literal = _one(stmt["literal"])
            if kind == "SomeVars":
                continue
            if kind == "SomeIn":
                if literal["key"]:
                    self.expr(literal["key"], tracked=False)
                self.expr(literal["value"], tracked)
                self.expr(literal["collection"], tracked)
            elif kind in ("Expr", "NotExpr"):
                self.expr(literal["expr"], tracked)
            elif kind == "Every":
                self.expr(literal["domain"], tracked)
                self.query(literal["query"], tracked)
            else:
                raise self.fail(stmt["span"], f"unsupported statement {kind}")

    def with_modifier(self, modifier: dict[str, Any]) -> None:
        target = _names(modifier["refr"])
        if target is None or target[0] != "data":
            what = "the input" if target and target[0] == "input" else "a function"
            raise self.fail(modifier["span"], f"`with` replaces {what}")
        value = modifier["as"]
        if _one(value)[0] in ("Var", "RefDot"):  # may name a function standing in for a rule
            names = _names(value)
            if names and len(names) > 1 and names[0] not in ("input", "data"):
                self.check_call(".".join(names), modifier["span"])
        self.expr(modifier["refr"], tracked=False)
        self.expr(value, tracked=False)

    def expr(self, node: Any, tracked: bool) -> None:
        kind, body = _one(node)
        if kind in _SCALARS:
            return
        # The report leaves comprehension nodes out; every other enclosing line is one it shows.
        enclosing = kind not in ("ArrayCompr", "SetCompr", "ObjectCompr")
        if enclosing:
            self.enclosing.append(body["span"]["line"])
        try:
            self.expr_body(node, kind, body, tracked)
        finally:
            if enclosing:
                self.enclosing.pop()

    def expr_body(self, node: Any, kind: str, body: dict[str, Any], tracked: bool) -> None:
        if kind in _REFS:
            self.ref(node, tracked)
        elif kind in ("Array", "Set"):
            for item in body["items"]:
                self.expr(item, tracked)
        elif kind == "Object":
            for _span, key, value in body["fields"]:
                self.expr(key, tracked)
                self.expr(value, tracked)
        elif kind in ("ArrayCompr", "SetCompr", "ObjectCompr"):
            for part in ("term", "key", "value"):  # terms are not in the coverage report
                if part in body:
                    self.expr(body[part], tracked=False)
            self.query(body["query"], tracked)
        elif kind == "Call":
            names = _names(body["fcn"])
            if names is None:
                raise self.fail(body["span"], "a call to a computed function")
            self.check_call(".".join(names), body["span"])
            for param in body["params"]:
                self.expr(param, tracked)
        elif kind == "UnaryExpr":
            self.expr(body["expr"], tracked)
        elif kind in _BINARY:
            self.expr(body["lhs"], tracked)
            self.expr(body["rhs"], tracked)
        elif kind == "Membership":
            for part in (body["key"], body["value"], body["collection"]):
                if part:
                    self.expr(part, tracked)
        else:
            raise self.fail(body["span"], f"unsupported expression {kind}")

    def ref(self, node: Any, tracked: bool) -> None:
        links, root = _chain(node)
        root_kind, root_body = _one(root)
        if root_kind == "Var" and root_body["value"] == "input":
            path: list[str] = []
            # The read's own lines and those of the expressions around it: a read counts as run when
            # any of them ran, however the engine happens to evaluate this ref.
            lines = {root_body["span"]["line"], *self.enclosing}
            bounded = True
            for kind, link in reversed(links):
                lines.add(link["span"]["line"])
                field = _field(kind, link) if bounded else None
                bounded = field is not None
                if field is not None:
                    path.append(field)
            self.read(tuple(path), lines, root_body["span"], tracked)
        elif root_kind != "Var":
            self.expr(root, tracked)
        for kind, link in links:
            if kind == "RefBrack":
                self.expr(link["index"], tracked)

    def read(self, path: Path, lines: set[int], span: dict[str, Any], tracked: bool) -> None:
        if not path:
            raise self.fail(span, "reads `input` as a whole")
        if tracked and any(_under(path, v) for v in VOLATILE):
            self.volatile.setdefault(path, set()).update((self.file, n) for n in lines)
        else:  # a strict prefix of a volatile path (`input.request`) is keyed whole, always
            self.stable.add(path)

    def check_call(self, name: str, span: dict[str, Any]) -> None:
        if name.startswith(_IMPURE_PREFIXES) or not (
            name in PURE_BUILTINS or self.resolve(name) in self.functions
        ):
            raise self.fail(span, f"calls `{name}`, not known to be deterministic")

    def resolve(self, name: str) -> str:
        first, _, rest = name.partition(".")
        if first in self.aliases:
            return ".".join(filter(None, [self.aliases[first], rest]))
        return name if first == "data" else f"{self.package}.{name}"

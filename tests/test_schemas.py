"""The shipped JSON Schemas: the bundle's data is checked against its schema on every load (a typo is an error
naming the key, never a silently wider allowlist), and the documents the sidecar really sends the policy
match the policy input schema."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar import schemas
from sidecar.config import PACKAGE_BUNDLE
from sidecar.policy import bundle as bundles
from sidecar.policy.bundle import BundleError
from sidecar.policy.embedded import EmbeddedEngine
from tests.conftest import ACME_KEY, BUNDLE, GLOBEX_KEY, ROOT, MakeSidecar, Upstream
from tests.identity_fixtures import AUDIENCE, Idp, rsa_key

SHIPPED_FILES = bundles.read_files(BUNDLE)
SHIPPED_DATA: dict[str, Any] = json.loads(SHIPPED_FILES["data.json"])
LEAD_KEY = "ck-ml-lead-key"  # alice, group ml-leads: an approver in the shipped bundle


def _with_data(data: Any, manifest: dict[str, Any] | None = None) -> dict[str, bytes]:
    files = dict(SHIPPED_FILES)
    files["data.json"] = orjson.dumps(data)
    if manifest is not None:
        files[".manifest"] = orjson.dumps(manifest)
    return files


def _refusal(files: dict[str, bytes]) -> str:
    with pytest.raises(BundleError) as caught:
        bundles.parse(files, "test-bundle")
    return str(caught.value)


# --- the data schema -----------------------------------------------------------------------------------


def test_shipped_schemas_are_json_schemas_named_by_their_id() -> None:
    for name in (schemas.DATA, schemas.POLICY_INPUT, schemas.APPROVER_INPUT):
        schema = schemas.shipped(name)
        assert schema["$id"] == name
        schemas.validator(schema)  # raises on an invalid schema


def test_shipped_bundle_declares_and_matches_the_shipped_data_schema() -> None:
    for source in (BUNDLE, PACKAGE_BUNDLE):
        loaded = bundles.load(source)
        assert loaded.manifest["metadata"]["data_schema"] == schemas.DATA
        assert loaded.data_schema == schemas.DATA
    chart_data = json.loads((ROOT / "charts" / "openai-policy-sidecar" / "policy" / "data.json").read_text())
    assert schemas.problems(schemas.shipped_validator(schemas.DATA), chart_data) == []


def test_a_misspelled_key_is_an_error_naming_it() -> None:
    data = copy.deepcopy(SHIPPED_DATA)
    acme = data["sidecar"]["tenants"]["acme"]
    acme["modles"] = acme.pop("models")
    message = _refusal(_with_data(data))
    assert message == (
        "bundle test-bundle: data does not match sidecar:data.schema.json: "
        "/sidecar/tenants/acme/modles: unknown key 'modles' (did you mean 'models'?)"
    )


def test_without_the_schema_the_same_typo_widens_the_allowlist() -> None:
    """Why the check exists: acme's user-initiated calls may only use gpt-4-turbo; with `models` misspelled
    the tenant silently inherits the defaults, and gpt-4o-mini becomes allowed."""
    data = copy.deepcopy(SHIPPED_DATA)
    acme = data["sidecar"]["tenants"]["acme"]
    acme["modles"] = acme.pop("models")
    unchecked = {"revision": "r", "roots": ["sidecar"]}  # no metadata.data_schema: not checked
    doc = {
        "request": {"operation": "responses.create", "model": "gpt-4o-mini", "tools": [], "headers": {}},
        "subject": {"authenticated": True, "tenant": "acme", "groups": [], "user": {"sub": "u"}},
        "pii": {"request": {}},
        "budget": {"tenant": "acme", "windows": {}},
        "approval": {"id": None, "status": "none"},
    }

    def allowed(files: dict[str, bytes]) -> bool:
        engine = EmbeddedEngine(bundles.parse(files, "b"), "sidecar/decision")
        return bool(engine.evaluate_sync("data.sidecar.decision", doc)["allow"])

    assert not allowed(SHIPPED_FILES)
    assert allowed(_with_data(data, unchecked))  # the silent widening
    assert "/sidecar/tenants/acme/modles" in _refusal(_with_data(data))


def test_every_problem_is_listed_with_its_pointer() -> None:
    data = copy.deepcopy(SHIPPED_DATA)
    defaults, globex = data["sidecar"]["defaults"], data["sidecar"]["tenants"]["globex"]
    defaults["rate_limit"]["requests_per_minute"] = "60"
    defaults["budget"]["limits"]["minutes"] = 5
    defaults["max_output_tokens_by_model"]["a/b*c"] = 3
    del defaults["tools"]
    globex["models"]["agent"].append("gpt-*-mini")
    globex["approval"]["approvers"] = ["admins"]
    globex["fallback_tenant"] = "acme"  # only `defaults` has it
    data["sidecar"]["tenants"]["initech"] = {"mask": {"request": {"operator": "blur", "entities": ["email"]}}}
    message = _refusal(_with_data(data))
    assert "(9 problems)" in message
    for expected in (
        "/sidecar/defaults: 'tools' is a required property",
        "/sidecar/defaults/budget/limits/minutes: unknown key 'minutes' (did you mean 'minute'?)",
        "/sidecar/defaults/max_output_tokens_by_model/a~1b*c: invalid key: 'a/b*c' is not a pattern",
        "/sidecar/defaults/rate_limit/requests_per_minute: '60' is not of type 'integer'",
        "/sidecar/tenants/globex/approval/approvers/0: 'admins' is not an approver",
        "/sidecar/tenants/globex/fallback_tenant: unknown key 'fallback_tenant'",
        "/sidecar/tenants/globex/models/agent/1: 'gpt-*-mini' is not a pattern",
        "/sidecar/tenants/initech/mask/request/entities/0: 'email' is not a PII entity type",
        "/sidecar/tenants/initech/mask/request/operator: 'blur' is not one of",
    ):
        assert expected in message, expected
    assert "\n" not in message  # one line: one log line for a refused reload


@pytest.mark.parametrize(
    ("metadata", "error"),
    [
        ({"data_schema": "sidecar:nope.schema.json"}, "no schema 'sidecar:nope.schema.json' ships"),
        ({"data_schema": "../etc/passwd"}, "no schema '../etc/passwd' ships"),
        ({"data_schema": 7}, "must be a shipped schema's name"),
        ({"data_schema": {"type": "no-such-type"}}, "not a valid JSON Schema"),
        ({"data_schema": {"properties": {"a": {"pattern": "("}}}}, "'(' is not a 'regex'"),
        ({"data_schema": {"$ref": "https://example.invalid/s.json"}}, "unresolvable reference"),
        ("not an object", ".manifest metadata must be an object"),
    ],
)
def test_a_bad_schema_declaration_is_refused(metadata: Any, error: str) -> None:
    manifest = {"revision": "r", "roots": ["sidecar"], "metadata": metadata}
    assert error in _refusal(_with_data(SHIPPED_DATA, manifest))


def test_a_custom_bundle_carries_its_own_schema_or_none(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text("package demo\n\nallow if data.demo.open\n")
    (tmp_path / "data.json").write_text('{"demo": {"open": true, "typo": 1}}')
    assert bundles.load(tmp_path).data_schema == ""  # no manifest: not checked
    own = {
        "type": "object",
        "properties": {
            "demo": {
                "type": "object",
                "properties": {"open": {"type": "boolean"}},
                "additionalProperties": False,
            }
        },
    }
    (tmp_path / ".manifest").write_text(json.dumps({"metadata": {"data_schema": own}}))
    with pytest.raises(BundleError, match=r"the \.manifest's inline schema: /demo/typo: unknown key 'typo'"):
        bundles.load(tmp_path)
    (tmp_path / "data.json").write_text('{"demo": {"open": true}}')
    assert bundles.load(tmp_path).data_schema == "the .manifest's inline schema"


# --- random mutations of the shipped data are refused ------------------------------------------------------


def _all_keys(node: Any) -> set[str]:
    """Every property name the data schema knows, anywhere."""
    if isinstance(node, dict):
        found = set(node.get("properties", {})) if isinstance(node.get("properties"), dict) else set()
        return found.union(*(_all_keys(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_all_keys(v) for v in node))
    return set()


KNOWN_KEYS = _all_keys(schemas.shipped(schemas.DATA))


def _nodes(node: Any, where: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    yield where, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from _nodes(value, (*where, key))


def _free_name(path: tuple[str | int, ...]) -> bool:
    """A key the operator names (a tenant, a model pattern), not one the schema fixes."""
    parent = path[-2] if len(path) >= 2 else None
    return parent == "tenants" or (isinstance(parent, str) and parent.endswith("_by_model"))


NODES = [(p, v) for p, v in _nodes(SHIPPED_DATA) if p]
FIXED_KEYS = [p for p, _ in NODES if isinstance(p[-1], str) and not _free_name(p)]
TYPED = [(p, v) for p, v in NODES if v is not None]  # null is a valid "off" for several settings


def _kind(value: Any) -> str:
    return type(value).__name__


OTHER_VALUES = st.one_of(
    st.booleans(),
    st.integers(-5, 10**6),
    st.text(max_size=6),
    st.lists(st.integers(-5, 5), max_size=2),
    st.dictionaries(st.sampled_from(["x", "agent"]), st.integers(-5, 5), max_size=1),
)


def _typo(key: str) -> st.SearchStrategy[str]:
    i = st.integers(0, max(len(key) - 2, 0))
    return st.one_of(
        i.map(lambda n: key[:n] + key[n + 1 : n + 2] + key[n : n + 1] + key[n + 2 :]),  # swapped letters
        i.map(lambda n: key[:n] + key[n + 1 :]),  # a dropped letter
        st.text(min_size=1, max_size=10),
    )


def _set(data: Any, path: tuple[str | int, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_renamed_key_is_refused_by_name(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(FIXED_KEYS))
    old = str(path[-1])
    new = data.draw(_typo(old).filter(lambda k: k not in KNOWN_KEYS), label="new name")
    mutated = copy.deepcopy(SHIPPED_DATA)
    parent: dict[str, Any] = mutated
    for part in path[:-1]:
        parent = parent[part]  # type: ignore[index]
    parent[new] = parent.pop(old)
    message = _refusal(_with_data(mutated))
    assert f"{schemas.pointer([*path[:-1], new])}: unknown key {new!r}" in message


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_value_of_the_wrong_type_is_refused_by_path(data: st.DataObject) -> None:
    path, value = data.draw(st.sampled_from(TYPED))
    other = data.draw(OTHER_VALUES.filter(lambda v: _kind(v) != _kind(value)), label="replacement")
    mutated = copy.deepcopy(SHIPPED_DATA)
    _set(mutated, path, other)
    assert f"{schemas.pointer(path)}" in _refusal(_with_data(mutated))


# --- the policy input schema -------------------------------------------------------------------------------


async def test_real_input_documents_match_the_input_schema(
    make_sidecar: MakeSidecar, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls of every shape through a running sidecar; every document the engine is asked about matches."""
    idp = await Idp([rsa_key("key-1")]).start()
    try:
        sc = await make_sidecar(
            SIDECAR_PII_MODE="patterns",
            SIDECAR_OIDC_ISSUER=idp.issuer,  # for end-user tokens; callers and approvers use static keys
            SIDECAR_JWT_AUDIENCE=AUDIENCE,
            SIDECAR_ADMIN_AUTH="static",
        )
        engine = sc.sidecar.engine
        inputs: list[dict[str, Any]] = []
        approver_inputs: list[dict[str, Any]] = []
        evaluate, query = engine.evaluate, engine.query

        async def recording_evaluate(doc: Any) -> Any:
            inputs.append(orjson.loads(orjson.dumps(doc)))
            return await evaluate(doc)

        async def recording_query(path: str, doc: Any) -> Any:
            approver_inputs.append(orjson.loads(orjson.dumps(doc)))
            return await query(path, doc)

        monkeypatch.setattr(engine, "evaluate", recording_evaluate)
        monkeypatch.setattr(engine, "query", recording_query)
        await _calls_of_every_shape(sc.url, sc.admin, idp)
    finally:
        await idp.stop()

    check = schemas.shipped_validator(schemas.POLICY_INPUT)
    assert {i: found for i, doc in enumerate(inputs) if (found := schemas.problems(check, doc))} == {}
    # the calls reached every part of the document
    assert {doc["approval"]["status"] for doc in inputs} >= {"none", "pending", "approved"}
    assert any(doc["subject"]["user"] for doc in inputs) and any(doc["budget"]["windows"] for doc in inputs)
    assert any(doc["pii"]["request"] for doc in inputs) and any(doc["request"]["stream"] for doc in inputs)
    assert any(doc["request"]["headers"].get("x-agent-name") for doc in inputs)
    assert {"unknown", "files.create", "models.list", "embeddings.create"} <= {
        doc["request"]["operation"] for doc in inputs
    }
    approver = schemas.shipped_validator(schemas.APPROVER_INPUT)
    assert approver_inputs and all(schemas.problems(approver, doc) == [] for doc in approver_inputs)
    # and the schema is strict: a misspelled or missing field is named
    wrong = copy.deepcopy(inputs[0])
    wrong["request"]["modle"] = wrong["request"].pop("model")
    assert schemas.problems(check, wrong) == [
        "/request: 'model' is a required property",
        "/request/modle: unknown key 'modle' (did you mean 'model'?)",
    ]


async def _calls_of_every_shape(url: str, admin: str, idp: Idp) -> None:
    headers = {"x-agent-name": "schema-test"}
    acme = openai.AsyncOpenAI(base_url=url, api_key=ACME_KEY, max_retries=0, default_headers=headers)
    tools: Any = [{"type": "function", "name": "f", "parameters": {}}, {"type": "web_search"}]
    await acme.responses.create(model="gpt-4o", input="mail me at jane@example.com", tools=tools)
    stream = await acme.responses.create(model="gpt-4o", input="hi", stream=True, max_output_tokens=50)
    async for _event in stream:
        pass
    await acme.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=9
    )
    await acme.embeddings.create(model="text-embedding-3-small", input="hi")
    await acme.models.list()
    await acme.files.create(file=("a.jsonl", b'{"a": 1}\n'), purpose="batch")
    with pytest.raises(openai.PermissionDeniedError):
        await acme.responses.create(model="o1-pro", input="hi")
    with pytest.raises(openai.APIStatusError):
        await acme.get("/no/such/operation", cast_to=dict)
    user = idp.token(sub="user-1", email="u@example.com", groups=["support"], tenant=None)
    as_user = acme.with_options(default_headers={"X-End-User-Token": user})
    await as_user.responses.create(model="gpt-4-turbo", input="hi")
    globex = openai.AsyncOpenAI(base_url=url, api_key=GLOBEX_KEY, max_retries=0)
    await globex.responses.create(model="gpt-4o-mini", input="hi")
    # an approval-gated call: held (approval none, then pending), approved by alice, then let through
    batch: Any = {"input_file_id": "file-abc", "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    for _ in range(2):
        with pytest.raises(openai.PermissionDeniedError) as held:
            await acme.batches.create(**batch)
    approval_id = held.value.response.headers["x-approval-id"]
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {LEAD_KEY}"}) as http,
        http.post(f"{admin}/v1/approvals/{approval_id}/approve", json={"reason": "ok"}) as resp,
    ):
        assert resp.status == 200, await resp.text()
    await acme.batches.create(**batch)
    for client in (acme, as_user, globex):
        await client.close()


# --- `opa check --schema`: a rule reading a misspelled input field fails the lint --------------------------


def _opa_check(opa_bin: str, bundle: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    schema = tmp_path / "input.schema.json"
    schema.write_bytes(orjson.dumps(schemas.opa_input_schema()))
    return subprocess.run(
        [opa_bin, "check", "--strict", "--schema", str(schema), str(bundle)], capture_output=True, text=True
    )


@pytest.mark.opa
def test_opa_type_checks_the_bundle_against_the_input_schemas(opa_bin: str, tmp_path: Path) -> None:
    assert _opa_check(opa_bin, BUNDLE, tmp_path).returncode == 0  # what `make lint` runs
    broken = tmp_path / "broken"
    shutil.copytree(BUNDLE, broken)
    models = broken / "models.rego"
    models.write_text(models.read_text().replace("m := input.request.model\n", "m := input.request.modle\n"))
    approver = broken / "approver.rego"
    approver.write_text(approver.read_text().replace("input.approver.tenant != ", "input.approver.tenat != "))
    proc = _opa_check(opa_bin, broken, tmp_path)
    assert proc.returncode != 0
    assert "undefined ref: input.request.modle" in proc.stdout + proc.stderr
    assert "undefined ref: input.approver.tenat" in proc.stdout + proc.stderr

"""The injection webhook: pod → JSONPatch rules, AdmissionReview handling, and the real CLI over TLS.

`apply_patch` is a small RFC 6902 `add` applier (the only op the webhook emits); tests/test_chart.py uses it
too, to check that a webhook-injected pod equals the chart's statically injected one.
"""

from __future__ import annotations

import base64
import copy
import datetime
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.inject import config as injection
from sidecar.inject.config import InjectionConfig, InjectionConfigError
from sidecar.inject.patch import PodError, plan
from sidecar.inject.server import WebhookState, build_app, respond
from tests.conftest import ROOT, free_port

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
PREFIX = "openai-policy-sidecar"

CONFIG_DOC: dict[str, Any] = {
    "prefix": PREFIX,
    "initContainers": [
        {
            "name": f"{PREFIX}-opa",
            "image": "openpolicyagent/opa:1.4.2-static",
            "restartPolicy": "Always",
            "ports": [
                {"name": "opa-http", "containerPort": 8181},
                {"name": "opa-diag", "containerPort": 8282},
            ],
            "volumeMounts": [{"name": f"{PREFIX}-policy", "mountPath": "/policy", "readOnly": True}],
        },
        {
            "name": PREFIX,
            "image": "openai-policy-sidecar:0.1.0",
            "restartPolicy": "Always",
            "ports": [{"name": "sidecar-admin", "containerPort": 8081}],
            "volumeMounts": [{"name": f"{PREFIX}-provider-key", "mountPath": "/var/run/secrets/p"}],
        },
    ],
    "volumes": [
        {"name": f"{PREFIX}-provider-key", "secret": {"secretName": "provider-key"}},
        {"name": f"{PREFIX}-policy", "configMap": {"name": "policy"}},
    ],
    "env": [{"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:8080/v1"}],
    "imagePullSecrets": [{"name": "registry-creds"}],
    "labels": {f"{PREFIX}/injected": "true"},
    "annotations": {f"{PREFIX}/status": "injected"},
}
CFG = injection.parse(copy.deepcopy(CONFIG_DOC))
INJECTED = [c["name"] for c in CONFIG_DOC["initContainers"]]


# --- a JSONPatch applier ("add" only: the one op the webhook emits) ----------------------------------------


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def apply_patch(doc: Any, patch: list[dict[str, Any]]) -> Any:
    doc = copy.deepcopy(doc)
    for op in patch:
        assert op["op"] == "add", op
        assert op["path"].startswith("/"), op
        *parents, last = [_unescape(t) for t in op["path"][1:].split("/")]
        target = doc
        for token in parents:
            target = target[int(token)] if isinstance(target, list) else target[token]
        value = copy.deepcopy(op["value"])
        if isinstance(target, list):
            if last == "-":
                target.append(value)
            else:
                index = int(last)
                assert 0 <= index <= len(target), op
                target.insert(index, value)
        else:
            assert isinstance(target, dict), op
            target[last] = value
    return doc


def pod(**spec: Any) -> dict[str, Any]:
    meta = spec.pop("metadata", {"generateName": "agent-", "namespace": "agents"})
    body: dict[str, Any] = {"containers": [{"name": "agent", "image": "agent:1"}], **spec}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body}


def inject(obj: dict[str, Any], cfg: InjectionConfig = CFG) -> dict[str, Any]:
    outcome = plan(obj, cfg)
    assert outcome.injected, outcome.reason
    patched: dict[str, Any] = apply_patch(obj, outcome.patch)
    return patched


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# --- the patch rules --------------------------------------------------------------------------------------


def test_bare_pod_gets_everything() -> None:
    out = inject(pod())
    spec = out["spec"]
    assert [c["name"] for c in spec["initContainers"]] == INJECTED
    assert all(c["restartPolicy"] == "Always" for c in spec["initContainers"])
    assert spec["volumes"] == CONFIG_DOC["volumes"]
    assert env_of(spec["containers"][0]) == {"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1"}
    assert spec["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert out["metadata"]["labels"] == {f"{PREFIX}/injected": "true"}
    assert out["metadata"]["annotations"] == {f"{PREFIX}/status": "injected"}
    # the patch never touches the app container beyond env
    assert {k: v for k, v in spec["containers"][0].items() if k != "env"} == {
        "name": "agent",
        "image": "agent:1",
    }


def test_existing_init_containers_volumes_env_labels_are_kept() -> None:
    obj = pod(
        metadata={"name": "a", "labels": {"app": "bot"}, "annotations": {"team": "ml"}},
        initContainers=[{"name": "migrate", "image": "m:1"}],
        volumes=[{"name": "data", "emptyDir": {}}],
        imagePullSecrets=[{"name": "registry-creds"}, {"name": "mine"}],
        containers=[
            {"name": "agent", "image": "a:1", "env": [{"name": "LOG", "value": "1"}]},
            {
                "name": "worker",
                "image": "w:1",
                "env": [{"name": "OPENAI_BASE_URL", "value": "http://mine/v1"}],
            },
            {"name": "helper", "image": "h:1"},
        ],
    )
    out = inject(obj)
    spec = out["spec"]
    # the native sidecars come first, so they are up before any other init container runs
    assert [c["name"] for c in spec["initContainers"]] == [*INJECTED, "migrate"]
    assert [v["name"] for v in spec["volumes"]] == ["data", f"{PREFIX}-provider-key", f"{PREFIX}-policy"]
    assert spec["imagePullSecrets"] == [{"name": "registry-creds"}, {"name": "mine"}], "no duplicate"
    agent, worker, helper = spec["containers"]
    assert env_of(agent) == {"LOG": "1", "OPENAI_BASE_URL": "http://127.0.0.1:8080/v1"}
    assert env_of(worker) == {"OPENAI_BASE_URL": "http://mine/v1"}, "a container's own value wins"
    assert env_of(helper) == {"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1"}
    assert out["metadata"]["labels"] == {"app": "bot", f"{PREFIX}/injected": "true"}
    assert out["metadata"]["annotations"] == {"team": "ml", f"{PREFIX}/status": "injected"}


def test_injection_is_idempotent() -> None:
    once = inject(pod())
    again = plan(once, CFG)
    assert again.patch == [] and "already injected" in again.reason


def test_statically_injected_pod_is_left_alone() -> None:
    obj = pod(initContainers=copy.deepcopy(CONFIG_DOC["initContainers"]))  # no status annotation
    outcome = plan(obj, CFG)
    assert outcome.patch == []
    assert PREFIX in outcome.reason


@pytest.mark.parametrize("where", ["annotations", "labels"])
@pytest.mark.parametrize("value", ["false", "False", "no", "disabled"])
def test_opt_out(where: str, value: str) -> None:
    obj = pod(metadata={"generateName": "a-", where: {f"{PREFIX}/inject": value}})
    outcome = plan(obj, CFG)
    assert outcome.patch == [] and "opted out" in outcome.reason


def test_opt_in_annotation_still_injects() -> None:
    assert inject(pod(metadata={"annotations": {f"{PREFIX}/inject": "true"}}))["spec"]["initContainers"]


def test_host_network_pod_is_not_injected() -> None:
    outcome = plan(pod(hostNetwork=True), CFG)
    assert outcome.patch == [] and "hostNetwork" in outcome.reason


def test_pod_without_metadata_gets_metadata() -> None:
    obj = pod()
    del obj["metadata"]
    out = inject(obj)
    assert out["metadata"]["annotations"][f"{PREFIX}/status"] == "injected"


def test_label_keys_are_escaped_in_json_pointers() -> None:
    outcome = plan(pod(metadata={"labels": {"x": "y"}, "annotations": {"a": "b"}}), CFG)
    paths = [op["path"] for op in outcome.patch]
    assert f"/metadata/labels/{PREFIX}~1injected" in paths
    assert f"/metadata/annotations/{PREFIX}~1status" in paths


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (pod(volumes=[{"name": f"{PREFIX}-policy", "emptyDir": {}}]), "clash with the injected volumes"),
        (pod(containers=[{"name": "a", "image": "a", "ports": [{"containerPort": 8181}]}]), "ports 8181"),
        (pod(containers="agent"), "spec.containers"),
        (pod(containers=[]), "at least one container"),
        (pod(volumes={"name": "x"}), "spec.volumes"),
        (pod(containers=[{"name": "a", "env": {"A": "1"}}]), "env"),
        ({**pod(), "spec": ["not", "a", "spec"]}, "spec"),
        ("a pod", "Pod object"),
    ],
)
def test_unusable_pods_are_refused(obj: Any, message: str) -> None:
    with pytest.raises(PodError, match=message):
        plan(obj, CFG)


# --- the injection config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"initContainers": []}, "non-empty list"),
        ({"initContainers": [{"image": "x"}]}, "name"),
        ({"volumes": [{"name": "a"}, {"name": "a"}]}, "appears twice"),
        ({"prefix": "Not A Prefix"}, "prefix"),
        ({"labels": {"a": 1}}, "strings"),
        ({"containers": []}, "unknown keys"),
        ({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, "not one of the injected volumes"),
        ({"volumeMounts": [{"name": f"{PREFIX}-policy", "mountPath": "relative"}]}, "absolute"),
    ],
)
def test_bad_injection_config_is_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InjectionConfigError, match=message):
        injection.parse({**CONFIG_DOC, **change})


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("prefix: [unclosed\n")
    with pytest.raises(InjectionConfigError, match=str(bad)):
        injection.load(bad)


# --- AdmissionReview --------------------------------------------------------------------------------------


def review(
    obj: Any, *, uid: str = "7f0c-uid", operation: str = "CREATE", kind: str = "Pod"
) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": operation,
            "namespace": "agents",
            "object": obj,
        },
    }


def decode(answer: dict[str, Any]) -> list[dict[str, Any]]:
    response = answer["response"]
    assert response["patchType"] == "JSONPatch"
    patch: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"]))
    return patch


def test_review_in_jsonpatch_out() -> None:
    answer = respond(review(pod()), CFG)
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == "7f0c-uid" and response["allowed"] is True
    assert response["auditAnnotations"] == {"injection": "injected"}
    out = apply_patch(pod(), decode(answer))
    assert [c["name"] for c in out["spec"]["initContainers"]] == INJECTED


def test_review_of_injected_pod_has_no_patch() -> None:
    response = respond(review(inject(pod())), CFG)["response"]
    assert response["allowed"] is True and "patch" not in response and "patchType" not in response


@pytest.mark.parametrize(("operation", "kind"), [("UPDATE", "Pod"), ("CREATE", "Deployment")])
def test_other_requests_are_allowed_unchanged(operation: str, kind: str) -> None:
    response = respond(review(pod(), operation=operation, kind=kind), CFG)["response"]
    assert response == {
        "uid": "7f0c-uid",
        "allowed": True,
        "auditAnnotations": {"injection": "skipped: not a pod CREATE"},
    }


def test_review_of_malformed_pod_is_denied_cleanly() -> None:
    response = respond(review(pod(containers="x")), CFG)["response"]
    assert response["allowed"] is False and "patch" not in response
    assert response["status"]["code"] == 400
    assert response["status"]["message"].startswith(f"{PREFIX} injection: spec.containers")


@pytest.fixture
def webhook_app() -> web.Application:
    state = WebhookState(config_path="(inline)", cfg=CFG)
    return build_app(state)


async def test_http_mutate(aiohttp_client: AiohttpClient, webhook_app: web.Application) -> None:
    client = await aiohttp_client(webhook_app)
    resp = await client.post("/mutate", json=review(pod()))
    assert resp.status == 200
    answer = await resp.json()
    assert answer["response"]["allowed"] is True
    assert [c["name"] for c in apply_patch(pod(), decode(answer))["spec"]["initContainers"]] == INJECTED
    health = await (await client.get("/healthz")).json()
    ready = await (await client.get("/readyz")).json()
    assert health == {"status": "ok"}
    assert ready == {"ready": True, "prefix": PREFIX, "containers": sorted(INJECTED)}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body is not JSON"),
        (b"\xff\xfe", "body is not JSON"),
        (b"[1, 2]", "expected an AdmissionReview JSON object"),
        (
            json.dumps({**review(pod()), "apiVersion": "admission.k8s.io/v1beta1"}).encode(),
            "expected apiVersion",
        ),
        (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(), "no request"),
        (json.dumps(review(pod(), uid="")).encode(), "no uid"),
    ],
)
async def test_http_malformed_review_gets_a_clean_400(
    aiohttp_client: AiohttpClient, webhook_app: web.Application, body: bytes, message: str
) -> None:
    client = await aiohttp_client(webhook_app)
    resp = await client.post("/mutate", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    doc = await resp.json()
    assert message in doc["error"]


# --- the real command, over TLS ---------------------------------------------------------------------------


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_tls(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A throwaway CA and a serving certificate for `host`; returns (ca.crt, tls.crt, tls.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "inject-webhook-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.crt", folder / "tls.crt", folder / "tls.key"
    paths[0].write_bytes(_pem_cert(ca))
    paths[1].write_bytes(_pem_cert(cert))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def sidecar_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sidecar", *args]


def wait_https(
    url: str, context: ssl.SSLContext, proc: subprocess.Popen[bytes], timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"inject-webhook exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''!r}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1, context=context):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing answered at {url}")


def https_json(url: str, context: ssl.SSLContext, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10, context=context) as resp:
        return json.loads(resp.read())


@pytest.fixture
def webhook_process(tmp_path: Path) -> Iterator[tuple[str, Path, Path, subprocess.Popen[bytes]]]:
    ca, cert, key = make_tls(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG_DOC))
    port = free_port()
    env = {**os.environ, "SIDECAR_INJECT_RELOAD_SECONDS": "0.2", "SIDECAR_INJECT_CONFIG": str(config)}
    proc = subprocess.Popen(
        sidecar_cli(
            "inject-webhook",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_https(f"https://127.0.0.1:{port}/healthz", ssl.create_default_context(cafile=ca), proc)
        yield f"https://127.0.0.1:{port}", ca, config, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)


def test_cli_serves_reviews_over_tls(
    webhook_process: tuple[str, Path, Path, subprocess.Popen[bytes]],
) -> None:
    url, ca, config, proc = webhook_process
    context = ssl.create_default_context(cafile=ca)  # verifies the chain and the IP SAN
    answer = https_json(f"{url}/mutate", context, review(pod()))
    assert answer["response"]["allowed"] is True
    assert [c["name"] for c in apply_patch(pod(), decode(answer))["spec"]["initContainers"]] == INJECTED

    # --check, as the chart's helm test hook runs it
    check = subprocess.run(
        sidecar_cli("inject-webhook", f"--check={url}/mutate", f"--ca-file={ca}"),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    assert "OK, injects" in check.stdout
    # ... and it refuses a server it cannot verify
    untrusted = subprocess.run(
        sidecar_cli("inject-webhook", f"--check={url}/mutate"), cwd=ROOT, capture_output=True, text=True
    )
    assert untrusted.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr

    # a changed config file is picked up without a restart
    changed = copy.deepcopy(CONFIG_DOC)
    changed["initContainers"][1]["name"] = "policy-proxy"
    config.write_text(yaml.safe_dump(changed))
    deadline = time.monotonic() + 10
    while https_json(f"{url}/readyz", context)["containers"] != sorted([f"{PREFIX}-opa", "policy-proxy"]):
        assert time.monotonic() < deadline, "config was not reloaded"
        time.sleep(0.1)
    # a broken one is not: the last good config stays
    config.write_text("initContainers: nope\n")
    time.sleep(0.6)
    assert https_json(f"{url}/readyz", context)["containers"] == sorted([f"{PREFIX}-opa", "policy-proxy"])

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    logs = (
        [json.loads(line) for line in proc.stderr.read().decode().splitlines() if line.startswith("{")]
        if proc.stderr
        else []
    )
    messages = [entry["msg"] for entry in logs]
    assert "inject-webhook serving" in messages
    assert "admission review" in messages
    assert "injection config reloaded" in messages
    assert any(m.startswith("injection config not reloaded") for m in messages)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "inject-webhook needs --config, --tls-cert, --tls-key"),
        (
            ["--config", "/nonexistent/config.yaml", "--tls-cert", "c", "--tls-key", "k"],
            "/nonexistent/config.yaml",
        ),
    ],
)
def test_cli_errors_are_clean(args: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_INJECT_")}
    proc = subprocess.run(
        sidecar_cli("inject-webhook", *args), cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_refuses_a_bad_config(tmp_path: Path) -> None:
    _, cert, key = make_tls(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG_DOC, "initContainers": []}))
    proc = subprocess.run(
        sidecar_cli(
            "inject-webhook", "--config", str(config), "--tls-cert", str(cert), "--tls-key", str(key)
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert f"{config}: initContainers: expected a non-empty list" in proc.stderr

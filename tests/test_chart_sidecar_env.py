"""Each rendered sidecar container, as the kubelet would start it, is a configuration the real sidecar accepts.

A stand-in for the kubelet turns a rendered pod into what its containers see: every volume a container mounts
becomes a temporary directory with the files the kubelet would write (Secret items, downward API files,
projected service-account tokens and the cluster CA), env references are resolved (fieldRef, secretKeyRef),
and paths under a mount point are moved into those directories. The result goes through
`sidecar.config.load` and the start-up of the identity stage (`build_authenticator`, `admin_authenticator`),
so a misspelt variable, a path outside its mount or an incomplete identity fails here, in every auth mode,
for agentDeployment and for a webhook-injected pod alike.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar import config as settings
from sidecar.approvals.admin import admin_authenticator
from sidecar.identity.end_user import end_user_config
from sidecar.identity.jwt import JwtConfig
from sidecar.identity.pod import pod_subject
from sidecar.pipeline.authenticate import build_authenticator
from tests.chart_fixtures import (
    AGENT_POD,
    AUTH_SETS,
    NAME,
    chart_fixture,  # noqa: F401  (the `chart` fixture)
    containers,
    one,
    render,
    webhook_injected,
)

NAMESPACE = "agents"
KNOWN_SETTINGS = {f"SIDECAR_{f.name.upper()}" for f in dataclasses.fields(settings.Settings)}
CALLER_KEYS = {"ck-acme": {"sub": "bot", "tenant": "acme", "groups": ["approvers"]}}


def _ca_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class Kubelet:
    """What a pod's containers see: their env, and their mounts as files under `root`."""

    def __init__(self, root: Path, pod: dict[str, Any]) -> None:
        self.root = root
        self.spec = pod["spec"]
        self.labels: dict[str, str] = pod.get("metadata", {}).get("labels", {})
        # The API server defaults the service account before the kubelet resolves spec.serviceAccountName.
        self.service_account = self.spec.get("serviceAccountName", "default")
        self.volumes = {v["name"]: v for v in self.spec.get("volumes", [])}

    @staticmethod
    def secret(name: str, key: str) -> str:
        return json.dumps(CALLER_KEYS) if key == "keys.json" else f"secret:{name}/{key}"

    def field(self, path: str) -> str:
        values = {"metadata.namespace": NAMESPACE, "spec.serviceAccountName": self.service_account}
        assert path in values, f"the stand-in kubelet does not resolve fieldRef {path}"
        return values[path]

    def files(self, volume: dict[str, Any]) -> dict[str, str]:
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            return {i["path"]: self.secret(name, i["key"]) for i in volume["secret"].get("items", [])}
        if "downwardAPI" in volume:
            labels = "\n".join(f"{k}={json.dumps(v)}" for k, v in sorted(self.labels.items()))
            by_field = {"metadata.namespace": NAMESPACE, "metadata.labels": labels}
            return {i["path"]: by_field[i["fieldRef"]["fieldPath"]] for i in volume["downwardAPI"]["items"]}
        found: dict[str, str] = {}
        for source in volume.get("projected", {}).get("sources", []):
            if token := source.get("serviceAccountToken"):
                found[token["path"]] = f"token:aud={token.get('audience', 'kube-apiserver')}"
            elif source.get("configMap", {}).get("name") == "kube-root-ca.crt":
                found |= {i["path"]: _ca_pem() for i in source["configMap"]["items"]}
            else:
                pytest.fail(f"the stand-in kubelet does not project {source}")
        return found

    def environ(self, container_name: str) -> dict[str, str]:
        container = containers(self.spec)[container_name]
        moved: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in self.volumes, f"{container_name} mounts a missing volume {mount['name']}"
            folder = self.root / container_name / mount["name"]
            folder.mkdir(parents=True)
            for rel, text in self.files(self.volumes[mount["name"]]).items():
                (folder / rel).write_text(text)
            moved[mount["mountPath"]] = folder
        environ: dict[str, str] = {}
        for var in container.get("env", []):
            ref = var.get("valueFrom", {})
            if "fieldRef" in ref:
                value = self.field(ref["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in ref:
                value = self.secret(ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
            else:
                value = str(var["value"])
            for mount_path in sorted(moved, key=len, reverse=True):
                if value == mount_path or value.startswith(mount_path + "/"):
                    value = str(moved[mount_path]) + value[len(mount_path) :]
                    break
            environ[var["name"]] = value
        return environ


def started_pod(chart: Any, auth: str, how: str) -> dict[str, Any]:
    """The agent pod of AUTH_SETS[auth], rendered by agentDeployment or injected by the webhook."""
    docs = render(chart, AUTH_SETS[auth], namespace=NAMESPACE)
    template = one(docs, "Deployment", AGENT_POD)["spec"]["template"]
    if how == "static":
        return dict(template)
    agent = {"name": "agent", "image": "agent:1"}
    if auth == "jwt-kubernetes":  # the mount the webhook cannot add (NOTES.txt)
        agent["volumeMounts"] = [
            {"name": f"{NAME}-agent-token", "mountPath": f"/var/run/secrets/{NAME}/agent", "readOnly": True}
        ]
    spec = {
        "containers": [agent],
        "serviceAccountName": template["spec"].get("serviceAccountName", "default"),
    }
    return webhook_injected(docs, {"metadata": {"labels": template["metadata"]["labels"]}, "spec": spec})


@pytest.mark.parametrize("how", ["static", "webhook"])
@pytest.mark.parametrize("auth", AUTH_SETS, ids=str)
def test_the_sidecar_starts_with_the_rendered_env(chart: Any, tmp_path: Path, auth: str, how: str) -> None:
    kubelet = Kubelet(tmp_path, started_pod(chart, auth, how))
    environ = kubelet.environ(NAME)
    unknown = {name for name in environ if name.startswith("SIDECAR_")} - KNOWN_SETTINGS
    assert not unknown, f"the sidecar has no such settings (it ignores them): {sorted(unknown)}"
    loaded = settings.load(None, environ)
    assert loaded.provider_key() == f"secret:rel-{NAME}-provider-key/api-key"
    build_authenticator(loaded)  # the identity stage's start-up: keys file, pod identity, JWKS CA file
    admin_authenticator(loaded)

    if loaded.auth_mode == "pod":
        subject = pod_subject(loaded)
        assert subject.sub == f"system:serviceaccount:{NAMESPACE}:support-bot"
        assert (subject.tenant, subject.groups) == (
            ("acme", ("agents", "batch")) if auth == "pod-label" else (NAMESPACE, ())
        )
    elif loaded.auth_mode == "static":
        assert json.loads(Path(loaded.static_keys_file).read_text()) == CALLER_KEYS
    else:
        caller = JwtConfig.from_settings(loaded)
        user = end_user_config(loaded)
        assert user is not None
        admin = JwtConfig.from_settings(loaded, audience=loaded.admin_jwt_audience)
        assert admin.audiences != caller.audiences, "approver tokens are not caller tokens"
    if auth == "jwt-kubernetes":
        # The agent's token is for the sidecar's audience; the sidecar's own is for the API server.
        agent_token = Path(kubelet.environ("agent")["SIDECAR_TOKEN_FILE"]).read_text()
        assert agent_token == f"token:aud={loaded.jwt_audience}"
        assert Path(loaded.jwks_token_file).read_text() == "token:aud=kube-apiserver"
        assert Path(loaded.jwks_ca_file).read_text().startswith("-----BEGIN CERTIFICATE-----")
        assert caller.source.jwks_url == "https://kubernetes.default.svc/openid/v1/jwks"
        assert loaded.tenant_claim == "kubernetes.io.namespace"


def test_a_misspelt_variable_would_be_caught(tmp_path: Path) -> None:
    """The check above is not vacuous: the sidecar ignores unknown SIDECAR_* names, this test does not."""
    assert "SIDECAR_POD_TENANT_LABEL" in KNOWN_SETTINGS and "SIDECAR_POD_TENANT_LABLE" not in KNOWN_SETTINGS
    with pytest.raises(settings.ConfigError, match="needs a tenant"):
        pod_subject(settings.load(None, {"SIDECAR_AUTH_MODE": "pod", "SIDECAR_POD_SUB": "s"}))

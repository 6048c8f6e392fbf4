"""Shared by the Helm chart tests (tests/test_chart*.py): the chart, the value sets, rendering and lookups.

The chart is rendered and linted by real Helm (PyPI helm-python-sdk, Helm v4) with no cluster. A test module
gets the module-scoped `chart` fixture by importing `chart_fixture`; without helm-python-sdk and
kubernetes-validate every chart test fails with HINT (never skips).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.inject import config as injection
from sidecar.inject.patch import plan
from tests.conftest import ROOT
from tests.test_inject_webhook import apply_patch

CHART = ROOT / "charts" / "openai-policy-sidecar"
NAME = "openai-policy-sidecar"
AGENT_POD = "rel-openai-policy-sidecar-agent"  # agentDeployment's name for release "rel"
HINT = "tests/test_chart*.py need helm-python-sdk and kubernetes-validate: .venv/bin/pip install -e '.[dev]'"
try:
    import helm_python
    import kubernetes_validate
except ImportError as exc:  # fail every test with the hint (never skip)
    IMPORT_ERROR: ImportError | None = exc
else:
    IMPORT_ERROR = None
KUBE_VERSIONS = ("1.29.0", kubernetes_validate.latest_version() if IMPORT_ERROR is None else "")
CRD_KINDS = {("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate")}

SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = (
    SIGNING_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)

# --- value sets ---------------------------------------------------------------------------------------------

AGENT = {
    "enabled": True,
    "image": {"repository": "ghcr.io/acme/support-bot", "tag": "1.2.3"},
    "callerKeySecret": {"name": "support-bot-caller-key"},
    "env": [{"name": "LOG_LEVEL", "value": "debug"}],
}
# An agent with no key of its own (pod mode, the Kubernetes recipe), under its own service account.
KEYLESS_AGENT = {**AGENT, "callerKeySecret": {"name": ""}, "serviceAccountName": "support-bot"}
FULL = {
    "providerKey": {"value": "sk-provider-SECRET-123"},
    "auth": {
        "mode": "static",
        "staticKeys": {"keys": {"ck-acme": {"sub": "bot", "tenant": "acme", "groups": ["agents"]}}},
    },
    "redis": {"url": "redis://redis-master.redis.svc:6379/0"},
    "otel": {"endpoint": "http://otel-collector.observability.svc:4318", "protocol": "http/protobuf"},
    "injection": {"namespaces": ["team-a", "team-b"]},
    "networkPolicy": {"enabled": True},
    "imagePullSecrets": [{"name": "registry-creds"}],
    "agentDeployment": AGENT,
}
SERVICE = {
    "opa": {
        "bundle": {
            "source": "service",
            "service": {
                "url": "https://bundles.example.com",
                "tokenSecret": {"name": "bundle-token", "key": "token"},
                "verification": {"enabled": True, "publicKey": PUBLIC_PEM, "keyId": "release"},
            },
        }
    },
    "redis": {"existingSecret": "redis-url"},
    "webhook": {"failurePolicy": "Ignore", "podOptIn": False, "replicas": 1},
    "networkPolicy": {
        "enabled": True,
        "extraEgress": [
            {"to": [{"ipBlock": {"cidr": "203.0.113.10/32"}}], "ports": [{"protocol": "TCP", "port": 443}]}
        ],
    },
    "agentDeployment": AGENT,
}
# One value set per identity mode, each with an agentDeployment (the static twin of a webhook-injected pod).
POD = {"agentDeployment": KEYLESS_AGENT}
POD_LABEL = {
    "auth": {
        "pod": {"tenantFrom": "label", "tenantLabel": "example.com/tenant", "groups": ["agents", "batch"]},
        "staticKeys": {"existingSecret": "approver-keys"},
    },
    "admin": {"auth": "static"},
    "agentDeployment": {**KEYLESS_AGENT, "podLabels": {"example.com/tenant": "acme"}},
}
JWT_OIDC = {
    "auth": {
        "mode": "jwt",
        "jwt": {
            "issuer": "https://idp.example.com/realms/acme",
            "audience": "sidecar,sidecar-batch",
            "tenantClaim": "https://acme.com/tenant",
            "groupsClaim": "roles",
            "algorithms": ["RS256"],
            "leeway": 10,
        },
        "endUser": {"issuer": "https://login.example.com", "audience": "chat-ui", "groupsClaim": "groups"},
    },
    "admin": {"jwtAudience": "sidecar-admin"},
    "approvals": {
        "ttlSeconds": 600,
        "webhook": {
            "url": "https://hooks.example.com/approvals",
            "secret": {"existingSecret": "approval-hook", "key": "hmac"},
        },
    },
    "budget": {"reservationTtlSeconds": 1200},
    "agentDeployment": AGENT,
}
JWT_KUBERNETES = {
    "auth": {
        "mode": "jwt",
        "jwt": {"issuer": "https://kubernetes.default.svc.cluster.local", "kubernetesServiceAccount": True},
    },
    "admin": {"jwtAudience": "sidecar-admin"},
    "agentDeployment": KEYLESS_AGENT,
}
AUTH_SETS: dict[str, dict[str, Any]] = {
    "static": FULL,
    "pod": POD,
    "pod-label": POD_LABEL,
    "jwt-oidc": JWT_OIDC,
    "jwt-kubernetes": JWT_KUBERNETES,
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "full": FULL,
    "bundle-service": SERVICE,
    "cert-manager": {"webhook": {"tls": {"mode": "certManager"}}},
    "cluster-issuer": {
        "webhook": {
            "tls": {"mode": "certManager", "certManagerIssuer": {"kind": "ClusterIssuer", "name": "ca"}}
        }
    },
    "embedded-engine": {
        "opa": {"enabled": False},
        "webhook": {"enabled": False},
        "tests": {"enabled": False},
        "agentDeployment": AGENT,
    },
    **{name: values for name, values in AUTH_SETS.items() if name != "static"},
}


@pytest.fixture(scope="module", autouse=True, name="chart")
def chart_fixture() -> Iterator[Any]:
    """The loaded chart, once per test module (import it: `from tests.chart_fixtures import chart_fixture`)."""
    if IMPORT_ERROR is not None:
        pytest.fail(f"{HINT}\n({IMPORT_ERROR})")
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


# --- rendering and lookups ----------------------------------------------------------------------------------


def render(
    chart: Any, values: dict[str, Any] | None = None, namespace: str = "agents"
) -> list[dict[str, Any]]:
    out = chart.render(copy.deepcopy(values or {}), name="rel", namespace=namespace, is_install=True)
    return [
        doc
        for path, text in sorted(out.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def notes(chart: Any, values: dict[str, Any] | None = None) -> str:
    out = chart.render(copy.deepcopy(values or {}), name="rel", namespace="agents", is_install=True)
    return str(next(text for path, text in out.items() if path.endswith("NOTES.txt")))


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    specs = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"}
    specs |= {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Pod"}
    return specs


def agent_spec(chart: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of agentDeployment's Deployment, rendered with `values`."""
    return pod_specs(render(chart, values))[AGENT_POD]


def containers(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def volumes(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in spec.get("volumes", [])}


def mounts(container: dict[str, Any]) -> dict[str, str]:
    """Volume name -> mount path."""
    return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}


def mounted_by(spec: dict[str, Any], volume: str) -> set[str]:
    """The containers that mount `volume`."""
    return {name for name, container in containers(spec).items() if volume in mounts(container)}


def secret_users(spec: dict[str, Any], secret: str) -> set[str]:
    """Containers that can read `secret`: by a volume mount or by an env/envFrom reference."""
    by_volume = {name for name, v in volumes(spec).items() if v.get("secret", {}).get("secretName") == secret}
    users = set()
    for name, container in containers(spec).items():
        if set(mounts(container)) & by_volume:
            users.add(name)
        refs = [
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        ]
        refs += [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
        if secret in refs:
            users.add(name)
    return users


def injection_config(docs: list[dict[str, Any]]) -> injection.InjectionConfig:
    """The webhook's injection config, as the chart renders it into its ConfigMap."""
    configmap = one(docs, "ConfigMap", "rel-openai-policy-sidecar-injection")
    return injection.parse(yaml.safe_load(configmap["data"]["config.yaml"]))


def webhook_injected(docs: list[dict[str, Any]], pod: dict[str, Any]) -> dict[str, Any]:
    """`pod` as the webhook patches it with the chart's injection config."""
    return dict(apply_patch(pod, plan(pod, injection_config(docs)).patch))


def validate(doc: dict[str, Any]) -> None:
    """kubernetes-validate --strict against every version in KUBE_VERSIONS (CRDs have no schema there)."""
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            assert (doc["apiVersion"], doc["kind"]) in CRD_KINDS, (
                f"no schema for {doc['apiVersion']} {doc['kind']}"
            )
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']} is invalid for Kubernetes {version}: "
                f"{exc.message} at {list(exc.path)}"
            )

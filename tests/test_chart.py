"""The Helm chart, rendered and linted by real Helm (PyPI helm-python-sdk, Helm v4) with no cluster.

Every rendered manifest, for every value set in tests/chart_fixtures.py, is validated with kubernetes-validate
--strict against Kubernetes 1.29 and the newest schemas it ships. This module also checks the chart-level
objects (webhook registration and TLS, NetworkPolicy), a user's chart calling the named templates, the image
defaults and the docs. The other chart tests:
  - tests/test_chart_injection.py: the injected containers (probes, securityContext, where Secrets go) and
    the webhook's patch against the static injection;
  - tests/test_chart_auth.py: the identity modes, approvals and budget settings;
  - tests/test_chart_sidecar_env.py: each rendered sidecar env, loaded by the real sidecar;
  - tests/test_chart_values.py: values.schema.json and the render-time checks;
  - tests/test_chart_opa.py: the rendered OPA arguments and config on the real `opa`.
"""

from __future__ import annotations

import base64
import copy
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.chart_fixtures import (
    AGENT_POD,
    CHART,
    FULL,
    JWT_KUBERNETES,
    KEYLESS_AGENT,
    KUBE_VERSIONS,
    NAME,
    SERVICE,
    VALUE_SETS,
    chart_fixture,  # noqa: F401  (the `chart` fixture)
    containers,
    env,
    find,
    helm_python,
    mounts,
    notes,
    one,
    pod_specs,
    render,
    validate,
)
from tests.conftest import ROOT

# --- Helm lint and Kubernetes validation --------------------------------------------------------------------


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS, ids=str)
def test_lint_strict(values: str, kube: str) -> None:
    report = helm_python.lint(
        CHART, copy.deepcopy(VALUE_SETS[values]), strict=True, kube_version=f"v{kube}", namespace="agents"
    )
    assert report["total_charts_linted"] == 1
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], problems or report["errors"]


@pytest.mark.parametrize("values", VALUE_SETS, ids=str)
def test_every_manifest_is_valid_kubernetes(chart: Any, values: str) -> None:
    docs = render(chart, VALUE_SETS[values])
    assert docs
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize("values", VALUE_SETS, ids=str)
def test_no_container_sets_a_variable_twice(chart: Any, values: str) -> None:
    """Kubernetes keeps the last of two same-named env vars, silently: the chart never renders two."""
    for pod_name, spec in pod_specs(render(chart, VALUE_SETS[values])).items():
        for name, container in containers(spec).items():
            names = [e["name"] for e in container.get("env", [])]
            assert len(names) == len(set(names)), f"{pod_name}/{name}: {names}"


# --- the webhook --------------------------------------------------------------------------------------------


def test_webhook_objects_and_helm_generated_tls(chart: Any) -> None:
    docs = render(chart)
    mwc = one(docs, "MutatingWebhookConfiguration")
    by_namespace, by_pod_label = mwc["webhooks"]
    assert by_namespace["failurePolicy"] == "Fail" and by_namespace["sideEffects"] == "None"
    assert by_namespace["namespaceSelector"] == {"matchLabels": {f"{NAME}-injection": "enabled"}}
    assert by_namespace["objectSelector"]["matchExpressions"] == [
        {"key": f"{NAME}/inject", "operator": "NotIn", "values": ["false"]}
    ]
    assert by_pod_label["objectSelector"] == {"matchLabels": {f"{NAME}/inject": "true"}}
    assert by_namespace["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    client = by_namespace["clientConfig"]
    assert client["service"] == {
        "name": "rel-openai-policy-sidecar-webhook",
        "namespace": "agents",
        "path": "/mutate",
        "port": 443,
    }
    secret = one(docs, "Secret", "rel-openai-policy-sidecar-webhook-tls")
    assert client["caBundle"] == secret["data"]["ca.crt"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert "rel-openai-policy-sidecar-webhook.agents.svc" in sans
    serialization.load_pem_private_key(base64.b64decode(secret["data"]["tls.key"]), None)

    deployment = one(docs, "Deployment", "rel-openai-policy-sidecar-webhook")
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"][f"{NAME}/inject"] == "false", "the injector is never injected"
    webhook = template["spec"]["containers"][0]
    assert webhook["command"] == ["sidecar", "inject-webhook"]
    assert webhook["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert template["spec"]["automountServiceAccountToken"] is False
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    test_pod = one(docs, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert (
        test_pod["spec"]["containers"][0]["args"][0]
        == "--check=https://rel-openai-policy-sidecar-webhook.agents.svc:443/mutate"
    )

    ignore = one(render(chart, SERVICE), "MutatingWebhookConfiguration")["webhooks"]
    assert [w["failurePolicy"] for w in ignore] == ["Ignore"], "failurePolicy from values; no pod opt-in"


@pytest.mark.parametrize(
    ("values", "issuer"),
    [
        ("cert-manager", ("Issuer", "rel-openai-policy-sidecar-webhook-selfsigned")),
        ("cluster-issuer", ("ClusterIssuer", "ca")),
    ],
)
def test_cert_manager_tls(chart: Any, values: str, issuer: tuple[str, str]) -> None:
    docs = render(chart, VALUE_SETS[values])
    certificate = one(docs, "Certificate")
    assert certificate["spec"]["secretName"] == "rel-openai-policy-sidecar-webhook-tls"
    assert "rel-openai-policy-sidecar-webhook.agents.svc" in certificate["spec"]["dnsNames"]
    assert (certificate["spec"]["issuerRef"]["kind"], certificate["spec"]["issuerRef"]["name"]) == issuer
    assert len(find(docs, "Issuer")) == (issuer[0] == "Issuer")
    mwc = one(docs, "MutatingWebhookConfiguration")
    assert mwc["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "agents/rel-openai-policy-sidecar-webhook"
    }
    assert all("caBundle" not in w["clientConfig"] for w in mwc["webhooks"])
    assert not find(docs, "Secret"), "cert-manager writes the TLS Secret"


def test_network_policy(chart: Any) -> None:
    policies = find(render(chart, FULL), "NetworkPolicy")
    assert {p["metadata"]["namespace"] for p in policies} == {"agents", "team-a", "team-b"}
    spec = policies[0]["spec"]
    assert spec["podSelector"] == {"matchLabels": {f"{NAME}/injected": "true"}}
    assert spec["policyTypes"] == ["Egress"]
    ports = [sorted(p["port"] for p in rule["ports"]) for rule in spec["egress"]]
    assert ports == [[53, 53], [443], [6379]], "DNS, the upstream, Redis; no OTel rule without its peers"
    assert spec["egress"][1]["to"][0]["ipBlock"]["cidr"] == "0.0.0.0/0"
    service = find(render(chart, SERVICE), "NetworkPolicy")[0]["spec"]
    assert service["egress"][-1]["to"] == [{"ipBlock": {"cidr": "203.0.113.10/32"}}]
    assert not find(render(chart), "NetworkPolicy"), "an example: off unless enabled"


# --- a user's chart -----------------------------------------------------------------------------------------

USERS_DEPLOYMENT = """{{- $ctx := dict "Values" (index .Values "openai-policy-sidecar") "Release" .Release }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: my-agent
spec:
  selector:
    matchLabels: {app: my-agent}
  template:
    metadata:
      labels:
        app: my-agent
        {{- include "openai-policy-sidecar.podLabels" $ctx | nindent 8 }}
      annotations:
        {{- include "openai-policy-sidecar.podAnnotations" $ctx | nindent 8 }}
    spec:
      securityContext: {runAsNonRoot: true}
      serviceAccountName: support-bot
      initContainers:
        {{- include "openai-policy-sidecar.sidecarContainers" $ctx | nindent 8 }}
      containers:
        - name: agent
          image: my-agent:1
          env:
            {{- include "openai-policy-sidecar.agentEnv" $ctx | nindent 12 }}
          {{- with include "openai-policy-sidecar.agentVolumeMounts" $ctx | trim }}
          volumeMounts:
            {{- . | nindent 12 }}
          {{- end }}
      volumes:
        {{- include "openai-policy-sidecar.volumes" $ctx | nindent 8 }}
"""


@pytest.mark.parametrize("values", [{}, JWT_KUBERNETES], ids=["pod", "jwt-kubernetes"])
def test_a_users_chart_calls_the_named_templates(chart: Any, tmp_path: Path, values: dict[str, Any]) -> None:
    mine_values = {k: v for k, v in values.items() if k != "agentDeployment"}
    parent = tmp_path / "my-agent"
    shutil.copytree(CHART, parent / "charts" / NAME)
    (parent / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "my-agent",
                "version": "1.0.0",
                "dependencies": [{"name": NAME, "version": "0.1.0"}],
            }
        )
    )
    (parent / "values.yaml").write_text(
        yaml.safe_dump({NAME: {"webhook": {"enabled": False}, "tests": {"enabled": False}, **mine_values}})
    )
    (parent / "templates").mkdir()
    (parent / "templates" / "deployment.yaml").write_text(USERS_DEPLOYMENT)
    with helm_python.Chart.load(parent) as user_chart:
        docs = render(user_chart)
    mine = one(docs, "Deployment", "my-agent")
    validate(mine)
    mine_spec = mine["spec"]["template"]["spec"]
    ours = pod_specs(render(chart, {**mine_values, "agentDeployment": KEYLESS_AGENT}))[AGENT_POD]
    assert mine_spec["initContainers"] == ours["initContainers"]
    assert mine_spec["volumes"] == ours["volumes"]
    mine_agent, our_agent = mine_spec["containers"][0], ours["containers"][0]
    assert mounts(mine_agent) == mounts(our_agent)
    assert env(mine_agent) == {k: v for k, v in env(our_agent).items() if k != "LOG_LEVEL"}
    assert one(docs, "ConfigMap", "rel-openai-policy-sidecar-policy")["data"]["decision.rego"], (
        "the subchart's policy"
    )


# --- image, docs --------------------------------------------------------------------------------------------


def test_image_defaults_follow_the_chart_and_the_dockerfile(chart: Any) -> None:
    app_version = (
        chart.metadata["appVersion"] if "appVersion" in chart.metadata else chart.metadata["app_version"]
    )
    spec = pod_specs(render(chart, FULL))[AGENT_POD]
    assert containers(spec)[NAME]["image"] == f"openai-policy-sidecar:{app_version}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = chart.values["sidecar"]["runAsUser"]
    assert f"USER {uid}:{uid}" in dockerfile, "the chart's runAsUser is the image's user"
    assert "FROM python:${PYTHON_VERSION}-slim" in dockerfile and 'ENTRYPOINT ["sidecar"]' in dockerfile
    assert containers(spec)[NAME]["command"] == ["sidecar"] and containers(spec)[NAME]["args"] == ["serve"]


def test_notes_and_readme_give_the_label(chart: Any) -> None:
    assert f"kubectl label namespace <namespace> {NAME}-injection=enabled" in notes(chart)
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploy on Kubernetes", 1)[1].split("\n## ", 1)[0]
    assert "helm install" in section and f"{NAME}-injection=enabled" in section
    assert os.path.exists(ROOT / "Dockerfile") and "docker build" in section
    for value in ("auth.mode", "auth.jwt.kubernetesServiceAccount", "approvals.webhook", "admin.auth"):
        assert value in section, f"the README's Deploy section documents {value}"


def test_notes_follow_the_auth_mode(chart: Any) -> None:
    pod = notes(chart)
    assert "auth.mode pod" in pod and "tenant the pod's namespace" in pod
    assert "caller keys Secret" not in pod and "SIDECAR_ADMIN_AUTH=off" in pod
    static = notes(chart, FULL)
    assert "caller keys Secret" in static and "SIDECAR_ADMIN_AUTH=static" in static
    kube = notes(chart, JWT_KUBERNETES)
    assert "SIDECAR_TOKEN_FILE" in kube and "read_text" in kube  # how the agent reads its rotating token

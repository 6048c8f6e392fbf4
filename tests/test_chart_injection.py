"""What the chart injects into an agent pod: the native sidecars, their probes and securityContext, which
container may read which Secret, and that the webhook's patch gives the pod agentDeployment renders, in
every identity mode (one source of truth: the named templates in templates/_inject.tpl)."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from sidecar.inject.patch import plan
from tests.chart_fixtures import (
    AUTH_SETS,
    FULL,
    JWT_KUBERNETES,
    NAME,
    VALUE_SETS,
    agent_spec,
    chart_fixture,  # noqa: F401  (the `chart` fixture)
    containers,
    env,
    find,
    injection_config,
    mounts,
    one,
    pod_specs,
    render,
    secret_users,
    webhook_injected,
)

PROVIDER_SECRET = "rel-openai-policy-sidecar-provider-key"


def test_native_sidecars_probes_and_resources(chart: Any) -> None:
    spec = agent_spec(chart, FULL)
    assert [c["name"] for c in spec["initContainers"]] == [f"{NAME}-opa", NAME], (
        "OPA starts before the sidecar"
    )
    for container in spec["initContainers"]:
        assert container["restartPolicy"] == "Always"
        assert set(container["resources"]) == {"requests", "limits"}
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    opa, sidecar = spec["initContainers"]
    probes = {kind: sidecar[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes == {
        "startupProbe": {"path": "/healthz", "port": "sidecar-admin"},
        "readinessProbe": {"path": "/readyz", "port": "sidecar-admin"},
        "livenessProbe": {"path": "/healthz", "port": "sidecar-admin"},
    }
    assert {"name": "sidecar-admin", "containerPort": 8081} in sidecar["ports"]
    assert env(sidecar)["SIDECAR_ADMIN_HOST"] == "0.0.0.0", "kubelet probes must reach the admin port"
    assert env(sidecar)["SIDECAR_HOST"] == "127.0.0.1", "the data path stays on loopback"
    assert opa["readinessProbe"]["httpGet"] == {"path": "/health?bundles", "port": "opa-diag"}
    assert opa["startupProbe"]["httpGet"] == {"path": "/health?bundles", "port": "opa-diag"}
    assert "--addr=127.0.0.1:8181" in opa["args"] and "--diagnostic-addr=0.0.0.0:8282" in opa["args"]
    assert env(sidecar)["SIDECAR_OPA_URL"] == "http://127.0.0.1:8181"
    assert opa["image"] == "openpolicyagent/opa:1.4.2-static"
    agent = spec["containers"][0]
    assert env(agent)["OPENAI_BASE_URL"] == "http://127.0.0.1:8080/v1"
    assert env(agent)["OPENAI_API_KEY"] == {
        "secretKeyRef": {"name": "support-bot-caller-key", "key": "api-key"}
    }


@pytest.mark.parametrize("values", VALUE_SETS, ids=str)
def test_security_context_everywhere(chart: Any, values: str) -> None:
    specs = pod_specs(render(chart, VALUE_SETS[values]))
    assert specs
    for pod_name, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True
        for name, container in containers(spec).items():
            ctx = container["securityContext"]
            where = f"{pod_name}/{name}"
            assert ctx["runAsNonRoot"] is True, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["capabilities"] == {"drop": ["ALL"]}, where
            assert ctx.get("privileged", False) is False, where
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where


def _bare_agent_pod() -> dict[str, Any]:
    return {
        "metadata": {},
        "spec": {"containers": [{"name": "agent", "image": "a:1", "env": [{"name": "X", "value": "1"}]}]},
    }


@pytest.mark.parametrize("how", ["static", "webhook"])
@pytest.mark.parametrize("auth", AUTH_SETS, ids=str)
def test_secrets_are_only_in_the_sidecar(chart: Any, auth: str, how: str) -> None:
    """The provider key, caller keys, Redis URL and approval webhook key: sidecar only, in every mode."""
    values = copy.deepcopy(AUTH_SETS[auth])
    values["providerKey"] = {"value": "sk-provider-SECRET-123"}
    values["redis"] = {"existingSecret": "redis-url"}
    docs = render(chart, values)
    spec = pod_specs(docs)["rel-openai-policy-sidecar-agent"]
    if how == "webhook":  # the same agent pod, injected by the webhook from the chart's injection config
        spec = webhook_injected(docs, _bare_agent_pod())["spec"]
    secrets = [v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v]
    secrets += ["redis-url", "approval-hook"]
    for secret in secrets:
        assert secret_users(spec, secret) <= {NAME}, secret
    assert secret_users(spec, PROVIDER_SECRET) == {NAME}
    assert secret_users(spec, "redis-url") == {NAME}
    agent = spec["containers"][0]
    assert not [e for e in env(agent) if e.startswith("SIDECAR_") and e != "SIDECAR_TOKEN_FILE"]
    assert "sk-provider-SECRET-123" not in json.dumps(spec)


def test_provider_and_caller_keys_from_values(chart: Any) -> None:
    docs = render(chart, FULL)
    spec = pod_specs(docs)["rel-openai-policy-sidecar-agent"]
    assert secret_users(spec, "rel-openai-policy-sidecar-caller-keys") == {NAME}
    assert "volumeMounts" not in spec["containers"][0]
    for secret in (PROVIDER_SECRET, "rel-openai-policy-sidecar-caller-keys"):
        created = {d["metadata"]["namespace"]: d for d in find(docs, "Secret", secret)}
        assert set(created) == {"agents", "team-a", "team-b"}, secret
    provider = next(
        d for d in find(docs, "Secret", PROVIDER_SECRET) if d["metadata"]["namespace"] == "team-a"
    )
    assert base64.b64decode(provider["data"]["api-key"]).decode() == "sk-provider-SECRET-123"
    assert "sk-provider-SECRET-123" not in json.dumps(spec)


@pytest.mark.parametrize("auth", AUTH_SETS, ids=str)
def test_webhook_patch_equals_the_static_injection(chart: Any, auth: str) -> None:
    """One source of truth: the webhook's patch gives the pod agentDeployment renders, in every mode."""
    docs = render(chart, AUTH_SETS[auth])
    static = pod_specs(docs)["rel-openai-policy-sidecar-agent"]
    static_meta = one(docs, "Deployment", "rel-openai-policy-sidecar-agent")["spec"]["template"]["metadata"]
    cfg = injection_config(docs)
    injected_names = {e["name"] for e in cfg.env}
    agent = copy.deepcopy(static["containers"][0])
    # The agent as its author writes it: its own env and mounts, without what the chart injects.
    own = {e["name"] for e in AUTH_SETS[auth]["agentDeployment"].get("env", [])}
    if AUTH_SETS[auth]["agentDeployment"]["callerKeySecret"]["name"]:
        own.add("OPENAI_API_KEY")
    agent["env"] = [e for e in agent["env"] if e["name"] not in injected_names or e["name"] in own]
    injected_mounts = {m["mountPath"] for m in cfg.volume_mounts}
    agent["volumeMounts"] = [
        m for m in agent.get("volumeMounts", []) if m["mountPath"] not in injected_mounts
    ]
    if not agent["volumeMounts"]:
        del agent["volumeMounts"]
    bare = {
        "metadata": {"labels": {"app": "bot"}},
        "spec": {"containers": [agent], "securityContext": static["securityContext"]},
    }
    if static.get("serviceAccountName"):
        bare["spec"]["serviceAccountName"] = static["serviceAccountName"]
    injected = webhook_injected(docs, bare)
    assert injected["spec"]["initContainers"] == static["initContainers"]
    assert injected["spec"]["volumes"] == static["volumes"]
    assert injected["spec"].get("imagePullSecrets") == static.get("imagePullSecrets")
    if auth == "static":
        assert static["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert env(injected["spec"]["containers"][0]) == env(static["containers"][0])
    assert mounts(injected["spec"]["containers"][0]) == mounts(static["containers"][0])
    assert injected["metadata"]["labels"][f"{NAME}/injected"] == static_meta["labels"][f"{NAME}/injected"]
    assert injected["metadata"]["annotations"] == {f"{NAME}/status": "injected"} == static_meta["annotations"]
    assert plan(injected, cfg).patch == [] and plan({"spec": static}, cfg).patch == [], "idempotent"


def test_the_webhook_mounts_the_agents_token(chart: Any) -> None:
    """The Kubernetes recipe through the webhook: the token's volume, mount and env reach the agent."""
    docs = render(chart, JWT_KUBERNETES)
    pod = _bare_agent_pod()
    pod["spec"]["containers"].append({"name": "helper", "image": "h:1", "volumeMounts": [
        {"name": "own", "mountPath": f"/var/run/secrets/{NAME}/agent"}]})  # fmt: skip
    injected = webhook_injected(docs, pod)["spec"]
    agent, helper = injected["containers"]
    assert env(agent)["SIDECAR_TOKEN_FILE"] == f"/var/run/secrets/{NAME}/agent/token"
    assert f"{NAME}-agent-token" in {v["name"] for v in injected["volumes"]}
    assert mounts(agent)[f"{NAME}-agent-token"] == f"/var/run/secrets/{NAME}/agent"
    assert mounts(helper) == {"own": f"/var/run/secrets/{NAME}/agent"}  # its own mount at that path wins
    assert mounts(containers(injected)[NAME])[f"{NAME}-kube-api"] == f"/var/run/secrets/{NAME}/kube-api"

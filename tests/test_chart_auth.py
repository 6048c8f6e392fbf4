"""The chart's identity modes (auth.mode pod, static, jwt and its Kubernetes recipe), end-user tokens,
approvals, the admin API and budgets: the env, volumes and mounts each one renders, and who may read what.
tests/test_chart_sidecar_env.py loads the same renders into the real sidecar."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.chart_fixtures import (
    AGENT,
    FULL,
    JWT_KUBERNETES,
    JWT_OIDC,
    NAME,
    POD,
    POD_LABEL,
    agent_spec,
    chart_fixture,  # noqa: F401  (the `chart` fixture)
    containers,
    env,
    find,
    mounted_by,
    mounts,
    render,
    secret_users,
    volumes,
    webhook_injected,
)

POD_INFO, CALLER_KEYS = f"{NAME}-pod-info", f"{NAME}-caller-keys"
AGENT_TOKEN, KUBE_API = f"{NAME}-agent-token", f"{NAME}-kube-api"
IDENTITY_VOLUMES = {POD_INFO, CALLER_KEYS, AGENT_TOKEN, KUBE_API}


def sidecar_env(spec: dict[str, Any]) -> dict[str, Any]:
    return env(containers(spec)[NAME])


def test_pod_mode_is_the_default(chart: Any) -> None:
    spec = agent_spec(chart, POD)
    got = sidecar_env(spec)
    assert got["SIDECAR_AUTH_MODE"] == "pod"
    assert got["SIDECAR_POD_SERVICE_ACCOUNT"] == {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}
    assert got["SIDECAR_POD_TENANT"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}, (
        "one tenant per namespace: a pod's author cannot claim another"
    )
    assert not {"SIDECAR_STATIC_KEYS_FILE", "SIDECAR_OIDC_ISSUER", "SIDECAR_POD_GROUPS"} & set(got)
    assert got["SIDECAR_ADMIN_AUTH"] == "off", "no approver identity is configured"
    assert volumes(spec)[POD_INFO] == {
        "name": POD_INFO,
        "downwardAPI": {
            "defaultMode": 0o444,
            "items": [
                {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}},
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            ],
        },
    }
    assert mounted_by(spec, POD_INFO) == {NAME}
    assert mounts(containers(spec)[NAME])[POD_INFO] == got["SIDECAR_POD_INFO_DIR"]
    assert set(volumes(spec)) & IDENTITY_VOLUMES == {POD_INFO}
    agent = spec["containers"][0]
    assert env(agent)["OPENAI_API_KEY"] == "sidecar-pod-identity", "the openai SDK needs some key"
    assert "volumeMounts" not in agent
    keys = {"ck-acme": {"sub": "bot", "tenant": "acme"}}
    assert not find(render(chart, {"auth": {"staticKeys": {"keys": keys}}}), "Secret", f"rel-{CALLER_KEYS}")


def test_pod_tenant_from_a_label_and_static_approvers(chart: Any) -> None:
    spec = agent_spec(chart, POD_LABEL)
    got = sidecar_env(spec)
    assert got["SIDECAR_POD_TENANT_LABEL"] == "example.com/tenant" and "SIDECAR_POD_TENANT" not in got
    assert got["SIDECAR_POD_GROUPS"] == "agents,batch"
    assert got["SIDECAR_ADMIN_AUTH"] == "static"
    assert got["SIDECAR_STATIC_KEYS_FILE"].startswith(mounts(containers(spec)[NAME])[CALLER_KEYS] + "/")
    assert volumes(spec)[CALLER_KEYS]["secret"]["secretName"] == "approver-keys"
    assert secret_users(spec, "approver-keys") == {NAME}


def test_pod_tenant_from_a_value(chart: Any) -> None:
    values = {"auth": {"pod": {"tenantFrom": "value", "tenant": "acme"}}, "agentDeployment": AGENT}
    assert sidecar_env(agent_spec(chart, values))["SIDECAR_POD_TENANT"] == "acme"


def test_the_agents_own_key_wins_over_the_placeholder(chart: Any) -> None:
    with_secret = agent_spec(chart, {"agentDeployment": AGENT})["containers"][0]
    assert env(with_secret)["OPENAI_API_KEY"] == {
        "secretKeyRef": {"name": "support-bot-caller-key", "key": "api-key"}
    }
    literal = copy.deepcopy(POD)
    literal["agentDeployment"]["env"] = [{"name": "OPENAI_API_KEY", "value": "mine"}]
    assert env(agent_spec(chart, literal)["containers"][0])["OPENAI_API_KEY"] == "mine"
    docs = render(chart)
    pod = {
        "spec": {
            "containers": [{"name": "a", "image": "a", "env": [{"name": "OPENAI_API_KEY", "value": "k"}]}]
        }
    }
    assert env(webhook_injected(docs, pod)["spec"]["containers"][0])["OPENAI_API_KEY"] == "k"


def test_static_mode(chart: Any) -> None:
    spec = agent_spec(chart, FULL)
    got = sidecar_env(spec)
    assert got["SIDECAR_AUTH_MODE"] == "static" and got["SIDECAR_ADMIN_AUTH"] == "static"
    assert got["SIDECAR_STATIC_KEYS_FILE"] == mounts(containers(spec)[NAME])[CALLER_KEYS] + "/keys.json"
    assert set(volumes(spec)) & IDENTITY_VOLUMES == {CALLER_KEYS}
    assert not [name for name in got if name.startswith("SIDECAR_POD_")]


def test_jwt_mode_with_an_oidc_issuer_and_end_user_tokens(chart: Any) -> None:
    spec = agent_spec(chart, JWT_OIDC)
    got = sidecar_env(spec)
    identity = {k: v for k, v in got.items() if k.startswith(("SIDECAR_AUTH", "SIDECAR_JW", "SIDECAR_OIDC"))}
    identity |= {k: v for k, v in got.items() if k.endswith("_CLAIM") or k.startswith("SIDECAR_END_USER")}
    assert identity == {
        "SIDECAR_AUTH_MODE": "jwt",
        "SIDECAR_OIDC_ISSUER": "https://idp.example.com/realms/acme",
        "SIDECAR_JWT_AUDIENCE": "sidecar,sidecar-batch",
        "SIDECAR_TENANT_CLAIM": "https://acme.com/tenant",
        "SIDECAR_GROUPS_CLAIM": "roles",
        "SIDECAR_JWT_ALGORITHMS": "RS256",
        "SIDECAR_JWT_LEEWAY": "10",
        "SIDECAR_END_USER_ISSUER": "https://login.example.com",
        "SIDECAR_END_USER_AUDIENCE": "chat-ui",
        "SIDECAR_END_USER_GROUPS_CLAIM": "groups",
    }, "discovery (no SIDECAR_JWKS_URL), and no Kubernetes CA or token"
    assert got["SIDECAR_ADMIN_AUTH"] == "jwt" and got["SIDECAR_ADMIN_JWT_AUDIENCE"] == "sidecar-admin"
    assert not set(volumes(spec)) & IDENTITY_VOLUMES
    agent = spec["containers"][0]
    assert "SIDECAR_TOKEN_FILE" not in env(agent) and "volumeMounts" not in agent


def test_kubernetes_service_account_recipe(chart: Any) -> None:
    """README's recipe: the agent's projected token (its containers only), the sidecar's own API access."""
    spec = agent_spec(chart, JWT_KUBERNETES)
    got = sidecar_env(spec)
    assert got["SIDECAR_OIDC_ISSUER"] == "https://kubernetes.default.svc.cluster.local"
    assert got["SIDECAR_JWKS_URL"] == "https://kubernetes.default.svc/openid/v1/jwks"
    assert got["SIDECAR_JWT_AUDIENCE"] == NAME
    assert got["SIDECAR_TENANT_CLAIM"] == "kubernetes.io.namespace"

    token = volumes(spec)[AGENT_TOKEN]["projected"]
    assert token["sources"] == [
        {"serviceAccountToken": {"audience": NAME, "expirationSeconds": 3600, "path": "token"}}
    ]
    assert mounted_by(spec, AGENT_TOKEN) == {"agent"}, "the agent's token is the agent's alone"
    agent = spec["containers"][0]
    assert env(agent)["SIDECAR_TOKEN_FILE"] == mounts(agent)[AGENT_TOKEN] + "/token"
    assert "OPENAI_API_KEY" not in env(agent), "the agent sends its token, read from SIDECAR_TOKEN_FILE"

    api = volumes(spec)[KUBE_API]["projected"]["sources"]
    assert api[0] == {"serviceAccountToken": {"expirationSeconds": 3600, "path": "token"}}, (
        "the API server's own audience"
    )
    assert api[1]["configMap"]["name"] == "kube-root-ca.crt"
    assert mounted_by(spec, KUBE_API) == {NAME}
    where = mounts(containers(spec)[NAME])[KUBE_API]
    assert (got["SIDECAR_JWKS_CA_FILE"], got["SIDECAR_JWKS_TOKEN_FILE"]) == (
        f"{where}/ca.crt",
        f"{where}/token",
    )
    assert not set(mounts(containers(spec)[f"{NAME}-opa"])) & IDENTITY_VOLUMES


def test_kubernetes_recipe_with_own_audience_and_tenant_claim(chart: Any) -> None:
    values = copy.deepcopy(JWT_KUBERNETES)
    values["auth"]["jwt"] |= {
        "audience": "agents.example.com",
        "tenantClaim": "tenant",
        "tokenExpirationSeconds": 600,
    }
    spec = agent_spec(chart, values)
    got = sidecar_env(spec)
    assert (got["SIDECAR_JWT_AUDIENCE"], got["SIDECAR_TENANT_CLAIM"]) == ("agents.example.com", "tenant")
    source = volumes(spec)[AGENT_TOKEN]["projected"]["sources"][0]["serviceAccountToken"]
    assert (source["audience"], source["expirationSeconds"]) == ("agents.example.com", 600)


def test_approvals_admin_and_budget(chart: Any) -> None:
    spec = agent_spec(chart, JWT_OIDC)
    got = sidecar_env(spec)
    assert got["SIDECAR_APPROVAL_TTL"] == "600"
    assert got["SIDECAR_APPROVAL_WEBHOOK_URL"] == "https://hooks.example.com/approvals"
    assert got["SIDECAR_APPROVAL_WEBHOOK_TIMEOUT"] == "5"
    assert got["SIDECAR_APPROVAL_WEBHOOK_SECRET"] == {
        "secretKeyRef": {"name": "approval-hook", "key": "hmac"}
    }
    assert secret_users(spec, "approval-hook") == {NAME}
    assert got["SIDECAR_BUDGET_RESERVATION_TTL"] == "1200"

    defaults = sidecar_env(agent_spec(chart, POD))
    assert (defaults["SIDECAR_APPROVAL_TTL"], defaults["SIDECAR_BUDGET_RESERVATION_TTL"]) == ("3600", "900")
    assert not [name for name in defaults if name.startswith("SIDECAR_APPROVAL_WEBHOOK")]
    big = {
        **POD,
        "budget": {"reservationTtlSeconds": 1000000},
        "approvals": {"ttlSeconds": 1000000, "webhook": {"url": "http://hooks:8080/", "timeoutSeconds": 0.5}},
    }
    got = sidecar_env(agent_spec(chart, big))
    assert (got["SIDECAR_BUDGET_RESERVATION_TTL"], got["SIDECAR_APPROVAL_TTL"]) == ("1000000", "1000000"), (
        "whole numbers as integers, never 1e+06"
    )
    assert got["SIDECAR_APPROVAL_WEBHOOK_TIMEOUT"] == "0.5"
    assert "SIDECAR_APPROVAL_WEBHOOK_SECRET" not in got, "unsigned without a Secret"


@pytest.mark.parametrize(
    ("values", "admin"),
    [
        ({}, "off"),
        ({"auth": {"mode": "static"}}, "static"),
        ({"auth": {"jwt": {"issuer": "https://idp.example.com", "audience": "sidecar"}}}, "jwt"),
        ({"auth": {"mode": "static"}, "admin": {"auth": "off"}}, "off"),
    ],
    ids=["pod", "static", "pod-with-issuer", "explicit"],
)
def test_admin_auth_follows_the_mode(chart: Any, values: dict[str, Any], admin: str) -> None:
    """Always explicit: the sidecar's own default (static) would need a keys file pod mode does not have."""
    spec = agent_spec(chart, {**values, "agentDeployment": AGENT})
    assert sidecar_env(spec)["SIDECAR_ADMIN_AUTH"] == admin
    static_mode = values.get("auth", {}).get("mode") == "static"
    assert (CALLER_KEYS in volumes(spec)) == (static_mode or admin == "static")

"""values.yaml against values.schema.json, and the settings the templates refuse at render time.

The schema refuses unknown keys and wrong types everywhere (additionalProperties: false); combinations that
only the sidecar would notice, at its start-up or later, are refused by `helm install` instead.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chart_fixtures import (
    VALUE_SETS,
    chart_fixture,  # noqa: F401  (the `chart` fixture)
    helm_python,
)

KUBE_ISSUER = "https://kubernetes.default.svc.cluster.local"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"sidecar": {"port": "8080"}}, "/sidecar/port"),
        ({"webhook": {"replicas": 1.5}}, "/webhook/replicas"),
        ({"bogus": True}, "bogus"),
        ({"sidecar": {"portt": 8080}}, "portt"),
        ({"opa": {"bundle": {"configMap": {"name": "x"}}}}, "name"),
        ({"webhook": {"failurePolicy": "Sometimes"}}, "/webhook/failurePolicy"),
        ({"sidecar": {"failMode": "ajar"}}, "/sidecar/failMode"),
        ({"opa": {"bundle": {"source": "service"}}}, "/opa/bundle/service/url"),
        ({"opa": {"bundle": {"service": {"verification": {"enabled": True}}}}}, "publicKey"),
        ({"agentDeployment": {"enabled": True}}, "/agentDeployment/image/repository"),
        ({"redis": {"url": "http://redis:6379"}}, "/redis/url"),
        ({"injection": {"namespaces": ["Team_A"]}}, "/injection/namespaces/0"),
        # identity
        ({"auth": {"mode": "oidc"}}, "/auth/mode"),
        ({"auth": {"mod": "pod"}}, "mod"),
        ({"auth": {"pod": {"tenantFrom": "annotation"}}}, "/auth/pod/tenantFrom"),
        ({"auth": {"pod": {"tenantFrom": "value"}}}, "/auth/pod/tenant"),
        ({"auth": {"pod": {"tenantLabel": "not a label"}}}, "/auth/pod/tenantLabel"),
        ({"auth": {"pod": {"groups": ["a,b"]}}}, "/auth/pod/groups/0"),
        ({"auth": {"mode": "jwt"}}, "/auth/jwt/issuer"),
        ({"auth": {"mode": "jwt", "jwt": {"issuer": "https://idp.example.com"}}}, "/auth/jwt/audience"),
        ({"auth": {"jwt": {"issuer": "http://idp.example.com"}}}, "/auth/jwt/issuer"),
        ({"auth": {"jwt": {"algorithms": ["HS256"]}}}, "/auth/jwt/algorithms/0"),
        ({"auth": {"jwt": {"algorithms": []}}}, "/auth/jwt/algorithms"),
        ({"auth": {"jwt": {"leeway": -1}}}, "/auth/jwt/leeway"),
        ({"auth": {"jwt": {"kubernetesServiceAccount": True}}}, "/auth/mode"),
        ({"auth": {"jwt": {"tokenExpirationSeconds": 60}}}, "/auth/jwt/tokenExpirationSeconds"),
        (
            {
                "auth": {
                    "mode": "jwt",
                    "jwt": {"issuer": KUBE_ISSUER, "kubernetesServiceAccount": True, "audience": "a,b"},
                }
            },
            "/auth/jwt/audience",
        ),
        ({"auth": {"endUser": {"subject": "x"}}}, "subject"),
        # approvals, admin, budget
        ({"approvals": {"ttlSeconds": 0}}, "/approvals/ttlSeconds"),
        ({"approvals": {"webhook": {"url": "ftp://hooks"}}}, "/approvals/webhook/url"),
        ({"approvals": {"webhook": {"secret": {"name": "x"}}}}, "name"),
        ({"approvals": {"webhook": {"secret": {"existingSecret": "Bad_Name"}}}}, "existingSecret"),
        ({"admin": {"auth": "basic"}}, "/admin/auth"),
        ({"budget": {"reservationTtlSeconds": 1.5}}, "/budget/reservationTtlSeconds"),
    ],
)
def test_schema_rejects_bad_values(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError, match=message.replace("/", ".")):
        chart.validate_schema(chart.merge_values(copy.deepcopy(values)))
    with pytest.raises(helm_python.HelmError):
        chart.render(copy.deepcopy(values), name="rel", namespace="agents")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"admin": {"auth": "jwt"}}, "admin.auth=jwt needs auth.jwt.issuer"),
        (
            {"auth": {"jwt": {"issuer": "https://idp.example.com"}}},
            "admin.auth=jwt needs auth.jwt.issuer and admin.jwtAudience",
        ),
        ({"auth": {"endUser": {"audience": "chat-ui"}}}, "auth.endUser needs auth.endUser.issuer"),
        (
            {"auth": {"endUser": {"issuer": "https://login.example.com"}}},
            "set auth.endUser.audience",
        ),
        (
            {"auth": {"jwt": {"issuer": "https://idp.example.com"}}, "admin": {"auth": "off"}},
            "also verifies end-user tokens",
        ),
        (
            {
                "auth": {
                    "mode": "jwt",
                    "jwt": {"issuer": KUBE_ISSUER, "kubernetesServiceAccount": True},
                    "endUser": {"issuer": "https://login.example.com", "audience": "chat-ui"},
                }
            },
            "pod's API token",
        ),
    ],
)
def test_render_refuses_settings_the_sidecar_would_refuse(
    chart: Any, values: dict[str, Any], message: str
) -> None:
    chart.validate_schema(chart.merge_values(copy.deepcopy(values)))  # well-typed, but inconsistent
    with pytest.raises(helm_python.HelmError, match=message):
        chart.render(copy.deepcopy(values), name="rel", namespace="agents")


@pytest.mark.parametrize(
    "values",
    [
        {"auth": {"mode": "static"}, "admin": {"auth": "off"}},
        {"auth": {"mode": "pod", "pod": {"tenantFrom": "value", "tenant": "acme"}}},
        {
            "auth": {"jwt": {"issuer": "https://idp.example.com", "audience": "sidecar"}},
            "admin": {"jwtAudience": "sidecar-admin"},
        },
        {"auth": {"endUser": {"issuer": "https://login.example.com", "audience": "chat-ui"}}},
        {"approvals": {"ttlSeconds": 0.5, "webhook": {"url": "http://hooks.internal:8080/approvals"}}},
        {"global": {"imageRegistry": "r.example.com"}},
    ],
    ids=["static-admin-off", "pod-fixed-tenant", "pod-jwt-admin", "end-user-only", "approvals", "globals"],
)
def test_schema_and_templates_accept(chart: Any, values: dict[str, Any]) -> None:
    chart.validate_schema(chart.merge_values(copy.deepcopy(values)))
    assert chart.render(copy.deepcopy(values), name="rel", namespace="agents", is_install=True)


def test_every_value_is_in_the_schema(chart: Any) -> None:
    """values.yaml and values.schema.json describe the same keys (the schema refuses anything else)."""

    def paths(values: Any, schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
        schema = chart.schema["definitions"][schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema
        if isinstance(values, dict) and "properties" in schema:
            assert set(values) <= set(schema["properties"]), (
                f"{prefix}: {set(values) - set(schema['properties'])}"
            )
            assert not set(schema.get("required", [])) - set(values), f"{prefix}: required but not in values"
            for key, value in values.items():
                yield f"{prefix}.{key}"
                yield from paths(value, schema["properties"][key], f"{prefix}.{key}")

    found = set(paths(chart.values, chart.schema))
    assert len(found) > 130
    for value in (
        ".auth.pod.tenantFrom",
        ".auth.jwt.kubernetesServiceAccount",
        ".auth.endUser.audience",
        ".approvals.webhook.secret.existingSecret",
        ".admin.jwtAudience",
        ".budget.reservationTtlSeconds",
    ):
        assert value in found, value


def test_default_mode_is_pod(chart: Any) -> None:
    assert chart.values["auth"]["mode"] == "pod"
    assert VALUE_SETS["defaults"] == {}

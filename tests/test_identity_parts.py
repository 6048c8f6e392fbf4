"""Identity pieces on their own: the reusable `JwtVerifier`, claim paths, key checks, pod identity, settings.

The end-to-end checks (a real sidecar, the attack set, key refresh) are in tests/test_identity.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar import config
from sidecar.config import ConfigError
from sidecar.identity import IdentityError, JwtConfig, JwtVerifier, TokenError
from sidecar.identity.claims import claim_at
from sidecar.identity.jwks import Jwk, parse_jwks
from sidecar.identity.pod import PodIdentity, is_loopback, pod_subject, read_labels
from sidecar.pipeline.context import Subject
from tests.identity_fixtures import AUDIENCE, Idp, ec_key, pod_info, request_from, rsa_key


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    provider = await Idp([rsa_key("key-1"), ec_key("ec-1")]).start()
    yield provider
    await provider.stop()


def _verifier(idp: Idp, **env: str) -> JwtVerifier:
    settings = config.load(environ={**idp.settings(), **env})
    return JwtVerifier(JwtConfig.from_settings(settings))


async def test_verifier_returns_claims_and_reasons(idp: Idp) -> None:
    """The verifier the admin API will reuse: claims out, or a `TokenError` with a reason (no HTTP)."""
    verifier = _verifier(idp)
    claims = await verifier.verify(idp.token(sub="approver-1", groups=["ml-leads"]))
    assert claims["sub"] == "approver-1" and claims["groups"] == ["ml-leads"] and claims["aud"] == AUDIENCE
    with pytest.raises(TokenError) as caught:
        await verifier.verify(idp.token(aud="elsewhere"))
    assert (caught.value.reason, caught.value.unavailable) == ("wrong_audience", False)
    with pytest.raises(TokenError) as caught:
        await verifier.verify("not-a-token")
    assert caught.value.reason == "malformed_token"


async def test_leeway_absorbs_small_clock_skew(idp: Idp) -> None:
    now = int(time.time())
    just_expired = idp.token(exp=now - 10, iat=now - 600, nbf=now - 600)
    barely_valid = idp.token(nbf=now + 10, iat=now + 10)
    lenient = _verifier(idp)  # default leeway: 30 s
    assert (await lenient.verify(just_expired))["sub"] == "support-bot"
    assert (await lenient.verify(barely_valid))["sub"] == "support-bot"
    strict = _verifier(idp, SIDECAR_JWT_LEEWAY="0")
    for token, reason in [(just_expired, "token_expired"), (barely_valid, "token_not_yet_valid")]:
        with pytest.raises(TokenError) as caught:
            await strict.verify(token)
        assert caught.value.reason == reason


async def test_algorithm_allowlist_is_configurable(idp: Idp) -> None:
    rsa_only = _verifier(idp, SIDECAR_JWT_ALGORITHMS="RS256")
    with pytest.raises(TokenError) as caught:
        await rsa_only.verify(idp.token(ec_key("ec-1")))
    assert caught.value.reason == "alg_not_allowed"
    assert idp.jwks_fetches == 0  # refused before any key is looked up


def test_claim_paths() -> None:
    claims = {
        "tenant": "a",
        "kubernetes.io": {"namespace": "ns", "serviceaccount": {"name": "sa"}},
        "https://example.com/tenant": "b",
        "org": {"id": "c", "team.name": "d"},
    }
    assert claim_at(claims, "tenant") == "a"
    assert claim_at(claims, "kubernetes.io.namespace") == "ns"
    assert claim_at(claims, "kubernetes.io.serviceaccount.name") == "sa"
    assert claim_at(claims, "https://example.com/tenant") == "b"
    assert claim_at(claims, "org.id") == "c" and claim_at(claims, "org.team.name") == "d"
    assert claim_at(claims, "org.missing") is None and claim_at(claims, "") is None
    assert claim_at(claims, "tenant.deeper") is None


def test_keys_must_fit_the_algorithm() -> None:
    keys = parse_jwks(
        {
            "keys": [
                rsa_key("key-1").public_jwk(),
                ec_key("ec-1").public_jwk(),
                {**rsa_key("key-1").public_jwk(), "kid": "enc", "use": "enc"},  # not a signing key
                {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},  # symmetric keys are never used
                {**rsa_key("key-1").public_jwk(), "kid": "with-private", "d": "AAAA"},
            ]
        }
    )
    assert [k.kid for k in keys] == ["key-1", "ec-1", "with-private"]
    assert "d" not in keys[2].members  # private members are dropped
    rsa, ec = keys[0], keys[1]
    assert rsa.problem_with("RS256") is None and ec.problem_with("ES256") is None
    assert rsa.problem_with("ES256") and ec.problem_with("RS256") and rsa.problem_with("HS256")
    assert ec.problem_with("ES384")  # the curve must match
    assert rsa.problem_with("RS384")  # the key's own `alg` (RS256) binds it
    short = Jwk("RSA", "short", None, {"n": "AQAB" * 10, "e": "AQAB"})
    assert "2048" in (short.problem_with("RS256") or "")


async def test_pod_identity_and_peer_check(tmp_path: Path) -> None:
    explicit = pod_subject(
        config.load(
            environ={"SIDECAR_AUTH_MODE": "pod", "SIDECAR_POD_SUB": "bot", "SIDECAR_POD_TENANT": "globex"}
        )
    )
    assert explicit == Subject(True, "bot", "globex", (), "pod")
    downward_api = {
        "SIDECAR_AUTH_MODE": "pod",
        "SIDECAR_POD_INFO_DIR": str(pod_info(tmp_path)),
        "SIDECAR_POD_SERVICE_ACCOUNT": "sa",
        "SIDECAR_POD_GROUPS": "agents, ML-Leads",
    }
    assert pod_subject(config.load(environ=downward_api)) == Subject(
        True, "system:serviceaccount:agents:sa", "acme", ("agents", "ML-Leads"), "pod"
    )
    pod = PodIdentity(explicit)
    assert await pod.authenticate(request_from("127.0.0.1")) == explicit
    assert await pod.authenticate(request_from("::1")) == explicit
    with pytest.raises(IdentityError) as caught:
        await pod.authenticate(request_from("10.1.2.3"))
    assert (caught.value.status, caught.value.reason, caught.value.credential) == (
        401,
        "not_loopback",
        "peer",
    )
    with pytest.raises(ConfigError, match="tenant"):
        pod_subject(config.load(environ={"SIDECAR_AUTH_MODE": "pod", "SIDECAR_POD_SUB": "bot"}))
    with pytest.raises(ConfigError, match="SIDECAR_POD_SUB"):
        pod_subject(config.load(environ={"SIDECAR_AUTH_MODE": "pod", "SIDECAR_POD_TENANT": "t"}))


def test_loopback_and_labels(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.9.9.9") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not any(is_loopback(a) for a in ["10.0.0.1", "::ffff:10.0.0.1", "", None, "localhost", "fe80::1"])
    labels = tmp_path / "labels"
    labels.write_text('app="x"\nsidecar.io/tenant="acme-eu"\nnoise\n')
    assert read_labels(labels) == {"app": "x", "sidecar.io/tenant": "acme-eu"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SIDECAR_AUTH_MODE": "jwt"}, "SIDECAR_OIDC_ISSUER"),
        ({"SIDECAR_AUTH_MODE": "jwt", "SIDECAR_OIDC_ISSUER": "https://idp"}, "SIDECAR_JWT_AUDIENCE"),
        ({"SIDECAR_JWT_ALGORITHMS": "RS256,none", "SIDECAR_STATIC_KEYS_FILE": "k"}, "SIDECAR_JWT_ALGORITHMS"),
        ({"SIDECAR_JWT_ALGORITHMS": "HS256", "SIDECAR_STATIC_KEYS_FILE": "k"}, "SIDECAR_JWT_ALGORITHMS"),
    ],
)
def test_identity_settings_are_checked(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(environ=env)


def test_identity_defaults() -> None:
    s = config.load(environ={"SIDECAR_STATIC_KEYS_FILE": "k", "SIDECAR_JWT_ALGORITHMS": "rs256,ES384"})
    assert s.jwt_algorithms == ("rs256", "es384")  # case-insensitive; the verifier upper-cases them
    d = config.Settings()
    assert (d.jwt_algorithms, d.jwt_leeway, d.groups_claim, d.tenant_claim) == (
        ("RS256", "ES256"),
        30.0,
        "groups",
        "tenant",
    )
    assert (d.jwks_min_refresh_interval, d.jwks_max_age, d.jwks_timeout) == (30.0, 300.0, 5.0)
    assert d.pod_tenant_label == "tenant" and d.end_user_issuer == "" and d.jwks_url == ""


def test_another_issuer_never_inherits_the_callers_key_fetch_credentials() -> None:
    settings = config.load(
        environ={
            "SIDECAR_AUTH_MODE": "jwt",
            "SIDECAR_OIDC_ISSUER": "https://kubernetes.default.svc",
            "SIDECAR_JWT_AUDIENCE": "sidecar",
            "SIDECAR_JWKS_URL": "https://kubernetes.default.svc/openid/v1/jwks",
            "SIDECAR_JWKS_CA_FILE": "/var/run/ca.crt",
            "SIDECAR_JWKS_TOKEN_FILE": "/var/run/token",
        }
    )
    caller = JwtConfig.from_settings(settings).source
    assert (caller.jwks_url, caller.ca_file, caller.token_file) == (
        "https://kubernetes.default.svc/openid/v1/jwks", "/var/run/ca.crt", "/var/run/token"
    )  # fmt: skip
    user = JwtConfig.from_settings(settings, issuer="https://login.example.com", audience="app").source
    assert (user.jwks_url, user.ca_file, user.token_file) == ("", "", "")  # its own discovery, no pod token

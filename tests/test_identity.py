"""Identity: JWT callers (OIDC discovery, JWKS refresh, the usual forgeries), pod mode, end-user tokens.

Tokens are minted here (tests.identity_fixtures) and verified by a real sidecar against a JWKS served by a
loopback OpenID provider; each refusal must be a 401 with a reason in the audit's end record. The pieces
on their own (the verifier, claim paths, key checks, pod identity, settings) are in test_identity_parts.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import ACME_KEY, PROVIDER_KEY, MakeSidecar, RunningSidecar, Upstream, free_port
from tests.identity_fixtures import (
    AUDIENCE,
    Idp,
    ec_key,
    hs256_with_public_key,
    pod_info,
    rsa_key,
    sign,
    tampered,
    unsigned,
)


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    provider = await Idp([rsa_key("key-1"), ec_key("ec-1")]).start()
    yield provider
    await provider.stop()


async def _call(sc: RunningSidecar, token: str | None, **headers: str) -> tuple[int, dict[str, Any]]:
    """POST /v1/responses with `token` as the API key; (status, body)."""
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as s,
        s.post(sc.url + "/responses", json={"model": "gpt-4o", "input": "hi"}, headers=headers) as r,
    ):
        return r.status, await r.json()


def _last_end(sc: RunningSidecar) -> dict[str, Any]:
    return [r for r in sc.audit() if r["phase"] == "end"][-1]


# --- jwt mode: a valid token ---------------------------------------------------------------------------


async def test_valid_jwt_reaches_upstream(make_sidecar: MakeSidecar, upstream: Upstream, idp: Idp) -> None:
    sc = await make_sidecar(**idp.settings())
    await upstream.clear()
    token = idp.token()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=token, max_retries=0)
    answer = await client.responses.create(model="gpt-4o", input="hello")
    assert answer.output_text
    seen = await upstream.requests()
    assert len(seen) == 1 and token not in json.dumps(seen) and f"Bearer {PROVIDER_KEY}" in json.dumps(seen)
    end = _last_end(sc)
    assert end["subject"] == {"sub": "support-bot", "tenant": "acme"} and end["outcome"] == "forwarded"
    assert token not in sc.audit_path.read_text()
    assert (idp.discovery_fetches, idp.jwks_fetches) == (1, 1)
    await client.models.list()  # the cached keys serve the next call
    assert (idp.discovery_fetches, idp.jwks_fetches) == (1, 1)


async def test_es256_token_passes(make_sidecar: MakeSidecar, idp: Idp) -> None:
    sc = await make_sidecar(**idp.settings())
    status, body = await _call(sc, idp.token(ec_key("ec-1"), sub="ec-bot"))
    assert status == 200, body
    assert _last_end(sc)["subject"]["sub"] == "ec-bot"


async def test_kubernetes_service_account_token(make_sidecar: MakeSidecar, idp: Idp) -> None:
    """A projected service-account token as the API server issues it: nested claims, `aud` a list."""
    sc = await make_sidecar(
        **idp.settings(SIDECAR_JWKS_URL=idp.jwks_url, SIDECAR_TENANT_CLAIM="kubernetes.io.namespace")
    )
    claims = idp.claims(
        sub="system:serviceaccount:acme:support-bot",
        aud=["https://kubernetes.default.svc", AUDIENCE],
        tenant=None,
        groups=None,
        **{
            "kubernetes.io": {
                "namespace": "acme",
                "serviceaccount": {"name": "support-bot", "uid": "7f3c"},
                "pod": {"name": "support-bot-5d9f", "uid": "a1b2"},
            }
        },
    )
    status, body = await _call(sc, sign(rsa_key("key-1"), claims))
    assert status == 200, body
    assert _last_end(sc)["subject"] == {"sub": "system:serviceaccount:acme:support-bot", "tenant": "acme"}
    assert idp.discovery_fetches == 0  # SIDECAR_JWKS_URL skips discovery


# --- jwt mode: forgeries and bad claims ------------------------------------------------------------------


def now() -> int:
    return int(time.time())


ATTACKS = {
    "alg_none": (lambda idp: unsigned(idp.claims(), "key-1"), "alg_not_allowed"),
    "hs256_with_rsa_public_key": (
        lambda idp: hs256_with_public_key(rsa_key("key-1"), idp.claims()),
        "alg_not_allowed",
    ),
    "expired": (lambda idp: idp.token(exp=now() - 120, iat=now() - 900, nbf=now() - 900), "token_expired"),
    "not_yet_valid": (lambda idp: idp.token(nbf=now() + 600, exp=now() + 1200), "token_not_yet_valid"),
    "wrong_iss": (lambda idp: idp.token(iss="https://evil.example.com"), "wrong_issuer"),
    "wrong_aud": (lambda idp: idp.token(aud="some-other-service"), "wrong_audience"),
    "tampered_payload": (lambda idp: tampered(idp.token(), tenant="globex"), "bad_signature"),
    "missing_tenant": (lambda idp: idp.token(tenant=None), "missing_tenant"),
    "missing_exp": (lambda idp: idp.token(exp=None), "missing_claim"),
    "rsa_alg_on_ec_key": (lambda idp: sign(rsa_key("key-1"), idp.claims(), kid="ec-1"), "key_mismatch"),
    "not_a_jwt": (lambda idp: "ck-acme-agent-key", "malformed_token"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_jwt_attacks_are_refused(
    make_sidecar: MakeSidecar, upstream: Upstream, idp: Idp, attack: str
) -> None:
    mint, reason = ATTACKS[attack]
    sc = await make_sidecar(**idp.settings())
    await upstream.clear()
    token = mint(idp)
    status, body = await _call(sc, token)
    assert status == 401 and body["error"]["code"] == "unauthenticated", body
    assert _last_end(sc)["error"] == {
        "status": 401,
        "code": "unauthenticated",
        "reason": reason,
        "credential": "api_key",
    }
    assert _last_end(sc)["subject"] == {"sub": None, "tenant": None}
    assert await upstream.requests() == []
    assert token not in sc.audit_path.read_text()


async def test_openai_client_gets_authentication_error(make_sidecar: MakeSidecar, idp: Idp) -> None:
    sc = await make_sidecar(**idp.settings())
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=idp.token(aud="elsewhere"), max_retries=2)
    with pytest.raises(openai.AuthenticationError) as caught:
        await client.responses.create(model="gpt-4o", input="hi")
    assert caught.value.code == "unauthenticated"
    assert 'error="invalid_token"' in caught.value.response.headers["www-authenticate"]
    status, body = await _call(sc, None)
    assert status == 401 and _last_end(sc)["error"]["reason"] == "missing_credential", body


# --- jwt mode: the key set ---------------------------------------------------------------------------


async def test_unknown_kid_refreshes_once_then_rate_limits(make_sidecar: MakeSidecar, idp: Idp) -> None:
    sc = await make_sidecar(**idp.settings(SIDECAR_JWKS_MIN_REFRESH_INTERVAL="1.5"))
    assert (await _call(sc, idp.token()))[0] == 200
    assert idp.jwks_fetches == 1
    await asyncio.sleep(1.6)  # past the rate-limit window of the first fetch
    stranger = rsa_key("stranger")  # signs with a kid the issuer never published
    status, _ = await _call(sc, idp.token(stranger))
    assert status == 401 and _last_end(sc)["error"]["reason"] == "unknown_kid"
    assert idp.jwks_fetches == 2  # exactly one refresh
    status, _ = await _call(sc, sign(stranger, idp.claims(), kid="another-unknown"))
    assert status == 401 and _last_end(sc)["error"]["reason"] == "unknown_kid"
    assert idp.jwks_fetches == 2  # within the window: no second refresh
    assert (await _call(sc, idp.token()))[0] == 200  # known keys are unaffected


async def test_concurrent_unknown_kids_share_one_fetch(make_sidecar: MakeSidecar, idp: Idp) -> None:
    sc = await make_sidecar(**idp.settings(SIDECAR_JWKS_MIN_REFRESH_INTERVAL="0"))
    assert (await _call(sc, idp.token()))[0] == 200
    idp.delay = 0.3  # the fetch is slow, so all misses arrive while it is in flight
    stranger = rsa_key("stranger")
    tokens = [sign(stranger, idp.claims(), kid=f"unknown-{i}") for i in range(8)]
    results = await asyncio.gather(*(_call(sc, t) for t in tokens))
    assert [status for status, _ in results] == [401] * 8
    assert idp.jwks_fetches == 2


async def test_rotated_key_is_picked_up(make_sidecar: MakeSidecar, idp: Idp) -> None:
    sc = await make_sidecar(**idp.settings(SIDECAR_JWKS_MIN_REFRESH_INTERVAL="0.2"))
    assert (await _call(sc, idp.token(rsa_key("key-1"))))[0] == 200
    idp.keys = [rsa_key("key-2")]  # the issuer rotates
    await asyncio.sleep(0.3)
    status, body = await _call(sc, idp.token(rsa_key("key-2"), sub="rotated-bot"))
    assert status == 200, body
    assert idp.jwks_fetches == 2 and _last_end(sc)["subject"]["sub"] == "rotated-bot"


async def test_unreachable_jwks_is_503(make_sidecar: MakeSidecar, idp: Idp) -> None:
    dead = f"http://127.0.0.1:{free_port()}/jwks"
    sc = await make_sidecar(**idp.settings(SIDECAR_JWKS_URL=dead, SIDECAR_JWKS_TIMEOUT="2"))
    status, body = await _call(sc, idp.token())
    assert status == 503 and body["error"]["code"] == "identity_unavailable", body
    assert _last_end(sc)["error"] == {
        "status": 503,
        "code": "identity_unavailable",
        "reason": "jwks_unavailable",
        "credential": "api_key",
    }


async def test_cached_keys_outlive_an_idp_outage(make_sidecar: MakeSidecar, idp: Idp) -> None:
    # Max age 0: every call tries to refetch; rate limit 0: nothing holds the fetches back.
    sc = await make_sidecar(**idp.settings(SIDECAR_JWKS_MAX_AGE="0", SIDECAR_JWKS_MIN_REFRESH_INTERVAL="0"))
    assert (await _call(sc, idp.token()))[0] == 200
    idp.failing = True
    status, body = await _call(sc, idp.token())
    assert status == 200, body  # the cached key still verifies
    status, body = await _call(sc, idp.token(rsa_key("key-2")))
    assert status == 503 and _last_end(sc)["error"]["reason"] == "jwks_unavailable"


# --- pod mode -------------------------------------------------------------------------------------------


async def test_pod_mode_trusts_loopback_callers(
    make_sidecar: MakeSidecar, upstream: Upstream, tmp_path: Path
) -> None:
    sc = await make_sidecar(
        SIDECAR_AUTH_MODE="pod",
        SIDECAR_POD_INFO_DIR=str(pod_info(tmp_path)),
        SIDECAR_POD_SERVICE_ACCOUNT="support-bot",
        SIDECAR_POD_GROUPS="agents,ML-Leads",
        SIDECAR_PII_MODE="off",
    )
    await upstream.clear()
    client = openai.AsyncOpenAI(base_url=sc.url, api_key="anything", max_retries=0)
    await client.responses.create(model="gpt-4o", input="hello")
    assert len(await upstream.requests()) == 1
    assert _last_end(sc)["subject"] == {"sub": "system:serviceaccount:agents:support-bot", "tenant": "acme"}


# --- end-user tokens -------------------------------------------------------------------------------------


async def test_end_user_token_becomes_subject_user(
    make_sidecar: MakeSidecar, upstream: Upstream, idp: Idp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A static-key agent calls for an end user; the policy sees who (and the shipped policy restricts it)."""
    sc = await make_sidecar(
        SIDECAR_OIDC_ISSUER=idp.issuer, SIDECAR_JWT_AUDIENCE=AUDIENCE, SIDECAR_PII_MODE="off"
    )
    decider = sc.sidecar.proxy.decider
    inputs: list[dict[str, Any]] = []
    decide = decider.decide

    async def recording(call: Any, doc: Any) -> Any:
        inputs.append(json.loads(json.dumps(doc)))
        return await decide(call, doc)

    monkeypatch.setattr(decider, "decide", recording)
    await upstream.clear()
    user_token = idp.token(sub="user-123", email="jane@example.com", groups=["support"], tenant=None)
    client = openai.AsyncOpenAI(
        base_url=sc.url, api_key=ACME_KEY, max_retries=0, default_headers={"X-End-User-Token": user_token}
    )
    await client.responses.create(model="gpt-4-turbo", input="hi")  # acme: user calls may use gpt-4-turbo
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await client.responses.create(model="gpt-4o", input="hi")  # ... and nothing else
    assert "user-initiated" in caught.value.message
    user = {"sub": "user-123", "email": "jane@example.com", "groups": ["support"]}
    assert [doc["subject"]["user"] for doc in inputs] == [user, user]
    assert inputs[0]["subject"]["sub"] == "system:serviceaccount:agents:support-bot"
    agent = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    await agent.responses.create(model="gpt-4o", input="hi")  # the agent's own call: no user, gpt-4o allowed
    assert inputs[-1]["subject"]["user"] is None
    seen = json.dumps(await upstream.requests())
    assert user_token not in seen and "x-end-user-token" not in seen.lower()
    assert user_token not in sc.audit_path.read_text()


async def test_invalid_end_user_token_is_401(make_sidecar: MakeSidecar, upstream: Upstream, idp: Idp) -> None:
    sc = await make_sidecar(
        SIDECAR_OIDC_ISSUER=idp.issuer,
        SIDECAR_JWT_AUDIENCE=AUDIENCE,
        SIDECAR_END_USER_AUDIENCE="chat-frontend",
        SIDECAR_PII_MODE="off",
    )
    await upstream.clear()
    cases = [
        (idp.token(aud="chat-frontend", exp=now() - 100, iat=now() - 900, nbf=now() - 900), "token_expired"),
        (idp.token(), "wrong_audience"),  # a caller-audience token is not an end-user token here
        (tampered(idp.token(aud="chat-frontend"), sub="admin"), "bad_signature"),
    ]
    for token, reason in cases:
        status, body = await _call(sc, ACME_KEY, **{"X-End-User-Token": token})
        assert status == 401 and body["error"]["code"] == "unauthenticated", body
        assert _last_end(sc)["error"]["reason"] == reason
        assert _last_end(sc)["error"]["credential"] == "end_user_token"
    ok = idp.token(aud="chat-frontend", sub="user-1", tenant=None)
    status, _ = await _call(sc, ACME_KEY, **{"X-End-User-Token": ok})
    assert status == 403  # verified; acme's user calls may not use gpt-4o
    assert await upstream.requests() == []
    assert all(token not in sc.audit_path.read_text() for token, _ in cases)


async def test_end_user_token_without_an_issuer_is_refused(make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar(SIDECAR_PII_MODE="off")
    client = openai.AsyncOpenAI(
        base_url=sc.url, api_key=ACME_KEY, max_retries=0, default_headers={"X-End-User-Token": "x.y.z"}
    )
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()
    assert _last_end(sc)["error"]["reason"] == "end_user_not_configured"

"""`SIDECAR_AUTH_MODE=jwt`: the caller's API key is a JWT from a trusted OIDC issuer.

`JwtVerifier` is the reusable part (`await verifier.verify(token) -> claims`): the caller mode here, the
end-user token, and the admin API's approvers all use it with the same settings. The order of checks is
the point: the header's `alg` must be on the allowlist and the key's type must fit it *before* jose is
called, so a token never chooses how a key is used (`none`, or HS256 keyed with the RSA public key, are
refused up front). Headers that point at keys (`jku`, `x5u`, `jwk`) are ignored: keys come only from the
configured issuer's JWKS.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from jose import jws
from jose.exceptions import JOSEError

from sidecar.config import ConfigError, Settings
from sidecar.identity.base import (
    ALG_NOT_ALLOWED,
    BAD_SIGNATURE,
    KEY_MISMATCH,
    MALFORMED_TOKEN,
    MISSING_CREDENTIAL,
    TokenError,
    bearer_token,
    from_token_error,
    refused,
)
from sidecar.identity.claims import check_registered, subject_from_claims
from sidecar.identity.jwks import Jwk, JwksCache, JwksSource
from sidecar.pipeline.context import Subject


def _split(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


@dataclass(frozen=True, slots=True)
class JwtConfig:
    """What a token must satisfy: issuer and keys (`source`), audience, algorithms, clock leeway."""

    source: JwksSource
    audiences: tuple[str, ...]
    algorithms: frozenset[str] = frozenset({"RS256", "ES256"})
    leeway: float = 30.0

    @property
    def issuer(self) -> str:
        return self.source.issuer

    @classmethod
    def from_settings(
        cls, settings: Settings, *, issuer: str = "", jwks_url: str = "", audience: str = ""
    ) -> JwtConfig:
        """The caller-token settings; `issuer`, `jwks_url` and `audience` override them (end-user tokens)."""
        issuer = issuer or settings.oidc_issuer
        audiences = _split(audience or settings.jwt_audience)
        if not issuer or not audiences:
            raise ConfigError("JWT verification needs SIDECAR_OIDC_ISSUER and SIDECAR_JWT_AUDIENCE")
        if settings.jwt_leeway < 0 or settings.jwks_min_refresh_interval < 0:
            raise ConfigError("SIDECAR_JWT_LEEWAY and SIDECAR_JWKS_MIN_REFRESH_INTERVAL cannot be negative")
        # The caller issuer's JWKS URL, CA and bearer token belong to that issuer only: another issuer (an
        # end-user IdP) is found by its own discovery, and is never sent the pod's API token.
        own = issuer == settings.oidc_issuer
        source = JwksSource(
            issuer=issuer,
            jwks_url=jwks_url or (settings.jwks_url if own else ""),
            timeout=settings.jwks_timeout,
            min_refresh_interval=settings.jwks_min_refresh_interval,
            max_age=settings.jwks_max_age,
            ca_file=settings.jwks_ca_file if own else "",
            token_file=settings.jwks_token_file if own else "",
        )
        algorithms = frozenset(a.upper() for a in settings.jwt_algorithms)
        return cls(source, audiences, algorithms, settings.jwt_leeway)


class JwtVerifier:
    """Verifies a JWT's signature against the issuer's JWKS and checks its registered claims."""

    def __init__(self, config: JwtConfig, jwks: JwksCache | None = None) -> None:
        self.config = config
        self.jwks = jwks if jwks is not None else JwksCache(config.source)

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims once it is verified; `TokenError` (with a reason code) otherwise."""
        header = _header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.config.algorithms:
            allowed = ", ".join(sorted(self.config.algorithms))
            raise TokenError(ALG_NOT_ALLOWED, f"The token's algorithm {alg!r} is not allowed ({allowed}).")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError(MALFORMED_TOKEN, "The token's 'kid' header is not a string.")
        candidates = await self.jwks.keys_for(kid)
        usable = [key for key in candidates if key.problem_with(alg) is None]
        if not usable:
            problem = candidates[0].problem_with(alg) if kid is not None else f"no key fits {alg}"
            raise TokenError(KEY_MISMATCH, f"The token's key cannot verify it: {problem}.")
        payload = _verified_payload(token, alg, usable)
        try:
            claims = json.loads(payload)
        except ValueError:
            raise TokenError(MALFORMED_TOKEN, "The token's payload is not JSON.") from None
        if not isinstance(claims, dict):
            raise TokenError(MALFORMED_TOKEN, "The token's payload is not a JSON object.")
        check_registered(claims, self.config.issuer, self.config.audiences, self.config.leeway, time.time())
        return claims


def _header(token: str) -> dict[str, Any]:
    if token.count(".") != 2:  # a JWE (5 parts) or not a JWT at all
        raise TokenError(MALFORMED_TOKEN, "The credential is not a signed JWT.")
    try:
        header = jws.get_unverified_header(token)
    except JOSEError:
        raise TokenError(MALFORMED_TOKEN, "The token's header cannot be read.") from None
    if not isinstance(header, dict):
        raise TokenError(MALFORMED_TOKEN, "The token's header is not a JSON object.")
    if header.get("crit"):
        # RFC 7515 §4.1.11: extensions the recipient does not understand must make the token invalid.
        raise TokenError(MALFORMED_TOKEN, "The token requires header extensions the sidecar does not know.")
    return header


def _verified_payload(token: str, alg: str, keys: list[Jwk]) -> bytes:
    # Several keys only when the token names no kid: any of the issuer's fitting keys may have signed it.
    for key in keys:
        try:
            payload: bytes = jws.verify(token, key.jose_key(alg), algorithms=[alg])
        except JOSEError:
            continue
        return payload
    raise TokenError(BAD_SIGNATURE, "The token's signature does not verify.")


class JwtCallers:
    """The caller mode: `Authorization: Bearer <JWT>` → `Subject` (sub, tenant claim, groups claim, iss)."""

    def __init__(self, verifier: JwtVerifier, tenant_claim: str, groups_claim: str) -> None:
        self.verifier = verifier
        self.tenant_claim = tenant_claim
        self.groups_claim = groups_claim

    async def authenticate(self, request: web.Request) -> Subject:
        token = bearer_token(request)
        if token is None:
            raise refused(MISSING_CREDENTIAL, "Missing caller token: send the JWT as the API key (Bearer).")
        try:
            claims = await self.verifier.verify(token)
            return subject_from_claims(claims, self.tenant_claim, self.groups_claim)
        except TokenError as err:
            raise from_token_error(err, "api_key") from None

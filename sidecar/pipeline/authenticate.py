"""Stage 1: who is calling.

The mode (`SIDECAR_AUTH_MODE`: static, jwt or pod; sidecar.identity) answers which `Subject` made the
request, or raises 401. Then an `X-End-User-Token`, when one came with the call, is verified and becomes
`subject.user`. Credentials never leave this stage: they are not forwarded, logged, audited or shown to
the policy; a refusal carries only a reason code (see sidecar.identity.base).
"""

from __future__ import annotations

import dataclasses

from aiohttp import web

from sidecar.config import ConfigError, Settings
from sidecar.identity.base import Authenticator, bearer_token
from sidecar.identity.end_user import HEADER, EndUserTokens, end_user_config
from sidecar.identity.jwks import JwksCache, JwksSource
from sidecar.identity.jwt import JwtCallers, JwtConfig, JwtVerifier
from sidecar.identity.pod import PodIdentity, pod_subject
from sidecar.identity.static import StaticKeys
from sidecar.pipeline.context import Subject

__all__ = ["Authenticate", "Authenticator", "StaticKeys", "bearer_token", "build_authenticator"]


class Authenticate:
    """The caller's mode, then the end user's token if the call carries one."""

    def __init__(self, mode: Authenticator, end_user: EndUserTokens) -> None:
        self.mode = mode
        self.end_user = end_user

    async def authenticate(self, request: web.Request) -> Subject:
        subject = await self.mode.authenticate(request)
        values = request.headers.getall(HEADER, [])
        if not values:
            return subject
        return dataclasses.replace(subject, user=await self.end_user.user(values))


def build_authenticator(settings: Settings) -> Authenticate:
    # Verifiers that trust the same issuer and keys share one JWKS cache (one fetch, one rate limit).
    caches: dict[JwksSource, JwksCache] = {}

    def verifier(config: JwtConfig) -> JwtVerifier:
        if config.source not in caches:
            caches[config.source] = JwksCache(config.source)
        return JwtVerifier(config, caches[config.source])

    mode: Authenticator
    if settings.auth_mode == "static":
        mode = StaticKeys(settings.static_keys_file)
    elif settings.auth_mode == "jwt":
        caller = verifier(JwtConfig.from_settings(settings))
        mode = JwtCallers(caller, settings.tenant_claim, settings.groups_claim)
    elif settings.auth_mode == "pod":
        mode = PodIdentity(pod_subject(settings))
    else:
        raise ConfigError(f"SIDECAR_AUTH_MODE must be static, jwt or pod, not {settings.auth_mode!r}")
    user_config = end_user_config(settings)
    end_user = EndUserTokens(
        verifier(user_config) if user_config is not None else None,
        settings.end_user_groups_claim or settings.groups_claim,
    )
    return Authenticate(mode, end_user)

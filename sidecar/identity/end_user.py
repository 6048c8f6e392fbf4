"""The end user behind a call: `X-End-User-Token`, a JWT verified like a caller token.

It works with every caller mode. A verified token becomes `input.subject.user` = {"sub", "email", "groups"},
which lets a policy tell user-initiated chats from an agent's own calls. A token that does not verify is a
401: dropping it silently would turn a user's call into an agent's call, which may be allowed more. The
header is never forwarded upstream (sidecar.pipeline.forward strips it), shown to the policy, or logged.
"""

from __future__ import annotations

from sidecar.config import ConfigError, Settings
from sidecar.documents import UserDoc
from sidecar.identity.base import (
    END_USER_NOT_CONFIGURED,
    MALFORMED_TOKEN,
    TokenError,
    from_token_error,
    refused,
)
from sidecar.identity.claims import user_from_claims
from sidecar.identity.jwt import JwtConfig, JwtVerifier

HEADER = "X-End-User-Token"


def end_user_config(settings: Settings) -> JwtConfig | None:
    """Verification settings for end-user tokens: SIDECAR_END_USER_* where set, else the caller's JWT ones.

    None when no issuer is configured at all: end-user tokens are then refused, not ignored.
    """
    issuer = settings.end_user_issuer or settings.oidc_issuer
    if not issuer:
        if settings.end_user_audience or settings.end_user_jwks_url:
            raise ConfigError("SIDECAR_END_USER_AUDIENCE / _JWKS_URL need SIDECAR_END_USER_ISSUER")
        return None
    # Another issuer has its own keys: the caller's SIDECAR_JWKS_URL does not apply to it.
    other_issuer = bool(settings.end_user_issuer) and settings.end_user_issuer != settings.oidc_issuer
    jwks_url = settings.end_user_jwks_url or ("" if other_issuer else settings.jwks_url)
    if not (settings.end_user_audience or settings.jwt_audience):
        raise ConfigError("End-user tokens need SIDECAR_END_USER_AUDIENCE or SIDECAR_JWT_AUDIENCE")
    return JwtConfig.from_settings(
        settings, issuer=issuer, jwks_url=jwks_url, audience=settings.end_user_audience
    )


class EndUserTokens:
    """`X-End-User-Token` → the `subject.user` document."""

    def __init__(self, verifier: JwtVerifier | None, groups_claim: str) -> None:
        self.verifier = verifier
        self.groups_claim = groups_claim

    async def user(self, values: list[str]) -> UserDoc:
        """The user behind the header's value(s); one token, verified, or a 401."""
        if len(values) != 1 or not values[0].strip():
            raise refused(MALFORMED_TOKEN, f"Send exactly one non-empty {HEADER}.", "end_user_token")
        if self.verifier is None:
            raise refused(
                END_USER_NOT_CONFIGURED,
                f"{HEADER} is not accepted: no issuer is configured for end-user tokens.",
                "end_user_token",
            )
        token = values[0].strip()
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        try:
            return user_from_claims(await self.verifier.verify(token), self.groups_claim)
        except TokenError as err:
            raise from_token_error(err, "end_user_token") from None

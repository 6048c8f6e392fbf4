"""What every identity mode shares: the `Authenticator` interface, the bearer credential, and errors.

Every refusal carries a machine-readable `reason` (and which `credential` was refused) so the audit's end
record can say why a call was turned away without ever holding the credential itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from aiohttp import web

from sidecar.errors import SidecarError
from sidecar.pipeline.context import Subject

# Which credential a refusal is about: the caller's API key (a static key or a JWT), the end user's token
# (X-End-User-Token), or the network peer itself (pod mode).
Credential = Literal["api_key", "end_user_token", "peer"]

# Reasons for a 401 (stable strings: audit consumers match on them).
MISSING_CREDENTIAL = "missing_credential"
UNKNOWN_CREDENTIAL = "unknown_credential"  # static mode: a key that is not in the keys file
MALFORMED_TOKEN = "malformed_token"
ALG_NOT_ALLOWED = "alg_not_allowed"
KEY_MISMATCH = "key_mismatch"
UNKNOWN_KID = "unknown_kid"
BAD_SIGNATURE = "bad_signature"
TOKEN_EXPIRED = "token_expired"
TOKEN_NOT_YET_VALID = "token_not_yet_valid"
WRONG_ISSUER = "wrong_issuer"
WRONG_AUDIENCE = "wrong_audience"
MISSING_CLAIM = "missing_claim"
MISSING_TENANT = "missing_tenant"
INVALID_CLAIM = "invalid_claim"
NOT_LOOPBACK = "not_loopback"
END_USER_NOT_CONFIGURED = "end_user_not_configured"
# Reason for a 503: the keys to verify a token with cannot be fetched and none cached matches.
JWKS_UNAVAILABLE = "jwks_unavailable"


class Authenticator(Protocol):
    """One identity mode: the `Subject` behind a request, or an `IdentityError`."""

    async def authenticate(self, request: web.Request) -> Subject: ...


@dataclass(slots=True)
class IdentityError(SidecarError):
    """A refused credential: 401 `unauthenticated`; 503 `identity_unavailable` when keys are unreachable."""

    reason: str = ""
    credential: Credential = "api_key"


class TokenError(Exception):
    """A JWT did not verify. Independent of HTTP, so `JwtVerifier` can serve other callers (the admin API)."""

    def __init__(self, reason: str, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.unavailable = unavailable  # True: the keys could not be fetched (503), not a bad token (401)


def refused(reason: str, message: str, credential: Credential = "api_key") -> IdentityError:
    # RFC 6750 §3: a presented but unusable token is `invalid_token`; a missing one gets the bare challenge.
    challenge = 'Bearer realm="sidecar"'
    if reason != MISSING_CREDENTIAL:
        challenge += ', error="invalid_token"'
    return IdentityError(
        status=401,
        code="unauthenticated",
        message=message,
        headers={"www-authenticate": challenge},
        reason=reason,
        credential=credential,
    )


def from_token_error(err: TokenError, credential: Credential) -> IdentityError:
    if err.unavailable:
        # Retrying can succeed once the key endpoint is back, so no x-should-retry: false here.
        return IdentityError(
            status=503,
            code="identity_unavailable",
            message=err.message,
            reason=err.reason,
            credential=credential,
        )
    return refused(err.reason, err.message, credential)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()

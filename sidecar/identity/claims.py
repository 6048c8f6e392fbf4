"""Checks on a verified token's claims, and the `Subject` (or end user) they describe.

The registered claims are checked here rather than by jose so each failure has its own reason code.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sidecar.documents import UserDoc
from sidecar.identity.base import (
    INVALID_CLAIM,
    MISSING_CLAIM,
    MISSING_TENANT,
    TOKEN_EXPIRED,
    TOKEN_NOT_YET_VALID,
    WRONG_AUDIENCE,
    WRONG_ISSUER,
    TokenError,
)
from sidecar.pipeline.context import Subject


def claim_at(claims: Any, path: str) -> Any:
    """The claim at a dotted path, or None.

    Claim names may contain dots themselves (`kubernetes.io`, `https://example.com/tenant`), so at each level
    the longest matching name wins: `kubernetes.io.namespace` finds `claims["kubernetes.io"]["namespace"]`.
    """
    if not path or not isinstance(claims, dict):
        return None
    if path in claims:
        return claims[path]
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in claims:
            found = claim_at(claims[head], ".".join(parts[cut:]))
            if found is not None:
                return found
    return None


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(INVALID_CLAIM, f"The token's '{name}' claim is not a number.")
    return float(value)


def check_registered(
    claims: dict[str, Any], issuer: str, audiences: Collection[str], leeway: float, now: float
) -> None:
    """`exp` (required), `nbf`, `iat`, `iss` and `aud`, with `leeway` seconds of clock skew either way."""
    exp = _number(claims, "exp")
    if exp is None:
        # A token without an expiry would be valid forever once leaked.
        raise TokenError(MISSING_CLAIM, "The token has no 'exp' claim.")
    if now > exp + leeway:
        raise TokenError(TOKEN_EXPIRED, "The token has expired.")
    nbf = _number(claims, "nbf")
    if nbf is not None and now + leeway < nbf:
        raise TokenError(TOKEN_NOT_YET_VALID, "The token is not valid yet (nbf).")
    iat = _number(claims, "iat")
    if iat is not None and now + leeway < iat:
        raise TokenError(TOKEN_NOT_YET_VALID, "The token was issued in the future (iat).")
    iss = claims.get("iss")
    if iss is None:
        raise TokenError(MISSING_CLAIM, "The token has no 'iss' claim.")
    if iss != issuer:
        raise TokenError(WRONG_ISSUER, "The token was issued by an issuer the sidecar does not trust.")
    aud = claims.get("aud")
    if aud is None:
        raise TokenError(MISSING_CLAIM, "The token has no 'aud' claim.")
    granted = [aud] if isinstance(aud, str) else aud
    if not isinstance(granted, list) or not all(isinstance(a, str) for a in granted):
        raise TokenError(INVALID_CLAIM, "The token's 'aud' claim is not a string or a list of strings.")
    if not set(granted) & set(audiences):
        raise TokenError(WRONG_AUDIENCE, "The token is not meant for this sidecar (aud).")


def _sub(claims: dict[str, Any]) -> str:
    sub = claims.get("sub")
    if sub is None:
        raise TokenError(MISSING_CLAIM, "The token has no 'sub' claim.")
    if not isinstance(sub, str) or not sub:
        raise TokenError(INVALID_CLAIM, "The token's 'sub' claim is not a non-empty string.")
    return sub


def groups_at(claims: dict[str, Any], path: str) -> tuple[str, ...]:
    """Groups: a list of strings, or one string; none when the claim is absent."""
    value = claim_at(claims, path)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(g, str) for g in value):
        return tuple(value)
    raise TokenError(INVALID_CLAIM, f"The token's '{path}' claim is not a list of strings.")


def subject_from_claims(claims: dict[str, Any], tenant_claim: str, groups_claim: str) -> Subject:
    """The caller a verified token describes. With a tenant claim configured, the tenant is required."""
    tenant: str | None = None
    if tenant_claim:
        value = claim_at(claims, tenant_claim)
        if value is None or value == "":
            raise TokenError(MISSING_TENANT, f"The token has no tenant claim ('{tenant_claim}').")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise TokenError(INVALID_CLAIM, f"The token's tenant claim ('{tenant_claim}') is not a string.")
        tenant = str(value)
    return Subject(
        authenticated=True,
        sub=_sub(claims),
        tenant=tenant,
        groups=groups_at(claims, groups_claim),
        issuer=str(claims["iss"]),
    )


def user_from_claims(claims: dict[str, Any], groups_claim: str) -> UserDoc:
    """`input.subject.user` (docs/policy-input.md): the end user, for policies on user-initiated calls."""
    email = claims.get("email")
    return {
        "sub": _sub(claims),
        "email": email if isinstance(email, str) else None,
        "groups": list(groups_at(claims, groups_claim)),
    }

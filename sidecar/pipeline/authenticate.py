"""Stage 1: who is calling.

Every mode answers one question — which `Subject` made this request — or raises 401. The caller's
credential never leaves this stage: it is not forwarded, logged, audited or shown to the policy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol

from aiohttp import web

from sidecar.config import ConfigError, Settings
from sidecar.errors import unauthenticated
from sidecar.pipeline.context import Subject


class Authenticator(Protocol):
    async def authenticate(self, request: web.Request) -> Subject: ...


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class StaticKeys:
    """`SIDECAR_AUTH_MODE=static`: caller keys from a JSON file, `{"<key>": {"sub", "tenant", "groups"}}`.

    Keys are held only as SHA-256 digests, so a lookup compares digests rather than the secrets.
    """

    def __init__(self, path: str) -> None:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"SIDECAR_STATIC_KEYS_FILE {path}: {exc}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"SIDECAR_STATIC_KEYS_FILE {path}: expected an object of keys")
        self._subjects: dict[bytes, Subject] = {}
        for key, ident in doc.items():
            if not isinstance(ident, dict) or not isinstance(ident.get("sub"), str):
                raise ConfigError(f"SIDECAR_STATIC_KEYS_FILE {path}: each key needs at least a 'sub'")
            groups = ident.get("groups") or []
            self._subjects[_digest(key)] = Subject(
                authenticated=True,
                sub=ident["sub"],
                tenant=ident.get("tenant"),
                groups=tuple(str(g) for g in groups),
                issuer="static",
            )

    async def authenticate(self, request: web.Request) -> Subject:
        token = bearer_token(request)
        if token is None:
            raise unauthenticated(
                "Missing caller credential: send it as the API key (Authorization: Bearer)."
            )
        subject = self._subjects.get(_digest(token))
        if subject is None:
            raise unauthenticated("Unknown caller credential.")
        return subject


def build_authenticator(settings: Settings) -> Authenticator:
    if settings.auth_mode == "static":
        return StaticKeys(settings.static_keys_file)
    # The jwt and pod modes are the identity capability (issue 4); until then they are refused at start-up
    # rather than silently letting callers through.
    raise ConfigError(f"SIDECAR_AUTH_MODE={settings.auth_mode} is not available in this version; use static")

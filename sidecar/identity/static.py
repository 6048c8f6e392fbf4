"""`SIDECAR_AUTH_MODE=static`: caller keys from a JSON file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from aiohttp import web

from sidecar.config import ConfigError
from sidecar.identity.base import MISSING_CREDENTIAL, UNKNOWN_CREDENTIAL, bearer_token, refused
from sidecar.pipeline.context import Subject


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class StaticKeys:
    """Caller keys from a JSON file, `{"<key>": {"sub", "tenant", "groups"}}`.

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
            raise refused(
                MISSING_CREDENTIAL,
                "Missing caller credential: send it as the API key (Authorization: Bearer).",
            )
        subject = self._subjects.get(_digest(token))
        if subject is None:
            raise refused(UNKNOWN_CREDENTIAL, "Unknown caller credential.")
        return subject

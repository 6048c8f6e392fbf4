"""Identity test helpers: signing keys, token minting (forgeries included), a loopback OIDC server, pod info.

`Idp` serves `/.well-known/openid-configuration` and `/jwks` from a real aiohttp server on 127.0.0.1 and
counts the fetches, so the tests can assert exactly when the sidecar refreshes its keys.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jwt

from tests.conftest import free_port

AUDIENCE = "sidecar"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private_pem: str
    public_pem: str

    def public_jwk(self) -> dict[str, str]:
        doc: dict[str, str] = jwk.construct(self.public_pem, self.alg).to_dict()
        return {**doc, "kid": self.kid, "use": "sig"}


def _pems(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private.decode(), public.decode()


@functools.cache
def rsa_key(kid: str) -> SigningKey:
    """An RS256 key (cached per kid: generating RSA keys is the slow part of these tests)."""
    return SigningKey(kid, "RS256", *_pems(rsa.generate_private_key(public_exponent=65537, key_size=2048)))


@functools.cache
def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", *_pems(ec.generate_private_key(ec.SECP256R1())))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(doc: dict[str, Any]) -> str:
    return b64(json.dumps(doc, separators=(",", ":")).encode())


def sign(key: SigningKey, claims: dict[str, Any], **header: Any) -> str:
    headers = {"kid": key.kid, **header}
    token: str = jwt.encode(claims, key.private_pem, algorithm=key.alg, headers=headers)
    return token


def unsigned(claims: dict[str, Any], kid: str) -> str:
    """`alg: none`: no signature at all."""
    return f"{segment({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{segment(claims)}."


def hs256_with_public_key(key: SigningKey, claims: dict[str, Any]) -> str:
    """The classic key-confusion forgery: HS256, keyed with the issuer's RSA *public* key."""
    signing_input = f"{segment({'alg': 'HS256', 'typ': 'JWT', 'kid': key.kid})}.{segment(claims)}"
    mac = hmac.new(key.public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def tampered(token: str, **changes: Any) -> str:
    """The token with its payload edited and the original signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"{header}.{segment({**claims, **changes})}.{signature}"


@dataclass
class Idp:
    """A loopback OpenID provider whose key set the test can change, fail or slow down."""

    keys: list[SigningKey]
    url: str = ""
    jwks_fetches: int = 0
    discovery_fetches: int = 0
    failing: bool = False
    delay: float = 0.0
    _runner: web.AppRunner | None = field(default=None, repr=False)

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def jwks_url(self) -> str:
        return self.url + "/jwks"

    async def start(self) -> Idp:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _discovery(self, request: web.Request) -> web.Response:
        self.discovery_fetches += 1
        return web.json_response({"issuer": self.issuer, "jwks_uri": self.jwks_url})

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failing:
            return web.json_response({"error": "down"}, status=500)
        return web.json_response({"keys": [k.public_jwk() for k in self.keys]})

    def claims(self, **changes: Any) -> dict[str, Any]:
        """Valid caller claims; a change to None removes that claim."""
        now = int(time.time())
        doc: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "support-bot",
            "tenant": "acme",
            "groups": ["agents"],
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        }
        doc.update(changes)
        return {k: v for k, v in doc.items() if v is not None}

    def token(self, key: SigningKey | None = None, **changes: Any) -> str:
        return sign(key or self.keys[0], self.claims(**changes))

    def settings(self, **extra: str) -> dict[str, str]:
        """Sidecar settings for jwt mode against this provider (discovery, no PII scanning)."""
        return {
            "SIDECAR_AUTH_MODE": "jwt",
            "SIDECAR_OIDC_ISSUER": self.issuer,
            "SIDECAR_JWT_AUDIENCE": AUDIENCE,
            "SIDECAR_PII_MODE": "off",
            **extra,
        }


def pod_info(tmp_path: Path) -> Path:
    """A downward-API volume as the kubelet writes it: the namespace, and the pod's labels."""
    folder = tmp_path / "podinfo"
    folder.mkdir()
    (folder / "namespace").write_text("agents\n")
    (folder / "labels").write_text('app="support-bot"\ntenant="acme"\n')
    return folder


class _Transport:
    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def is_closing(self) -> bool:
        return False


def request_from(peer: str) -> web.Request:
    """A request whose TCP peer is `peer` (what `request.remote` reports)."""
    return make_mocked_request("GET", "/v1/models", transport=_Transport((peer, 50000)))

"""The issuer's signing keys (JWKS), found by OIDC discovery or a configured URL, cached and refreshed.

Refresh policy (the same shape as Nimbus JOSE's JWKSource, which Spring Security uses):
- keys are cached; a lookup after `max_age` seconds refetches first (new and revoked keys show up without
  a restart);
- an unknown `kid` triggers a refetch, since the issuer may have rotated its keys;
- fetches are rate-limited: at most one per `min_refresh_interval` seconds (5 s after a failed one), so a
  stream of tokens with made-up `kid`s cannot turn the sidecar into a load generator against the IdP;
- concurrent misses share one fetch (one lock, and a generation counter that tells a waiter someone else
  just fetched);
- a failed fetch keeps the keys already cached: tokens signed with them still verify while the IdP is down.
  Only a token whose key is not cached fails then, with `TokenError(unavailable=True)` (503).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from jose import jwk
from jose.backends.base import Key

from sidecar.config import ConfigError
from sidecar.identity.base import JWKS_UNAVAILABLE, UNKNOWN_KID, TokenError

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 1 << 20  # a JWKS or discovery document larger than this is not a real one
FAILED_FETCH_RETRY = 5.0  # seconds before a failed fetch may be retried (capped by min_refresh_interval)
MIN_RSA_BITS = 2048
_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
# Only the public members are kept: a JWKS that leaks a private key must not make us hold one.
_PUBLIC_MEMBERS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y")}


class JwksError(Exception):
    """The discovery document or the JWKS could not be fetched or understood."""


@dataclass(frozen=True, slots=True)
class JwksSource:
    """Where the keys come from and how they are fetched."""

    issuer: str
    jwks_url: str = ""  # empty: OIDC discovery at {issuer}/.well-known/openid-configuration
    timeout: float = 5.0
    min_refresh_interval: float = 30.0
    max_age: float = 300.0
    ca_file: str = ""  # PEM bundle to trust instead of the system's (the cluster CA for the API server)
    token_file: str = ""  # bearer token sent with the fetches (a service-account token), re-read each time


@dataclass(slots=True)
class Jwk:
    """One public verification key from the JWKS."""

    kty: str
    kid: str | None
    alg: str | None
    members: dict[str, str]
    _built: dict[str, Key] = field(default_factory=dict, repr=False, compare=False)

    def problem_with(self, alg: str) -> str | None:
        """Why this key cannot verify `alg`, or None when it can.

        This runs before jose sees the key, so a token cannot pick how its key is used: an RSA key only
        ever verifies RS*, an EC key only ES* on its own curve (never HS* with the public key as secret).
        """
        if self.alg is not None and self.alg != alg:
            return f"the key is for {self.alg}, the token says {alg}"
        if alg.startswith("RS"):
            if self.kty != "RSA":
                return f"an {self.kty} key cannot verify {alg}"
            if _bits(self.members.get("n", "")) < MIN_RSA_BITS:
                return f"the RSA key is shorter than {MIN_RSA_BITS} bits"
            return None
        if alg in _CURVES:
            if self.kty != "EC" or self.members.get("crv") != _CURVES[alg]:
                return f"{alg} needs an EC {_CURVES[alg]} key"
            return None
        return f"{alg} is not a supported signature algorithm"

    def jose_key(self, alg: str) -> Key:
        """The jose key object for `alg`, built once (parsing the key costs more than a verification)."""
        key = self._built.get(alg)
        if key is None:
            key = self._built[alg] = jwk.construct({"kty": self.kty, **self.members}, alg)
        return key


def _bits(b64: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    except ValueError:
        return 0
    return len(raw.lstrip(b"\0")) * 8


def parse_jwks(doc: Any) -> list[Jwk]:
    """The usable signature keys of a JWKS document; encryption keys and unknown key types are skipped."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError("not a JWKS document (no 'keys' list)")
    keys = []
    for item in doc["keys"]:
        if not isinstance(item, dict) or item.get("use", "sig") != "sig":
            continue
        kty = item.get("kty")
        names = _PUBLIC_MEMBERS.get(kty) if isinstance(kty, str) else None
        if names is None or not all(isinstance(item.get(n), str) for n in names):
            continue
        kid, alg = item.get("kid"), item.get("alg")
        keys.append(
            Jwk(
                kty=str(kty),
                kid=kid if isinstance(kid, str) else None,
                alg=alg if isinstance(alg, str) else None,
                members={n: str(item[n]) for n in names},
            )
        )
    return keys


class JwksCache:
    """The keys of one issuer, shared by every verifier that trusts it."""

    def __init__(self, source: JwksSource, clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self._clock = clock
        self._ssl: ssl.SSLContext | bool = True
        if source.ca_file:
            try:
                self._ssl = ssl.create_default_context(cafile=source.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"SIDECAR_JWKS_CA_FILE {source.ca_file}: {exc}") from None
        self._keys: list[Jwk] = []
        self._jwks_uri = source.jwks_url
        self._loaded_at: float | None = None  # when the cached keys were fetched
        self._attempt_at: float | None = None  # when the last fetch was tried, successful or not
        self._last_error: str | None = None
        self._generation = 0  # bumped after every fetch attempt
        self._lock = asyncio.Lock()
        self.fetches = 0  # JWKS documents fetched (discovery not counted)

    async def keys_for(self, kid: str | None) -> list[Jwk]:
        """The cached keys with this `kid` (every key when the token names none), refetching if needed."""
        if self._loaded_at is None or self._clock() - self._loaded_at > self.source.max_age:
            await self.refresh()
        found = self._lookup(kid)
        if found:
            return found
        await self.refresh()
        found = self._lookup(kid)
        if found:
            return found
        if self._last_error is not None:
            raise TokenError(
                JWKS_UNAVAILABLE,
                f"The token's signing key cannot be fetched from the identity provider ({self._last_error}).",
                unavailable=True,
            )
        named = f"kid {kid!r}" if kid is not None else "no kid"
        raise TokenError(UNKNOWN_KID, f"The token's key ({named}) is not in the issuer's key set.")

    def _lookup(self, kid: str | None) -> list[Jwk]:
        if kid is None:
            return list(self._keys)
        return [k for k in self._keys if k.kid == kid]

    async def refresh(self) -> None:
        """Fetch the keys, unless another caller just did or the rate limit says not yet."""
        seen = self._generation
        async with self._lock:
            if self._generation != seen:
                return  # a fetch finished while we waited for the lock: use its result
            now = self._clock()
            wait = self.source.min_refresh_interval
            if self._last_error is not None:
                wait = min(wait, FAILED_FETCH_RETRY)
            if self._attempt_at is not None and now - self._attempt_at < wait:
                return
            self._attempt_at = now
            try:
                keys = await self._fetch()
            except JwksError as exc:
                self._last_error = str(exc)
                log.warning("JWKS fetch failed", extra={"issuer": self.source.issuer, "error": str(exc)})
            else:
                self._keys, self._loaded_at, self._last_error = keys, now, None
            finally:
                self._generation += 1

    async def _fetch(self) -> list[Jwk]:
        headers = {"Accept": "application/json"}
        if self.source.token_file:
            try:
                token = await asyncio.to_thread(Path(self.source.token_file).read_text)
                headers["Authorization"] = "Bearer " + token.strip()
            except OSError as exc:
                raise JwksError(f"SIDECAR_JWKS_TOKEN_FILE: {exc}") from None
        timeout = aiohttp.ClientTimeout(total=self.source.timeout)
        try:
            # A session per fetch: fetches are rare (rate-limited), and nothing is left open between them.
            async with aiohttp.ClientSession(
                timeout=timeout, connector=aiohttp.TCPConnector(ssl=self._ssl)
            ) as session:
                if not self._jwks_uri:
                    self._jwks_uri = await self._discover(session, headers)
                uri = self._jwks_uri
                try:
                    doc = await _get_json(session, uri, headers)
                except JwksError:
                    if not self.source.jwks_url:
                        self._jwks_uri = ""  # discover again next time: the jwks_uri may have moved
                    raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise JwksError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        self.fetches += 1
        return parse_jwks(doc)

    async def _discover(self, session: aiohttp.ClientSession, headers: dict[str, str]) -> str:
        url = self.source.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = await _get_json(session, url, headers)
        # OIDC Discovery §4.3: the document must name the issuer it was fetched for, exactly.
        if doc.get("issuer") != self.source.issuer:
            raise JwksError(f"{url} names issuer {doc.get('issuer')!r}, not {self.source.issuer!r}")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise JwksError(f"{url} has no usable jwks_uri")
        return uri


async def _get_json(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> dict[str, Any]:
    async with session.get(url, headers=headers) as resp:
        if resp.status != 200:
            raise JwksError(f"{url}: HTTP {resp.status}")
        body = await resp.content.read(MAX_DOCUMENT_BYTES + 1)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise JwksError(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        doc = json.loads(body)
    except ValueError:
        raise JwksError(f"{url}: not JSON") from None
    if not isinstance(doc, dict):
        raise JwksError(f"{url}: not a JSON object")
    return doc

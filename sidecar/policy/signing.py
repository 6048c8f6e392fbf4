"""OPA bundle signatures (`.signatures.json`): produce them and verify them the way OPA does.

The signature is a JWS whose payload lists every bundle file with its SHA-256 hash. OPA hashes
`data.json`, `data.yaml` and `.manifest` over a canonical form of the parsed document (keys sorted, no
whitespace, numbers as written) and every other file over its raw bytes; the same rules apply here, so
bundles move freely between `sidecar policy build` and `opa run --verification-key`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath
from typing import Any

import yaml
from jose import jws
from jose.exceptions import JOSEError

from sidecar.policy.bundle import MANIFEST, SIGNATURES, BundleError


class _Number(str):
    """A JSON number kept exactly as written, so hashing matches Go's json.Number."""


def _encode_string(value: str) -> bytes:
    # Go's encoder (HTML escaping off) writes non-ASCII as UTF-8 and escapes U+2028/U+2029.
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode()


def _walk(value: Any, out: list[bytes]) -> None:
    if isinstance(value, dict):
        out.append(b"{")
        for i, key in enumerate(sorted(value)):
            if i:
                out.append(b",")
            out.append(_encode_string(key))
            out.append(b":")
            _walk(value[key], out)
        out.append(b"}")
    elif isinstance(value, list):
        out.append(b"[")
        for i, item in enumerate(value):
            if i:
                out.append(b",")
            _walk(item, out)
        out.append(b"]")
    elif isinstance(value, _Number):
        out.append(str(value).encode())
    elif isinstance(value, bool):
        out.append(b"true" if value else b"false")
    elif isinstance(value, int | float):
        out.append(json.dumps(value).encode())
    elif isinstance(value, str):
        out.append(_encode_string(value))
    elif value is None:
        out.append(b"null")
    else:
        raise BundleError(f"unexpected JSON value {value!r}")


# OPA treats these files as structured documents (bundle.IsStructuredDoc) and everything else as bytes.
_STRUCTURED = frozenset({"data.json", "data.yaml", "data.yml", MANIFEST})


def file_hash(name: str, content: bytes) -> str:
    if PurePosixPath(name).name in _STRUCTURED:
        try:
            doc = json.loads(content, parse_int=_Number, parse_float=_Number)
        except ValueError:
            try:
                doc = yaml.safe_load(content)
            except yaml.YAMLError as exc:
                raise BundleError(f"{name}: neither JSON nor YAML: {exc}") from None
        parts: list[bytes] = []
        _walk(doc, parts)
        content = b"".join(parts)
    return hashlib.sha256(content).hexdigest()


def signed_files(files: dict[str, bytes]) -> list[dict[str, str]]:
    return [
        {"name": name, "hash": file_hash(name, content), "algorithm": "SHA-256"}
        for name, content in sorted(files.items())
        if name != SIGNATURES
    ]


def sign(files: dict[str, bytes], key_pem: str, keyid: str, algorithm: str = "RS256") -> bytes:
    """The `.signatures.json` content for these files."""
    payload = {"files": signed_files(files), "keyid": keyid}
    token = jws.sign(json.dumps(payload).encode(), key_pem, headers={"kid": keyid}, algorithm=algorithm)
    return json.dumps({"signatures": [token]}, indent=2).encode() + b"\n"


def verify(files: dict[str, bytes], public_pem: str, keyid: str, algorithm: str = "RS256") -> None:
    """Raise BundleError unless `.signatures.json` is a valid signature by the pinned key over exactly
    these files."""
    raw = files.get(SIGNATURES)
    if raw is None:
        raise BundleError("bundle is not signed (no .signatures.json) but a verification key is configured")
    try:
        tokens = json.loads(raw)["signatures"]
    except (ValueError, KeyError, TypeError):
        raise BundleError(".signatures.json is malformed") from None
    if not isinstance(tokens, list) or len(tokens) != 1:
        raise BundleError(".signatures.json must hold exactly one signature")
    try:
        header = jws.get_unverified_header(tokens[0])
        payload = json.loads(jws.verify(tokens[0], public_pem, algorithms=[algorithm]))
    except (JOSEError, ValueError) as exc:
        raise BundleError(f"bundle signature is invalid: {exc}") from None
    signer = payload.get("keyid") or header.get("kid")
    if signer != keyid:
        raise BundleError(f"bundle is signed by key {signer!r}, not the pinned key {keyid!r}")
    listed = {f.get("name", "").lstrip("/"): f for f in payload.get("files", []) if isinstance(f, dict)}
    actual = {name: content for name, content in files.items() if name != SIGNATURES}
    if set(listed) != set(actual):
        missing = sorted(set(actual) ^ set(listed))
        raise BundleError(f"bundle files do not match the signature: {missing}")
    for name, content in actual.items():
        entry = listed[name]
        if entry.get("algorithm", "SHA-256").upper() not in {"SHA-256", "SHA256"}:
            raise BundleError(f"{name}: unsupported hash algorithm {entry.get('algorithm')!r}")
        if entry.get("hash") != file_hash(name, content):
            raise BundleError(f"{name}: content does not match its signed hash (tampered)")

"""OPA bundles: a directory or a `.tar.gz` with `.rego` files, `data.json`/`data.yaml` files and a
`.manifest`, laid out as `opa build` does. The same bundle feeds the embedded engine and an OPA daemon.
Every load (serving, reloads, `sidecar policy test|build|eval`) checks the data against the schema the
manifest declares (sidecar.policy.dataschema).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import orjson
import yaml

from sidecar.policy.dataschema import DataSchemaError
from sidecar.policy.dataschema import check as check_data

MANIFEST = ".manifest"
SIGNATURES = ".signatures.json"
_DATA_NAMES = {"data.json", "data.yaml", "data.yml"}
_MAX_FILE = 64 * 1024 * 1024  # a single bundle file larger than this is refused, as OPA does by default


class BundleError(ValueError):
    """The bundle cannot be used: unreadable, malformed, or failing verification."""


@dataclass(frozen=True, slots=True)
class Bundle:
    source: str
    files: dict[str, bytes]  # bundle-relative path (no leading slash) -> content
    manifest: dict[str, Any] = field(default_factory=dict)
    policies: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    revision: str = ""
    data_schema: str = ""  # the schema the data was checked against ("" when the bundle declares none)

    @property
    def signed(self) -> bool:
        return SIGNATURES in self.files


def read_files(source: str | Path) -> dict[str, bytes]:
    """The bundle's files by relative path, from a directory or a gzipped tarball."""
    path = Path(source)
    if path.is_dir():
        files: dict[str, bytes] = {}
        for item in sorted(path.rglob("*")):
            rel = item.relative_to(path).as_posix()
            if item.is_file() and _wanted(rel):
                files[rel] = item.read_bytes()
        return files
    if path.is_file():
        return read_tarball(path.read_bytes(), str(path))
    raise BundleError(f"bundle {source}: no such file or directory")


def read_tarball(blob: bytes, source: str) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for member in tar.getmembers():
                rel = PurePosixPath(member.name.lstrip("/")).as_posix()
                if not member.isfile() or ".." in PurePosixPath(rel).parts or not _wanted(rel):
                    continue
                if member.size > _MAX_FILE:
                    raise BundleError(f"bundle {source}: {rel} is larger than {_MAX_FILE} bytes")
                handle = tar.extractfile(member)
                if handle is not None:
                    files[rel] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"bundle {source}: not a gzipped tarball: {exc}") from None
    return files


def _wanted(rel: str) -> bool:
    name = PurePosixPath(rel).name
    return name in (MANIFEST, SIGNATURES) or name.endswith(".rego") or name in _DATA_NAMES


def parse(files: dict[str, bytes], source: str) -> Bundle:
    manifest: dict[str, Any] = {}
    if MANIFEST in files:
        try:
            manifest = orjson.loads(files[MANIFEST])
        except orjson.JSONDecodeError as exc:
            raise BundleError(f"bundle {source}: .manifest is not JSON: {exc}") from None
        if not isinstance(manifest, dict):
            raise BundleError(f"bundle {source}: .manifest must be an object")
    policies: dict[str, str] = {}
    data: dict[str, Any] = {}
    for rel, content in files.items():
        name = PurePosixPath(rel).name
        if name.endswith(".rego"):
            policies[rel] = content.decode("utf-8")
        elif name in _DATA_NAMES:
            _merge_at(data, PurePosixPath(rel).parent.parts, _load_data(rel, content, source))
    if not policies:
        raise BundleError(f"bundle {source}: no .rego files")
    try:
        data_schema = check_data(manifest, data)
    except DataSchemaError as exc:
        raise BundleError(f"bundle {source}: {exc}") from None
    revision = manifest.get("revision")
    if not isinstance(revision, str) or not revision:
        # Without a declared revision, a digest of the content still tells two bundles apart in the audit.
        digest = hashlib.sha256()
        for rel in sorted(files):
            digest.update(rel.encode() + b"\0" + files[rel] + b"\0")
        revision = "sha256:" + digest.hexdigest()[:16]
    return Bundle(source, files, manifest, policies, data, revision, data_schema)


def _load_data(rel: str, content: bytes, source: str) -> Any:
    try:
        return orjson.loads(content) if rel.endswith(".json") else yaml.safe_load(content)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise BundleError(f"bundle {source}: {rel}: {exc}") from None


def _merge_at(tree: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    """Place a data file's document at its directory's path, merging objects as OPA does."""
    node = tree
    for part in parts:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise BundleError(f"data conflict at {'/'.join(parts)}")
    if not isinstance(value, dict):
        raise BundleError(f"data file at /{'/'.join(parts)} must hold an object")
    _deep_merge(node, value, "/".join(parts))


def _deep_merge(into: dict[str, Any], new: dict[str, Any], where: str) -> None:
    for key, value in new.items():
        if key in into and isinstance(into[key], dict) and isinstance(value, dict):
            _deep_merge(into[key], value, f"{where}/{key}")
        elif key in into:
            raise BundleError(f"data conflict at {where}/{key}: defined by two data files")
        else:
            into[key] = value


def load(source: str | Path) -> Bundle:
    return parse(read_files(source), str(source))

"""Bundles: loading, building, signing and verifying, and refusing bad ones."""

import io
import json
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.policy import bundle as bundles
from sidecar.policy import signing
from sidecar.policy.build import build
from sidecar.policy.bundle import BundleError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_bundle_loads() -> None:
    bundle = bundles.load(ROOT / "rego")
    assert bundle.revision and bundle.manifest.get("roots") == ["sidecar"]
    assert "tenants" in bundle.data["sidecar"]
    assert any(p.endswith(".rego") and not p.endswith("_test.rego") for p in bundle.policies)


def test_nested_data_files_land_at_their_path(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text("package x\nallow := true\n")
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "data.json").write_text('{"c": 1}')
    (tmp_path / "a" / "data.yaml").write_text("d: 2\n")
    bundle = bundles.load(tmp_path)
    assert bundle.data == {"a": {"b": {"c": 1}, "d": 2}}
    assert bundle.revision.startswith("sha256:")  # no manifest: a content digest tells revisions apart


def test_bundle_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such file"):
        bundles.load(tmp_path / "missing")
    with pytest.raises(BundleError, match=r"no \.rego files"):
        bundles.load(tmp_path)
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(BundleError, match="gzipped tarball"):
        bundles.load(bad)


def test_build_writes_an_opa_layout(tmp_path: Path) -> None:
    out = tmp_path / "bundle.tar.gz"
    revision = build(str(ROOT / "rego"), str(out), revision="r42")
    assert revision == "r42"
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert "/.manifest" in names and "/data.json" in names and all(n.startswith("/") for n in names)
    loaded = bundles.load(out)
    assert loaded.revision == "r42" and loaded.data == bundles.load(ROOT / "rego").data
    assert loaded.data_schema == "sidecar:data.schema.json"  # a built bundle keeps the shipped schema


def test_build_refuses_data_that_fails_the_schema(tmp_path: Path) -> None:
    source = tmp_path / "bundle"
    source.mkdir()
    for item in (ROOT / "rego").iterdir():
        (source / item.name).write_bytes(item.read_bytes())
    data = json.loads((source / "data.json").read_text())
    data["sidecar"]["defaults"]["models"]["deny"] = "o1-pro*"  # a string where a list belongs
    (source / "data.json").write_text(json.dumps(data))
    out = tmp_path / "bundle.tar.gz"
    with pytest.raises(
        BundleError, match=r"/sidecar/defaults/models/deny: 'o1-pro\*' is not of type 'array'"
    ):
        build(str(source), str(out))
    assert not out.exists()  # nothing half-written


def test_signed_bundle_verifies_and_tampering_is_refused(
    tmp_path: Path, signing_keys: tuple[Path, Path]
) -> None:
    private, public = signing_keys
    out = tmp_path / "signed.tar.gz"
    build(str(ROOT / "rego"), str(out), signing_key=str(private), keyid="ci")
    files = bundles.read_files(out)
    signing.verify(files, public.read_text(), "ci")

    with pytest.raises(BundleError, match="not the pinned key"):
        signing.verify(files, public.read_text(), "other")
    tampered = dict(files)
    tampered["decision.rego"] = files["decision.rego"] + b"\n# changed\n"
    with pytest.raises(BundleError, match="tampered"):
        signing.verify(tampered, public.read_text(), "ci")
    extra = dict(files)
    extra["evil.rego"] = b"package sidecar\n"
    with pytest.raises(BundleError, match="do not match the signature"):
        signing.verify(extra, public.read_text(), "ci")
    unsigned = {k: v for k, v in files.items() if k != bundles.SIGNATURES}
    with pytest.raises(BundleError, match="not signed"):
        signing.verify(unsigned, public.read_text(), "ci")
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_pem = other_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(BundleError, match="signature is invalid"):
        signing.verify(files, other_pem.decode(), "ci")


def test_json_hash_is_canonical() -> None:
    # OPA hashes JSON over its canonical form, so whitespace and key order do not change the hash,
    # while numbers keep their written form.
    a = signing.file_hash("data.json", b'{"b": [1, 2.50], "a": {"y": "\\u00e9", "x": null}}')
    b = signing.file_hash("data.json", json.dumps({"a": {"x": None, "y": "é"}, "b": [1, 2.50]}).encode())
    assert a != b  # 2.50 vs 2.5
    c = signing.file_hash("data.json", b'{"a":{"x":null,"y":"\xc3\xa9"},"b":[1,2.50]}')
    assert a == c
    assert signing.file_hash("other.json", b'{"a": 1}') != signing.file_hash(
        "other.json", b'{"a":1}'
    )  # raw bytes


def test_tarball_path_traversal_is_ignored(tmp_path: Path) -> None:
    blob = io.BytesIO()
    with tarfile.open(fileobj=blob, mode="w:gz") as tar:
        for name, data in [("/p.rego", b"package x\n"), ("../../etc/evil.rego", b"package y\n")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    files = bundles.read_tarball(blob.getvalue(), "t")
    assert list(files) == ["p.rego"]

"""`sidecar policy build`: write an OPA bundle tarball, optionally signed."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

from sidecar.policy import signing
from sidecar.policy.bundle import MANIFEST, SIGNATURES, BundleError, parse, read_files


def build(
    source: str,
    output: str,
    *,
    revision: str | None = None,
    signing_key: str | None = None,
    keyid: str = "default",
    algorithm: str = "RS256",
) -> str:
    """Write `output` from the bundle directory `source`; returns the bundle's revision."""
    if not Path(source).is_dir():
        raise BundleError(f"{source} is not a directory")
    files = {name: data for name, data in read_files(source).items() if name != SIGNATURES}
    manifest = json.loads(files[MANIFEST]) if MANIFEST in files else {}
    if revision is not None:
        manifest["revision"] = revision
    if MANIFEST in files or revision is not None:
        files[MANIFEST] = json.dumps(manifest, sort_keys=True).encode()
    bundle = parse(files, source)  # refuses a bundle that would not load
    if signing_key is not None:
        files[SIGNATURES] = signing.sign(files, Path(signing_key).read_text(), keyid, algorithm)
    with tarfile.open(output, "w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo("/" + name)  # opa build's layout: paths from the bundle root
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
    return bundle.revision

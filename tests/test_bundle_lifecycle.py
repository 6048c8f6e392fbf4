"""Bundle lifecycle: hot reload without dropped requests, ETag polling, signatures, and OPA interop."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import openai
import pytest
from aiohttp import web

from sidecar.app import Sidecar
from sidecar.config import load as load_settings
from sidecar.policy import bundle as bundles
from sidecar.policy import signing
from sidecar.policy.build import build
from sidecar.policy.bundle import BundleError
from tests.conftest import ACME_KEY, BUNDLE, MakeSidecar, eventually, free_port, wait_http


def _copy_bundle(tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(BUNDLE, target)
    return target


def _set_revision_and_block(folder: Path, revision: str, blocked: str) -> None:
    """Edit the bundle: a new revision that blocks one model for acme."""
    data = json.loads((folder / "data.json").read_text())
    acme = data["sidecar"]["tenants"]["acme"]
    acme.setdefault("models", {})["deny"] = [blocked]
    (folder / "data.json").write_text(json.dumps(data))
    manifest = json.loads((folder / ".manifest").read_text())  # keeps metadata.data_schema: still checked
    (folder / ".manifest").write_text(json.dumps({**manifest, "revision": revision}))


async def test_directory_reload_is_atomic_under_load(make_sidecar: MakeSidecar, tmp_path: Path) -> None:
    folder = _copy_bundle(tmp_path)
    sc = await make_sidecar(SIDECAR_BUNDLE=str(folder), SIDECAR_BUNDLE_WATCH="true")
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    outcomes: list[str] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            try:
                await client.responses.create(model="gpt-4o", input="x")
                outcomes.append("allowed")
            except openai.PermissionDeniedError:
                outcomes.append("denied")
            except openai.APIError as exc:  # anything else would be a dropped or failed request
                outcomes.append(f"error {exc}")

    workers = [asyncio.create_task(traffic()) for _ in range(4)]
    await asyncio.sleep(0.3)
    _set_revision_and_block(folder, "rev-blocked", "gpt-4o")

    async def switched() -> bool:
        return bool(outcomes) and outcomes[-1] == "denied"

    await eventually(switched, timeout=10)
    await asyncio.sleep(0.2)
    (folder / "decision.rego").write_text("package sidecar\n\ndecision := {{{ not rego\n")  # broken edit
    await asyncio.sleep(0.8)
    stop.set()
    await asyncio.gather(*workers)

    assert not [o for o in outcomes if o.startswith("error")]
    first_denied = outcomes.index("denied")
    assert first_denied > 0 and set(outcomes[first_denied + 8 :]) == {
        "denied"
    }  # after the swap: new policy only
    assert sc.sidecar.engine.revision == "rev-blocked"  # the broken edit was refused
    assert sc.sidecar.reloader is not None and sc.sidecar.reloader.failures >= 1
    revisions = {r["bundle"]["revision"] for r in sc.audit()}
    assert {"sidecar-policy-2026.11.24-1", "rev-blocked"} <= revisions


async def test_a_reload_whose_data_fails_the_schema_keeps_the_old_bundle(
    make_sidecar: MakeSidecar, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`modles` for `models` would silently hand acme the defaults' model lists; the reload is refused instead."""
    folder = _copy_bundle(tmp_path)
    sc = await make_sidecar(SIDECAR_BUNDLE=str(folder), SIDECAR_BUNDLE_WATCH="true")
    reloader = sc.sidecar.reloader
    assert reloader is not None
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    await client.responses.create(model="gpt-4o", input="x")  # acme's agents may use gpt-4o
    data = json.loads((folder / "data.json").read_text())
    acme = data["sidecar"]["tenants"]["acme"]
    acme["modles"] = acme.pop("models")
    caplog.set_level("ERROR", logger="sidecar.policy.reload")
    (folder / "data.json").write_text(json.dumps(data))

    async def refused() -> bool:
        return reloader.failures >= 1

    await eventually(refused, timeout=10)
    assert sc.sidecar.engine.revision == "sidecar-policy-2026.11.24-1" and reloader.reloads == 0
    [record] = [r for r in caplog.records if r.name == "sidecar.policy.reload"]
    assert record.getMessage() == "bundle refused; keeping the current one"
    assert "/sidecar/tenants/acme/modles: unknown key 'modles'" in record.error  # type: ignore[attr-defined]
    await client.responses.create(model="gpt-4o", input="x")  # still the old policy (else: denied)

    acme["models"] = acme.pop("modles")  # the typo fixed, and a valid edit: it is taken as before
    (folder / "data.json").write_text(json.dumps(data))
    _set_revision_and_block(folder, "rev-fixed", "gpt-4o")

    async def fixed() -> bool:
        return sc.sidecar.engine.revision == "rev-fixed"

    await eventually(fixed, timeout=10)
    assert sc.sidecar.engine.bundle.data_schema == "sidecar:data.schema.json"
    with pytest.raises(openai.PermissionDeniedError):
        await client.responses.create(model="gpt-4o", input="x")


class BundleServer:
    """Serves a bundle tarball with an ETag, honouring If-None-Match, as a bundle service does."""

    def __init__(self, blob: bytes) -> None:
        self.blob, self.etag, self.version = blob, '"v1"', 1
        self.hits: list[int] = []

    def publish(self, blob: bytes) -> None:
        self.version += 1
        self.blob, self.etag = blob, f'"v{self.version}"'

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == self.etag:
            self.hits.append(304)
            return web.Response(status=304)
        self.hits.append(200)
        return web.Response(body=self.blob, headers={"ETag": self.etag}, content_type="application/gzip")


async def _serve_bundles(server: BundleServer) -> tuple[str, web.AppRunner]:
    app = web.Application()
    app.router.add_get("/bundle.tar.gz", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}/bundle.tar.gz", runner


async def test_bundle_url_polling_with_etag_and_signatures(
    make_sidecar: MakeSidecar, tmp_path: Path, signing_keys: tuple[Path, Path]
) -> None:
    private, public = signing_keys
    folder = _copy_bundle(tmp_path)
    first, second, forged = tmp_path / "1.tar.gz", tmp_path / "2.tar.gz", tmp_path / "3.tar.gz"
    build(str(folder), str(first), revision="r1", signing_key=str(private), keyid="ci")
    _set_revision_and_block(folder, "r2", "gpt-4o")
    build(str(folder), str(second), revision="r2", signing_key=str(private), keyid="ci")
    build(str(folder), str(forged), revision="r3")  # unsigned

    server = BundleServer(first.read_bytes())
    url, runner = await _serve_bundles(server)
    try:
        sc = await make_sidecar(
            SIDECAR_BUNDLE_URL=url,
            SIDECAR_BUNDLE_POLL_SECONDS="0.1",
            SIDECAR_BUNDLE_VERIFICATION_KEY=str(public),
            SIDECAR_BUNDLE_VERIFICATION_KEY_ID="ci",
        )
        client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
        assert sc.sidecar.engine.revision == "r1"
        await client.responses.create(model="gpt-4o", input="x")

        async def saw_304() -> bool:
            return 304 in server.hits

        await eventually(saw_304)
        server.publish(forged.read_bytes())

        async def refused() -> bool:
            return sc.sidecar.reloader is not None and sc.sidecar.reloader.failures > 0

        await eventually(refused)
        assert sc.sidecar.engine.revision == "r1"  # the unsigned bundle was not taken

        server.publish(second.read_bytes())

        async def updated() -> bool:
            return sc.sidecar.engine.revision == "r2"

        await eventually(updated)
        with pytest.raises(openai.PermissionDeniedError):
            await client.responses.create(model="gpt-4o", input="x")
    finally:
        await runner.cleanup()


async def test_unsigned_or_tampered_bundle_is_refused_at_start(
    tmp_path: Path, signing_keys: tuple[Path, Path], keys_file: str
) -> None:
    private, public = signing_keys
    signed = tmp_path / "signed.tar.gz"
    build(str(BUNDLE), str(signed), signing_key=str(private), keyid="ci")
    env = {
        "SIDECAR_STATIC_KEYS_FILE": keys_file,
        "SIDECAR_BUNDLE_VERIFICATION_KEY": str(public),
        "SIDECAR_BUNDLE_VERIFICATION_KEY_ID": "ci",
    }
    ok = await Sidecar.create(load_settings(environ={**env, "SIDECAR_BUNDLE": str(signed)}))
    assert ok.engine.revision == "sidecar-policy-2026.11.24-1"
    await ok.close()

    with pytest.raises(BundleError, match="not signed"):
        await Sidecar.create(load_settings(environ={**env, "SIDECAR_BUNDLE": str(BUNDLE)}))

    files = bundles.read_files(signed)
    files["data.json"] = files["data.json"].replace(b'"acme"', b'"evil"')
    tampered = tmp_path / "tampered"
    for name, content in files.items():
        (tampered / name).parent.mkdir(parents=True, exist_ok=True)
        (tampered / name).write_bytes(content)
    with pytest.raises(BundleError, match="tampered"):
        await Sidecar.create(load_settings(environ={**env, "SIDECAR_BUNDLE": str(tampered)}))


def _opa_serves(opa_bin: str, bundle: Path, public: Path, keyid: str) -> tuple[bool, str]:
    port = free_port()
    proc = subprocess.Popen(
        [opa_bin, "run", "--server", "--addr", f"127.0.0.1:{port}", "--verification-key", str(public),
         "--verification-key-id", keyid, "-b", str(bundle)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=10, proc=proc)
        return True, ""
    except RuntimeError:
        output = proc.stdout.read().decode() if proc.stdout else ""
        return False, output
    finally:
        proc.terminate()
        proc.wait(10)


def test_real_opa_accepts_our_signed_bundles(
    opa_bin: str, tmp_path: Path, signing_keys: tuple[Path, Path]
) -> None:
    private, public = signing_keys
    signed = tmp_path / "signed.tar.gz"
    build(str(BUNDLE), str(signed), signing_key=str(private), keyid="ci")
    ok, output = _opa_serves(opa_bin, signed, public, "ci")
    assert ok, output

    # Negative control: OPA refuses the same bundle once a file is changed after signing.
    files = bundles.read_files(signed)
    files["decision.rego"] += b"\n# edited after signing\n"
    import io
    import tarfile

    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(tampered, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("/" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ok, output = _opa_serves(opa_bin, tampered, public, "ci")
    assert not ok and "digest mismatch" in output, output


def test_we_accept_bundles_signed_by_opa(
    opa_bin: str, tmp_path: Path, signing_keys: tuple[Path, Path]
) -> None:
    private, public = signing_keys
    out = tmp_path / "opa-built.tar.gz"
    subprocess.run(
        [opa_bin, "build", "-b", str(BUNDLE), "-o", str(out), "--signing-key", str(private), "--signing-alg", "RS256"],
        check=True, capture_output=True,
    )  # fmt: skip
    files = bundles.read_files(out)
    signing.verify(files, public.read_text(), "default")
    parsed = bundles.parse(files, str(out))
    assert parsed.data["sidecar"]["tenants"]
    assert parsed.data_schema == "sidecar:data.schema.json"  # opa build keeps the manifest's metadata

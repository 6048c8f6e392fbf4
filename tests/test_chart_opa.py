"""The policy the chart ships, and the OPA arguments and config it renders, run on the real `opa` binary."""

from __future__ import annotations

import copy
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.chart_fixtures import (
    AGENT_POD,
    CHART,
    FULL,
    NAME,
    PUBLIC_PEM,
    SERVICE,
    SIGNING_KEY,
    agent_spec,
    chart_fixture,  # noqa: F401  (the `chart` fixture)
    containers,
    one,
    pod_specs,
    render,
)
from tests.conftest import ROOT, free_port


def test_chart_policy_is_the_repository_bundle() -> None:
    """charts/.../policy/ is a copy of rego/ without the tests (a chart must be self-contained)."""
    wanted = {
        p.name: p.read_bytes()
        for p in (ROOT / "rego").iterdir()
        if p.suffix in {".rego", ".json"} and not p.name.endswith("_test.rego")
    }
    copied = {p.name: p.read_bytes() for p in (CHART / "policy").iterdir()}
    assert sorted(copied) == sorted(wanted), "run `make chart-policy` to copy rego/ into the chart"
    stale = [name for name in wanted if copied[name] != wanted[name]]
    assert not stale, f"{stale} differ from rego/: run `make chart-policy`"


def _run_opa(
    opa_bin: str, args: list[str], replace: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str, int]:
    """Start OPA with the chart's arguments, ports and paths swapped for free ones.

    Returns the process, its /health?bundles URL and its API port."""
    port, diag = free_port(), free_port()
    swaps = {"127.0.0.1:8181": f"127.0.0.1:{port}", "0.0.0.0:8282": f"127.0.0.1:{diag}", **replace}
    final = list(args)
    for old, new in swaps.items():
        final = [arg.replace(old, new) for arg in final]
    proc = subprocess.Popen([opa_bin, *final], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, f"http://127.0.0.1:{diag}/health?bundles", port


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _wait_status(url: str, want: int, timeout: float = 30.0) -> int:
    deadline, status = time.monotonic() + timeout, 0
    while time.monotonic() < deadline and (status := _status(url)) != want:
        time.sleep(0.2)
    return status


@pytest.mark.opa
def test_policy_configmap_serves_on_real_opa(chart: Any, opa_bin: str, tmp_path: Path) -> None:
    docs = render(chart)
    data = one(docs, "ConfigMap", "rel-openai-policy-sidecar-policy")["data"]
    # lay the ConfigMap out as the kubelet does: a timestamped hidden directory, ..data, and symlinks
    stamp = tmp_path / "policy" / "..2026_11_24_10_00_00.1"
    stamp.mkdir(parents=True)
    for key, text in data.items():
        (stamp / key).write_text(text)
    (tmp_path / "policy" / "..data").symlink_to(stamp.name)
    for key in data:
        (tmp_path / "policy" / key).symlink_to(f"..data/{key}")
    opa = containers(agent_spec(chart, FULL))[f"{NAME}-opa"]
    proc, health, port = _run_opa(opa_bin, opa["args"], {"/policy": str(tmp_path / "policy")})
    try:
        assert _wait_status(health, 200) == 200, "OPA loads the ConfigMap layout and reports healthy"
        body = json.dumps({"input": {"request": {"operation": "organization.users.list"}}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/data/sidecar/decision", body, method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            decision = json.loads(resp.read())["result"]
        assert decision["allow"] is False and decision["reasons"], decision
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.opa
@pytest.mark.parametrize("signed_with", ["the-key", "another-key"])
def test_bundle_service_config_runs_on_real_opa(
    chart: Any, opa_bin: str, tmp_path: Path, signed_with: str
) -> None:
    from sidecar.policy.build import build

    key = (
        SIGNING_KEY
        if signed_with == "the-key"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    pem = tmp_path / "signing.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    served = tmp_path / "served" / "bundles"
    served.mkdir(parents=True)
    build(
        str(CHART / "policy"),
        str(served / "sidecar.tar.gz"),
        signing_key=str(pem),
        keyid="release",
        revision="r1",
    )
    (tmp_path / "token").write_text("bundle-token-value")
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    values = copy.deepcopy(SERVICE)
    values["opa"]["bundle"]["service"]["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    docs = render(chart, values)
    opa_config = yaml.safe_load(
        one(docs, "ConfigMap", "rel-openai-policy-sidecar-opa-config")["data"]["opa.yaml"]
    )
    assert opa_config["bundles"]["sidecar"]["signing"] == {"keyid": "release"}
    assert opa_config["keys"]["release"] == {"algorithm": "RS256", "key": PUBLIC_PEM}
    assert opa_config["services"]["bundle-service"]["credentials"] == {
        "bearer": {"token_path": f"/var/run/secrets/{NAME}/bundle/token"}
    }
    opa_config["services"]["bundle-service"]["credentials"]["bearer"]["token_path"] = str(tmp_path / "token")
    (tmp_path / "opa.yaml").write_text(yaml.safe_dump(opa_config))
    opa = containers(pod_specs(docs)[AGENT_POD])[f"{NAME}-opa"]
    assert "--config-file=/config/opa.yaml" in opa["args"]
    proc, health, _ = _run_opa(opa_bin, opa["args"], {"/config/opa.yaml": str(tmp_path / "opa.yaml")})
    try:
        if signed_with == "the-key":
            assert _wait_status(health, 200) == 200, "a bundle signed with the configured key activates"
        else:
            time.sleep(3)
            assert _status(health) == 500, "a bundle signed with another key is refused"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        server.shutdown()

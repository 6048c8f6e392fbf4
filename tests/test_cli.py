"""The `sidecar` command as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main
from tests.conftest import ACME_KEY, BUNDLE, PROVIDER_KEY, Upstream, free_port, wait_http


def test_policy_test_passes_on_the_shipped_bundle(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "test"]) == 0
    out = capsys.readouterr().out
    assert "data.sidecar.test_" in out and ": PASS (" in out
    assert out.strip().splitlines()[-1].startswith("PASS: ")


def test_policy_test_reports_failures_like_opa(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.rego").write_text("package demo\n\nallow if input.ok\n")
    (tmp_path / "p_test.rego").write_text(
        'package demo\n\ntest_ok if allow with input as {"ok": true}\n\n'
        'test_broken if allow with input as {"ok": false}\n\ntodo_test_later if false\n'
    )
    assert main(["policy", "test", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "data.demo.test_ok: PASS" in out and "data.demo.test_broken: FAIL" in out
    assert "data.demo.todo_test_later: SKIPPED" in out
    assert "PASS: 1/3" in out and "FAIL: 1/3" in out


def test_policy_eval_prints_the_decision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = {
        "version": 1,
        "request": {"operation": "responses.create", "model": "o1-pro", "tools": [], "headers": {}},
        "subject": {"authenticated": True, "tenant": "acme", "groups": [], "user": None},
        "pii": {"request": {}},
        "budget": {"tenant": "acme", "windows": {}},
        "approval": {"id": None, "status": "none"},
    }
    path = tmp_path / "input.json"
    path.write_text(json.dumps(doc))
    assert main(["policy", "eval", "--input", str(path)]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["allow"] is False and any("o1-pro" in r for r in decision["reasons"])


def test_policy_build_and_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.tar.gz"
    assert main(["policy", "build", str(BUNDLE), "-o", str(out), "--revision", "ci-7"]) == 0
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("/.manifest"))  # type: ignore[arg-type]
    assert manifest["revision"] == "ci-7"
    assert main(["policy", "build", str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_serve_refuses_bad_configuration(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SIDECAR_AUTH_MODE": "static",
        "SIDECAR_STATIC_KEYS_FILE": str(tmp_path / "none.json"),
    }
    proc = subprocess.run([sys.executable, "-m", "sidecar", "serve"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "SIDECAR_STATIC_KEYS_FILE" in proc.stderr


def _bundle_with_a_typo(tmp_path: Path) -> Path:
    """The shipped bundle with acme's `models` misspelled `modles`."""
    folder = tmp_path / "typo"
    folder.mkdir()
    for item in BUNDLE.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    data = json.loads((folder / "data.json").read_text())
    data["sidecar"]["tenants"]["acme"]["modles"] = data["sidecar"]["tenants"]["acme"].pop("models")
    (folder / "data.json").write_text(json.dumps(data))
    return folder


TYPO = "/sidecar/tenants/acme/modles: unknown key 'modles' (did you mean 'models'?)"


def test_policy_test_and_build_refuse_data_that_fails_the_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _bundle_with_a_typo(tmp_path)
    assert main(["policy", "test", str(folder)]) == 2
    assert TYPO in capsys.readouterr().err
    out = tmp_path / "b.tar.gz"
    assert main(["policy", "build", str(folder), "-o", str(out)]) == 2
    assert TYPO in capsys.readouterr().err and not out.exists()
    assert main(["policy", "eval", "--bundle", str(folder), "--input", str(folder / "data.json")]) == 2
    assert TYPO in capsys.readouterr().err


def test_serve_refuses_a_bundle_whose_data_fails_the_schema(tmp_path: Path, keys_file: str) -> None:
    env = {
        **os.environ,
        "SIDECAR_BUNDLE": str(_bundle_with_a_typo(tmp_path)),
        "SIDECAR_STATIC_KEYS_FILE": keys_file,
    }
    proc = subprocess.run([sys.executable, "-m", "sidecar", "serve"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()  # one clear line
    assert line.startswith("sidecar: bundle ") and line.endswith(TYPO), line


def test_serve_drains_in_flight_calls_on_sigterm(upstream: Upstream, keys_file: str, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    env = {
        **os.environ,
        "SIDECAR_PORT": str(port),
        "SIDECAR_ADMIN_PORT": str(admin),
        "SIDECAR_UPSTREAM_URL": upstream.url,
        "SIDECAR_UPSTREAM_API_KEY": PROVIDER_KEY,
        "SIDECAR_STATIC_KEYS_FILE": keys_file,
        "SIDECAR_AUDIT_LOG": str(tmp_path / "audit.log"),
        "SIDECAR_FORWARD_HEADERS": "x-dev-upstream-stream-delay-ms",  # forwarding is by allowlist
    }
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve"], env=env, stderr=subprocess.PIPE)
    try:
        wait_http(f"http://127.0.0.1:{admin}/readyz", proc=proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz") as resp:
            ready = json.load(resp)
        assert ready["ready"] and ready["bundle"]["revision"] == "sidecar-policy-2026.11.24-1"
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz") as resp:
            assert json.load(resp) == {"status": "ok"}

        body = json.dumps(
            {"model": "gpt-4o", "input": "a slow streamed answer please", "stream": True}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/responses",
            data=body,
            headers={
                "Authorization": f"Bearer {ACME_KEY}",
                "Content-Type": "application/json",
                "x-dev-upstream-stream-delay-ms": "60",
            },
        )
        received: list[bytes] = []
        started = threading.Event()

        def consume() -> None:
            with urllib.request.urlopen(request, timeout=30) as resp:
                for line in resp:
                    received.append(line)
                    started.set()

        reader = threading.Thread(target=consume)
        reader.start()
        assert started.wait(10)
        proc.send_signal(signal.SIGTERM)
        reader.join(30)
        assert proc.wait(30) == 0
        text = b"".join(received).decode()
        assert "event: response.completed" in text  # the in-flight stream finished before exit
        logs = proc.stderr.read().decode() if proc.stderr else ""
        assert '"msg":"draining"' in logs and '"msg":"stopped"' in logs
        assert PROVIDER_KEY not in logs and ACME_KEY not in logs
    finally:
        if proc.poll() is None:
            proc.kill()


def _budget(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SIDECAR_REDIS_URL": redis_url}
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "budget", *args], env=env, capture_output=True, text=True
    )


async def test_budget_cli_against_redis(make_sidecar: Any, redis_url: str) -> None:
    import openai

    assert _budget(redis_url, "reset", "--tenant", "acme").returncode == 0
    done = _budget(redis_url, "set", "--tenant", "acme", "--limit", "day=3000", "--used", "day=100", "--json")
    assert done.returncode == 0, done.stderr
    day = json.loads(done.stdout)["windows"]["day"]
    assert (day["limit"], day["used"], day["remaining"]) == (3000, 100, 2900) and day["resets_at"].endswith(
        "Z"
    )

    sc = await make_sidecar(
        SIDECAR_REDIS_URL=redis_url
    )  # the stored limit caps the policy's, on every replica
    client = openai.AsyncOpenAI(base_url=sc.url, api_key=ACME_KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.responses.create(model="gpt-4o-mini", input="too big for 2900 tokens")
    assert caught.value.code == "budget_exceeded"

    shown = _budget(redis_url, "show", "--tenant", "acme")
    assert shown.returncode == 0 and "day" in shown.stdout and "3,000" in shown.stdout
    assert _budget(redis_url, "reset", "--tenant", "acme").returncode == 0
    cleared = json.loads(_budget(redis_url, "show", "--tenant", "acme", "--json").stdout)["windows"]["day"]
    assert cleared["used"] == 0 and cleared["limit"] == 3000  # usage gone, the stored limit stays
    assert _budget(redis_url, "set", "--tenant", "acme", "--limit", "day=none").returncode == 0
    bad = _budget(redis_url, "set", "--tenant", "acme", "--used", "week=5")
    assert bad.returncode == 2 and "WINDOW=N" in bad.stderr


def test_budget_cli_needs_redis() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SIDECAR_REDIS_URL"}
    proc = subprocess.run([sys.executable, "-m", "sidecar", "budget", "show", "--tenant", "acme"], env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "SIDECAR_REDIS_URL" in proc.stderr

"""Start the processes under test: dev-upstream, the sidecar (embedded or daemon engine), a real OPA,
the bare aiohttp pass-through, and LiteLLM proxy (from its own virtualenv, offline)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procs import HOST, Children, Pinning, free_port, note, pinned, run_quiet, wait_http

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PROVIDER_KEY = "sk-bench"
CALLER_KEY = "ck-acme-agent-key"  # tests/conftest.py CALLERS: tenant acme
CALLER = {"sub": "system:serviceaccount:agents:support-bot", "tenant": "acme", "groups": ["agents"]}
LITELLM_MASTER_KEY = "sk-litellm-bench-master"
LITELLM_VENV = ROOT / ".bench-venv"
LITELLM_OFFLINE_ENV = {
    # Use the copies bundled with the package instead of fetching them (docs: "Outbound Requests and
    # Offline Mode"); LITELLM_OFFLINE_MODE covers them all in newer releases.
    "LITELLM_OFFLINE_MODE": "true",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_MODE": "PRODUCTION",  # do not load a .env from around the install
    "LITELLM_LOG": "ERROR",  # also quiets uvicorn's access log, as the sidecar runs without one
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
    "DISABLE_ADMIN_UI": "True",
}


@dataclass
class Service:
    """A running process under test; `cpu_pids` are the processes whose CPU counts for it."""

    name: str
    base: str  # http://127.0.0.1:PORT
    key: str  # the bearer token its callers send
    proc: subprocess.Popen[Any]
    extra: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)  # e.g. {"opa": proc}
    info: str = ""
    audit: Path | None = None  # the sidecar's audit log: per-stage timings


class Launcher:
    def __init__(self, children: Children, pin: Pinning, workdir: Path, bundle: Path) -> None:
        self.bundle = bundle  # served by the OPA daemon and loaded by the embedded engine alike
        self.children = children
        self.pin = pin
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def _log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def upstream(self) -> Service:
        port = free_port()
        argv = [sys.executable, "-m", "sidecar", "dev-upstream", "--host", HOST, "--port", str(port)]
        argv += ["--api-key", PROVIDER_KEY]
        proc = self.children.start(pinned(argv, self.pin.others), log=self._log("dev-upstream"), cwd=ROOT)
        base = f"http://{HOST}:{port}"
        wait_http(base + "/_dev/health", proc, want=200)
        return Service("direct", base, PROVIDER_KEY, proc, info="dev-upstream")

    def opa(self, opa_bin: str) -> tuple[subprocess.Popen[Any], str]:
        """`opa run --server` on the shipped bundle, on the sidecar's CPU (they share its pod)."""
        port = free_port()
        argv = [opa_bin, "run", "--server", "--addr", f"{HOST}:{port}", "--log-level", "error"]
        argv += ["--disable-telemetry", "-b", str(self.bundle)]
        proc = self.children.start(pinned(argv, self.pin.target), log=self._log("opa"))
        url = f"http://{HOST}:{port}"
        wait_http(url + "/health", proc, want=200)
        return proc, url

    def sidecar(self, upstream: Service, opa: tuple[subprocess.Popen[Any], str] | None = None) -> Service:
        engine = "daemon" if opa is not None else "embedded"
        keys = self.workdir / "keys.json"
        keys.write_text(json.dumps({CALLER_KEY: CALLER}))
        port, admin = free_port(), free_port()
        # Other SIDECAR_* settings of the caller's environment apply (e.g. SIDECAR_PII_MODE=off make bench).
        audit = self.workdir / f"audit-{engine}.log"
        env = {k: v for k, v in os.environ.items() if k not in {"SIDECAR_OPA_URL", "SIDECAR_BUNDLE_URL"}}
        env |= {
            "SIDECAR_HOST": HOST,
            "SIDECAR_PORT": str(port),
            "SIDECAR_ADMIN_HOST": HOST,
            "SIDECAR_ADMIN_PORT": str(admin),
            "SIDECAR_UPSTREAM_URL": upstream.base,
            "SIDECAR_UPSTREAM_API_KEY": PROVIDER_KEY,
            "SIDECAR_STATIC_KEYS_FILE": str(keys),
            "SIDECAR_AUDIT_LOG": str(audit),
            "SIDECAR_LOG_LEVEL": "warning",
            "SIDECAR_BUNDLE": str(self.bundle),
        }
        if opa is not None:
            env["SIDECAR_OPA_URL"] = opa[1]
        cli = Path(sys.executable).with_name("sidecar")
        argv = [str(cli), "serve"] if cli.exists() else [sys.executable, "-m", "sidecar", "serve"]
        proc = self.children.start(pinned(argv, self.pin.target), env=env, log=self._log(f"sidecar-{engine}"))
        wait_http(f"http://{HOST}:{admin}/readyz", proc, want=200)
        extra = {"opa": opa[0]} if opa is not None else {}
        loop_name = env.get("SIDECAR_EVENT_LOOP", "uvloop (default)")
        base = f"http://{HOST}:{port}"
        return Service(f"sidecar {engine}", base, CALLER_KEY, proc, extra, f"loop {loop_name}", audit)

    def passthrough(self, upstream: Service) -> Service:
        port = free_port()
        argv = [sys.executable, str(BENCH / "passthrough.py"), "--host", HOST, "--port", str(port)]
        argv += ["--upstream", upstream.base, "--api-key", PROVIDER_KEY]
        proc = self.children.start(pinned(argv, self.pin.target), log=self._log("passthrough"))
        base = f"http://{HOST}:{port}"
        wait_http(base + "/_dev/health", proc, want=200)  # forwarded: answers once both are up
        return Service("aiohttp pass-through", base, "unused", proc, info="bench/passthrough.py, uvloop")

    def litellm(self, upstream: Service, litellm_bin: Path) -> Service:
        port = free_port()
        config = self.workdir / "litellm.yaml"
        config.write_text(litellm_config(upstream.base))
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DIRECT_URL", "REDIS_URL"}}
        env |= LITELLM_OFFLINE_ENV
        argv = [str(litellm_bin), "--config", str(config), "--host", HOST, "--port", str(port)]
        argv += ["--num_workers", "1", "--telemetry", "False"]
        proc = self.children.start(pinned(argv, self.pin.target), env=env, log=self._log("litellm"))
        base = f"http://{HOST}:{port}"
        wait_http(base + "/health/liveliness", proc, timeout=180, want=200)
        return Service("LiteLLM proxy", base, LITELLM_MASTER_KEY, proc, info=f"litellm {litellm_version()}")


def litellm_config(upstream: str) -> str:
    """gpt-4o-mini (and any other name) routed to dev-upstream as an OpenAI-compatible base; no DB."""
    entry = '    litellm_params:\n      model: {model}\n      api_base: {base}/v1\n      api_key: "{key}"\n'
    lines = ["model_list:"]
    for name, model in (("gpt-4o-mini", "openai/gpt-4o-mini"), ("*", "openai/*")):
        lines.append(f'  - model_name: "{name}"')
        lines.append(entry.format(model=model, base=upstream, key=PROVIDER_KEY).rstrip("\n"))
    lines += [
        "litellm_settings:",
        "  telemetry: false",
        "  drop_params: true",
        "general_settings:",
        f'  master_key: "{LITELLM_MASTER_KEY}"',
        "  disable_spend_logs: true",
        "",
    ]
    return "\n".join(lines)


def litellm_version() -> str:
    py = LITELLM_VENV / "bin" / "python"
    code, out, _ = run_quiet(
        [str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"], 60
    )
    return out.strip() if code == 0 and out.strip() else "?"


def ensure_litellm(install: bool) -> tuple[Path | None, str]:
    """The `litellm` CLI from .bench-venv, installing `litellm[proxy]` from PyPI there if needed."""
    cli = LITELLM_VENV / "bin" / "litellm"
    if cli.exists():
        return cli, ""
    if not install:
        return None, f"{cli} is missing and --no-install was given"
    note(f"installing litellm[proxy] into {LITELLM_VENV} (its own virtualenv; takes a few minutes)")
    if not (LITELLM_VENV / "bin" / "python").exists():
        code, _, err = run_quiet([sys.executable, "-m", "venv", str(LITELLM_VENV)], 300)
        if code != 0:
            return None, f"python -m venv {LITELLM_VENV} failed: {err[-500:]}"
    pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    code, _, err = run_quiet([*pip, "litellm[proxy]"], 1800)
    if code != 0 or not cli.exists():
        return None, f"pip install 'litellm[proxy]' failed (exit {code}): {err[-800:]}"
    return cli, ""


def find_opa() -> tuple[str | None, str]:
    """The opa binary from scripts/get-opa.sh (PATH, cache, or an offline build)."""
    code, out, err = run_quiet(["bash", str(ROOT / "scripts" / "get-opa.sh")], 1800)
    path = out.strip().splitlines()[-1] if out.strip() else ""
    if code != 0 or not path or not os.access(path, os.X_OK):
        return None, f"scripts/get-opa.sh failed (exit {code}): {err[-800:]}"
    return path, ""


def bench_bundle(source: Path, workdir: Path) -> Path:
    """A copy of the bundle in which the benchmark tenant's budget and rate limit cannot bind.

    Reservation and settlement still run on every call (the limits are set, just out of reach), so their
    cost is measured; only the refusals, which would make thousands of fast 429s of the benchmark, go.
    """
    target = workdir / "bench-bundle"
    shutil.copytree(source, target, dirs_exist_ok=True)
    data_file = target / "data.json"
    data = json.loads(data_file.read_text())
    tenant = data.setdefault("sidecar", {}).setdefault("tenants", {}).setdefault(CALLER["tenant"], {})
    tenant["budget"] = {**tenant.get("budget", {}), "limits": {"minute": 10**12, "day": 10**13}}
    tenant["rate_limit"] = None
    data_file.write_text(json.dumps(data))
    return target

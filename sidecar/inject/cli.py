"""`sidecar inject-webhook`: serve the mutating admission webhook, or `--check URL` a running one.

Every flag can come from an environment variable (the flag wins):

| flag | variable | default |
|---|---|---|
| `--host` | `SIDECAR_INJECT_HOST` | `0.0.0.0` |
| `--port` | `SIDECAR_INJECT_PORT` | `8443` |
| `--tls-cert` / `--tls-key` | `SIDECAR_INJECT_TLS_CERT` / `SIDECAR_INJECT_TLS_KEY` | required (PEM files) |
| `--config` | `SIDECAR_INJECT_CONFIG` | required: the injection config (see `sidecar/inject/config.py`) |
| `--reload-seconds` | `SIDECAR_INJECT_RELOAD_SECONDS` | `10` s between checks for changed files (0: never) |
| `--log-level` | `SIDECAR_LOG_LEVEL` | `info` |

`--check URL [--ca-file CA]` posts a sample pod's AdmissionReview to a running webhook and exits 0 when the
answer injects every container the webhook says it injects (the chart's `helm test` hook runs this).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
import uuid
from typing import Any

SAMPLE_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"generateName": "inject-check-", "namespace": "default"},
    "spec": {"containers": [{"name": "agent", "image": "agent:check"}]},
}


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"SIDECAR_INJECT_{name}", default)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser(
        "inject-webhook",
        help="the Kubernetes mutating admission webhook that injects the sidecar and OPA into pods",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument("--host", default=_env("HOST", "0.0.0.0"), help="listen address")
    cmd.add_argument("--port", type=int, default=_env("PORT", "8443"), help="listen port (HTTPS)")
    cmd.add_argument("--tls-cert", default=_env("TLS_CERT"), help="PEM certificate (chain) to serve")
    cmd.add_argument("--tls-key", default=_env("TLS_KEY"), help="PEM private key")
    cmd.add_argument("--config", default=_env("CONFIG"), help="injection config file (YAML or JSON)")
    cmd.add_argument("--reload-seconds", type=float, default=_env("RELOAD_SECONDS", "10"))
    cmd.add_argument("--log-level", default=os.environ.get("SIDECAR_LOG_LEVEL", "info"))
    cmd.add_argument("--check", metavar="URL", help="check a running webhook (e.g. https://svc:443/mutate)")
    cmd.add_argument("--ca-file", help="with --check: CA bundle that signed the webhook's certificate")
    cmd.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.check:
        ok, message = check(args.check, args.ca_file)
        print(message, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    missing = [
        flag for flag, value in (("--config", args.config), ("--tls-cert", args.tls_cert)) if not value
    ]
    if not args.tls_key:
        missing.append("--tls-key")
    if missing:
        raise ValueError(
            f"inject-webhook needs {', '.join(missing)} (or SIDECAR_INJECT_CONFIG / _TLS_CERT / _TLS_KEY): "
            "the API server only calls webhooks over HTTPS"
        )
    from sidecar import logs
    from sidecar.inject.server import WebhookState, serve

    logs.configure(args.log_level)
    state = WebhookState.load(args.config, args.tls_cert, args.tls_key)
    asyncio.run(serve(state, args.host, args.port, args.reload_seconds))
    return 0


def _post(url: str, body: bytes, ca_file: str | None, timeout: float) -> tuple[int, Any]:
    context = ssl.create_default_context(cafile=ca_file) if url.startswith("https:") else None
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def check(url: str, ca_file: str | None = None, timeout: float = 10.0) -> tuple[bool, str]:
    """Post a sample pod CREATE; succeed when the patch adds the containers `/readyz` names."""
    uid = str(uuid.uuid4())
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "default",
            "object": SAMPLE_POD,
        },
    }
    try:
        status, answer = _post(url, json.dumps(review).encode(), ca_file, timeout)
        ready_url = url.rsplit("/", 1)[0] + "/readyz"
        context = ssl.create_default_context(cafile=ca_file) if url.startswith("https:") else None
        with urllib.request.urlopen(ready_url, timeout=timeout, context=context) as resp:
            expected = set(json.loads(resp.read())["containers"])
    except (OSError, ValueError, KeyError) as exc:
        return False, f"{url}: {exc}"
    if status != 200 or not isinstance(answer, dict):
        return False, f"{url}: HTTP {status}: {answer}"
    response = answer.get("response") or {}
    if response.get("uid") != uid or response.get("allowed") is not True or "patch" not in response:
        return False, f"{url}: expected an allowed response with a patch for uid {uid}, got {response}"
    patch = json.loads(base64.b64decode(response["patch"]))
    added = {
        c["name"] for op in patch if op["path"] == "/spec/initContainers" for c in op["value"] if "name" in c
    }
    if not expected or added != expected:
        return False, f"{url}: the patch adds init containers {sorted(added)}, expected {sorted(expected)}"
    return True, f"{url}: OK, injects {', '.join(sorted(added))}"

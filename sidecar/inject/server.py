"""The webhook's HTTPS server: `POST /mutate` (AdmissionReview v1 in, AdmissionReview with a JSONPatch out),
`GET /healthz` and `GET /readyz`.

A body that is not an `admission.k8s.io/v1` AdmissionReview with a request uid gets HTTP 400 and
`{"error": "..."}`: there is no uid to answer to, and the API server then applies the webhook's
failurePolicy. A review of a malformed pod, or of one that clashes with the injection, is answered with
`allowed: false` and a 400 status naming the problem. Anything that is not a pod CREATE is allowed unchanged.

The TLS certificate and key, and the injection config, are re-read when their files change (cert-manager
rotation, a `helm upgrade` of the ConfigMap); a config that no longer parses is logged and the last good one
kept.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sidecar.inject import config as injection
from sidecar.inject.config import InjectionConfig
from sidecar.inject.patch import PodError, plan

log = logging.getLogger(__name__)

API_VERSION = "admission.k8s.io/v1"
MAX_REVIEW_BYTES = 8 * 1024 * 1024


class ReviewError(ValueError):
    """The body is not an AdmissionReview this webhook can answer."""


def _review(response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}


def respond(doc: Any, cfg: InjectionConfig) -> dict[str, Any]:
    """The AdmissionReview answering `doc` (a parsed AdmissionReview request)."""
    if not isinstance(doc, dict):
        raise ReviewError("expected an AdmissionReview JSON object")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != "AdmissionReview":
        got = f"{doc.get('apiVersion')!r}/{doc.get('kind')!r}"
        raise ReviewError(f"expected apiVersion {API_VERSION} kind AdmissionReview, got {got}")
    request = doc.get("request")
    if not isinstance(request, dict):
        raise ReviewError("AdmissionReview has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewError("AdmissionReview request has no uid")
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    kind = request["kind"] if isinstance(request.get("kind"), dict) else {}
    if kind.get("kind") != "Pod" or kind.get("group", "") != "" or request.get("operation") != "CREATE":
        response["auditAnnotations"] = {"injection": "skipped: not a pod CREATE"}
        return _review(response)
    try:
        outcome = plan(request.get("object"), cfg)
    except PodError as exc:
        message = f"{cfg.prefix} injection: {exc}"
        response["allowed"] = False
        response["status"] = {"status": "Failure", "message": message, "reason": "BadRequest", "code": 400}
        return _review(response)
    if outcome.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(outcome.patch).encode()).decode()
    response["auditAnnotations"] = {"injection": outcome.reason}
    return _review(response)


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass(slots=True)
class WebhookState:
    """The current injection config and TLS context, re-read when their files change."""

    config_path: str
    cfg: InjectionConfig
    tls_cert: str = ""
    tls_key: str = ""
    ssl_context: ssl.SSLContext | None = None
    _seen: dict[str, tuple[int, int, int] | None] = field(default_factory=dict)

    @classmethod
    def load(cls, config_path: str, tls_cert: str = "", tls_key: str = "") -> WebhookState:
        state = cls(config_path, injection.load(config_path), tls_cert, tls_key)
        if tls_cert or tls_key:
            if not (tls_cert and tls_key):
                raise ValueError("--tls-cert and --tls-key go together")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(tls_cert, tls_key)
            state.ssl_context = context
        state._seen = {p: _signature(p) for p in (config_path, tls_cert, tls_key) if p}
        return state

    def _changed(self, *paths: str) -> bool:
        changed = False
        for path in paths:
            now = _signature(path)
            if now is not None and now != self._seen.get(path):
                self._seen[path] = now
                changed = True
        return changed

    def refresh(self) -> None:
        """Re-read whatever changed on disk; keep the old value when the new one is unusable."""
        if self._changed(self.config_path):
            try:
                self.cfg = injection.load(self.config_path)
                log.info("injection config reloaded", extra={"config": self.config_path})
            except (OSError, ValueError) as exc:
                log.error("injection config not reloaded; the last good one stays", extra={"error": str(exc)})
        if self.ssl_context is not None and self._changed(self.tls_cert, self.tls_key):
            try:
                self.ssl_context.load_cert_chain(self.tls_cert, self.tls_key)
                log.info("TLS certificate reloaded", extra={"cert": self.tls_cert})
            except (OSError, ssl.SSLError) as exc:
                log.error("TLS certificate not reloaded; keeping the old one", extra={"error": str(exc)})

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.refresh()


STATE = web.AppKey("state", WebhookState)


async def _mutate(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        doc = json.loads(await request.read())
        answer = respond(doc, state.cfg)
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError and ReviewError are ValueErrors
        message = str(exc) if isinstance(exc, ReviewError) else f"body is not JSON: {exc}"
        log.warning("bad admission review", extra={"error": message})
        return web.json_response({"error": message}, status=400)
    req = doc["request"]
    obj = req["object"] if isinstance(req.get("object"), dict) else {}
    meta = obj["metadata"] if isinstance(obj.get("metadata"), dict) else {}
    result = answer["response"]
    log.info(
        "admission review",
        extra={
            "uid": req["uid"],
            "namespace": req.get("namespace"),
            "pod": meta.get("name") or meta.get("generateName"),
            "allowed": result["allowed"],
            "outcome": result.get("auditAnnotations", {}).get("injection")
            or result.get("status", {}).get("message"),
        },
    )
    return web.json_response(answer)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    cfg = request.app[STATE].cfg
    return web.json_response({"ready": True, "prefix": cfg.prefix, "containers": sorted(cfg.container_names)})


def build_app(state: WebhookState) -> web.Application:
    app = web.Application(client_max_size=MAX_REVIEW_BYTES)
    app[STATE] = state
    app.router.add_post("/mutate", _mutate)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


async def serve(state: WebhookState, host: str, port: int, reload_seconds: float) -> None:
    """Serve until SIGTERM/SIGINT, then finish in-flight reviews and exit."""
    runner = web.AppRunner(build_app(state), handle_signals=False, access_log=None, shutdown_timeout=10)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=state.ssl_context, reuse_address=True).start()
    log.info(
        "inject-webhook serving",
        extra={
            "listen": f"{host}:{port}",
            "tls": state.ssl_context is not None,
            "config": state.config_path,
            "containers": sorted(state.cfg.container_names),
        },
    )
    watcher = asyncio.create_task(state.watch(reload_seconds)) if reload_seconds > 0 else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        await runner.cleanup()

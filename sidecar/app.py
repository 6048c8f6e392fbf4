"""Wiring: build the pipeline from settings, serve the data and admin listeners, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from sidecar.approvals.admin import ApprovalsApi, admin_authenticator
from sidecar.approvals.approvers import ApproverCheck
from sidecar.approvals.gate import Approvals
from sidecar.approvals.store import build_store as build_approval_store
from sidecar.budget.gate import Budgets
from sidecar.budget.memory_store import MemoryBudgetStore
from sidecar.budget.redis_store import RedisBudgetStore
from sidecar.budget.store import BudgetStore, StoreUnavailable
from sidecar.config import Settings
from sidecar.listener import GuardedRunner
from sidecar.pipeline.audit import AuditLog
from sidecar.pipeline.authenticate import build_authenticator
from sidecar.pipeline.decide import Decider
from sidecar.pipeline.enforce import Enforcer
from sidecar.pipeline.forward import Forwarder
from sidecar.pipeline.inspect import encoding_for
from sidecar.policy.bundle import Bundle, BundleError, read_tarball
from sidecar.policy.daemon import DaemonEngine
from sidecar.policy.embedded import EmbeddedEngine
from sidecar.policy.engine import PolicyEngine
from sidecar.policy.reload import BundleReloader, accept, load_configured
from sidecar.proxy import Proxy, not_found, openai_errors
from sidecar.telemetry import METRICS_CONTENT_TYPE, Telemetry
from sidecar.telemetry import setup as setup_telemetry

if TYPE_CHECKING:
    from sidecar.pii.scanner import PresidioScanner

log = logging.getLogger(__name__)


async def initial_bundle(settings: Settings) -> Bundle:
    """The bundle to start with: downloaded from SIDECAR_BUNDLE_URL when set, else SIDECAR_BUNDLE."""
    if not settings.bundle_url:
        return load_configured(settings)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.get(settings.bundle_url) as resp,
    ):
        if resp.status != 200:
            raise BundleError(f"{settings.bundle_url}: HTTP {resp.status}")
        blob = await resp.read()
    return accept(read_tarball(blob, settings.bundle_url), settings.bundle_url, settings)


async def build_engine(settings: Settings) -> PolicyEngine:
    """The OPA daemon's REST API when SIDECAR_OPA_URL is set, else the embedded engine on the bundle."""
    if settings.opa_url:
        return DaemonEngine(settings.opa_url, settings.decision_path, settings.opa_timeout)
    bundle = await initial_bundle(settings)
    return EmbeddedEngine(bundle, settings.decision_path, settings.decision_cache_entries)


@dataclass(slots=True)
class Sidecar:
    settings: Settings
    engine: PolicyEngine
    proxy: Proxy
    reloader: BundleReloader | None = None
    scanner: PresidioScanner | None = None
    budgets: Budgets | None = None
    approvals: Approvals | None = None
    draining: bool = False
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def create(cls, settings: Settings, telemetry: Telemetry | None = None) -> Sidecar:
        # First, so that a missing OTLP exporter package fails start-up before anything is built.
        tel = telemetry if telemetry is not None else setup_telemetry(settings)
        engine = await build_engine(settings)
        reloader = BundleReloader(engine, settings) if isinstance(engine, EmbeddedEngine) else None
        store: BudgetStore = (
            RedisBudgetStore(settings.redis_url, timeout=settings.redis_timeout)
            if settings.redis_url
            else MemoryBudgetStore()
        )
        budgets = Budgets(store, settings, lambda text, model: len(encoding_for(model).encode(text)))
        tel.observe_budgets(budgets)
        shared = store.redis if isinstance(store, RedisBudgetStore) else None  # one pool for both stores
        approvals = Approvals(build_approval_store(settings, shared), settings)
        tel.observe_approvals_pending(lambda: dict(approvals.pending))
        scanner = None
        if settings.pii_mode != "off":
            from sidecar.pii.scanner import PresidioMasker, PresidioScanner

            scanner = PresidioScanner(settings)
        proxy = Proxy(
            settings=settings,
            authenticator=build_authenticator(settings),
            decider=Decider(engine, settings.fail_open),
            enforcer=Enforcer(
                approvals=approvals,
                budget=tel.traced_budget(budgets),
                masker=PresidioMasker() if scanner else None,
            ),
            forwarder=Forwarder(settings),
            audit=AuditLog(settings.audit_log),
            revision=lambda: engine.revision,
            pii=scanner,
            settler=budgets,
            budget_view=budgets.input_doc,
            approvals=approvals,
            telemetry=tel,
        )
        if scanner is not None:
            proxy.transforms = scanner.transforms
        return cls(settings, engine, proxy, reloader, scanner, budgets, approvals)

    async def start(self) -> None:
        await self.engine.start()
        await self.proxy.forwarder.start()
        if self.scanner is not None:
            await self.scanner.start()  # workers load their models now, not on the first call
        if isinstance(self.engine, DaemonEngine):
            with contextlib.suppress(Exception):
                await self.engine.refresh_revision()
        if self.reloader is not None:
            self._tasks.append(asyncio.create_task(self.reloader.run(self._stop)))
        if self.approvals is not None:
            self._tasks.append(asyncio.create_task(self.approvals.count_pending(self._stop)))

    async def close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.proxy.forwarder.close()
        await self.engine.close()
        if self.budgets is not None:
            await self.budgets.store.close()
        if self.approvals is not None:
            await self.approvals.close()
        self.proxy.audit.close()
        self.proxy.telemetry.shutdown()

    def data_app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes, middlewares=[openai_errors])
        app.router.add_route("*", "/v1/{tail:.*}", self.proxy.handle)
        app.router.add_route("*", "/{tail:.*}", not_found)
        return app

    def admin_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        if self.approvals is not None:
            check = ApproverCheck(self.engine, self.settings.approver_decision_path)
            auth = admin_authenticator(self.settings)
            ApprovalsApi(self.approvals.store, check, auth, self.proxy.audit).routes(app)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self.proxy.telemetry.render_metrics()
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, detail = await self.engine.ready()
        store_ok, store_detail = True, "memory" if not self.settings.redis_url else "redis"
        if self.budgets is not None:
            try:
                await self.budgets.store.ping()
            except StoreUnavailable as exc:
                store_ok, store_detail = False, f"unreachable: {exc}"
        if self.draining:
            ready, detail = False, "draining"
        # No working PII pool (a worker died, the pool is being replaced): not ready until it is back.
        pii = self.scanner.pool.status() if self.scanner is not None else {"ok": True, "state": "off"}
        doc = {
            "ready": ready and store_ok and pii["ok"],
            "policy": {"engine": self.engine.name, "detail": detail},
            "store": {"ok": store_ok, "detail": store_detail},
            "pii": pii,
            "bundle": {"revision": self.engine.revision},
        }
        return web.json_response(doc, status=200 if doc["ready"] else 503)


async def listen(sidecar: Sidecar) -> list[web.AppRunner]:
    """Start the data and admin listeners; cleaning up the returned runners stops them (data first)."""
    settings = sidecar.settings
    # Both listeners get the slow-client timeouts (sidecar.listener). The data listener leaves
    # Content-Encoding to the sidecar (sidecar.pipeline.receive), so every refusal is its own, audited.
    keepalive = {"keepalive_timeout": settings.client_keepalive_timeout}
    runners: list[web.AppRunner] = [
        GuardedRunner(
            sidecar.data_app(),
            header_timeout=settings.client_header_timeout,
            handler_args={**keepalive, "auto_decompress": False},
            handle_signals=False,
            shutdown_timeout=settings.shutdown_timeout,
        ),
        GuardedRunner(
            sidecar.admin_app(),
            header_timeout=settings.client_header_timeout,
            handler_args=keepalive,
            handle_signals=False,
        ),
    ]
    for runner in runners:
        await runner.setup()
    await web.TCPSite(runners[0], settings.host, settings.port, reuse_address=True).start()
    await web.TCPSite(runners[1], settings.admin_host, settings.admin_port, reuse_address=True).start()
    return runners


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then stop accepting, finish in-flight calls, and exit."""
    sidecar = await Sidecar.create(settings)
    await sidecar.start()
    runners = await listen(sidecar)
    log.info(
        "sidecar serving",
        extra={
            "listen": f"{settings.host}:{settings.port}",
            "admin": f"{settings.admin_host}:{settings.admin_port}",
            "engine": sidecar.engine.name,
            "revision": sidecar.engine.revision,
            "upstream": settings.upstream_url,
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining", extra={"timeout_s": settings.shutdown_timeout})
    sidecar.draining = True
    for runner in runners:
        await runner.cleanup()  # stops listening, then waits for in-flight handlers
    await sidecar.close()
    log.info("stopped")

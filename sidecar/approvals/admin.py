"""The approvals API on the admin port (SIDECAR_ADMIN_PORT), for approvers and their tools:

    GET  /v1/approvals[?status=pending&tenant=acme]   list (newest last)
    GET  /v1/approvals/{id}                          one approval
    POST /v1/approvals/{id}/approve   {"reason"?}   approve (the approver policy decides who may)
    POST /v1/approvals/{id}/deny      {"reason"?}   deny

Callers authenticate with `Authorization: Bearer` (a JWT verified like the data path's, by default; see
SIDECAR_ADMIN_AUTH). Errors are OpenAI-shaped, like the data path's.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from sidecar.approvals.approvers import ApproverCheck, act
from sidecar.approvals.gate import store_down
from sidecar.approvals.model import STATUSES, Status
from sidecar.approvals.store import ApprovalStore
from sidecar.budget.store import StoreUnavailable
from sidecar.config import ConfigError, Settings
from sidecar.errors import SidecarError, error_response, invalid_request
from sidecar.identity.base import Authenticator
from sidecar.identity.jwt import JwtCallers, JwtConfig, JwtVerifier
from sidecar.identity.static import StaticKeys
from sidecar.pipeline.audit import AuditLog
from sidecar.pipeline.context import Subject, new_request_id


def admin_authenticator(settings: Settings) -> Authenticator | None:
    """SIDECAR_ADMIN_AUTH: `jwt` (the default when an OIDC issuer is configured; audience
    SIDECAR_ADMIN_JWT_AUDIENCE, else SIDECAR_JWT_AUDIENCE), `static` (the default otherwise: keys from
    SIDECAR_STATIC_KEYS_FILE, for development), or `off` (no approvals API)."""
    mode = settings.admin_auth or ("jwt" if settings.oidc_issuer else "static")
    if mode == "off":
        return None
    if mode == "jwt":
        config = JwtConfig.from_settings(settings, audience=settings.admin_jwt_audience)
        return JwtCallers(JwtVerifier(config), settings.tenant_claim, settings.groups_claim)
    if not settings.static_keys_file:
        raise ConfigError("SIDECAR_ADMIN_AUTH=static needs SIDECAR_STATIC_KEYS_FILE")
    return StaticKeys(settings.static_keys_file)


class ApprovalsApi:
    def __init__(
        self,
        store: ApprovalStore,
        check: ApproverCheck,
        auth: Authenticator | None,
        audit: AuditLog | None = None,
    ) -> None:
        self._store = store
        self._check = check
        self._auth = auth
        self._audit = audit

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/approvals", self._guard(self.list))
        app.router.add_get("/v1/approvals/{id}", self._guard(self.get))
        app.router.add_post("/v1/approvals/{id}/approve", self._guard(self.approve))
        app.router.add_post("/v1/approvals/{id}/deny", self._guard(self.deny))

    def _guard(self, handler: Any) -> Any:
        async def run(request: web.Request) -> web.StreamResponse:
            try:
                if self._auth is None:
                    raise SidecarError(
                        503, "admin_auth_off", "The approvals API is off (SIDECAR_ADMIN_AUTH=off)."
                    )
                approver = await self._auth.authenticate(request)
                return await handler(request, approver)  # type: ignore[no-any-return]
            except StoreUnavailable:
                return error_response(store_down(), new_request_id())
            except SidecarError as err:
                return error_response(err, new_request_id())

        return run

    async def list(self, request: web.Request, approver: Subject) -> web.Response:
        status = request.query.get("status")
        if status is not None and status not in STATUSES:
            raise invalid_request(f"status must be one of {', '.join(STATUSES)}")
        found = await self._store.list(status, request.query.get("tenant"))
        now = time.time()
        return web.json_response({"object": "list", "data": [a.public(now) for a in found]})

    async def get(self, request: web.Request, approver: Subject) -> web.Response:
        approval = await self._store.get(request.match_info["id"])
        if approval is None:
            raise SidecarError(404, "approval_not_found", f"No approval {request.match_info['id']}.")
        return web.json_response(approval.public(time.time()))

    async def approve(self, request: web.Request, approver: Subject) -> web.Response:
        return await self._act(request, approver, "approved")

    async def deny(self, request: web.Request, approver: Subject) -> web.Response:
        return await self._act(request, approver, "denied")

    async def _act(self, request: web.Request, approver: Subject, verdict: Status) -> web.Response:
        reason = None
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                raise invalid_request('The body must be JSON: {"reason": "..."}') from None
            if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str | None):
                raise invalid_request("The body must be an object with an optional string 'reason'.")
            reason = body.get("reason")
        approval = await act(
            self._store,
            self._check,
            request.match_info["id"],
            verdict,
            approver=approver,
            reason=reason,
        )
        doc = approval.public(time.time())
        if self._audit is not None:
            self._audit.approval(verdict, doc, approver.sub)
        return web.json_response(doc)

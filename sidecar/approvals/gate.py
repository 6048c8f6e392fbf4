"""Approvals in the request path: find the approval a gated call is bound to (before the policy is asked
again with its status), hold the call while none is approved, and let an approved one pass exactly once.

"Exactly once" is a claim held while the call is forwarded: the call consumes the approval when the
upstream accepted it, and releases it when the call failed (a refusal by the budget, an upstream error,
a timeout), so a failed call never uses up a human's approval.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections import Counter

import aiohttp
import orjson
from aiohttp import web

from sidecar.approvals import model
from sidecar.approvals.model import Approval, ApprovalError
from sidecar.approvals.spool import SpooledBody, spool_limit
from sidecar.approvals.store import ApprovalStore
from sidecar.budget.store import StoreUnavailable
from sidecar.config import Settings
from sidecar.documents import ApprovalDoc, Decision
from sidecar.errors import SidecarError, no_retry
from sidecar.pipeline.context import ApprovalTicket, Call
from sidecar.pipeline.inspect import Payload
from sidecar.pipeline.receive import chunks

log = logging.getLogger(__name__)

PENDING_REFRESH = 10.0  # seconds between counts of pending approvals (for the metrics gauge)


def _held(code: str, message: str, approval_id: str) -> SidecarError:
    return no_retry(403, code, message, **{"x-approval-id": approval_id})


class Notifier:
    """POSTs `approval.requested` to SIDECAR_APPROVAL_WEBHOOK_URL: ids and the operation, never content.

    With SIDECAR_APPROVAL_WEBHOOK_SECRET the body is signed (`x-sidecar-signature: sha256=<hex HMAC>`).
    Delivery is best effort, in the background: a slow or failing receiver never delays the agent.
    """

    def __init__(self, settings: Settings) -> None:
        self._url = settings.approval_webhook_url
        self._secret = settings.approval_webhook_secret.encode()
        self._timeout = aiohttp.ClientTimeout(total=settings.approval_webhook_timeout)
        self._tasks: set[asyncio.Task[None]] = set()

    def requested(self, approval: Approval) -> None:
        if not self._url:
            return
        body = orjson.dumps({"type": "approval.requested", "approval": approval.public(time.time())})
        task = asyncio.create_task(self._post(body, approval.id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, body: bytes, approval_id: str) -> None:
        headers = {"content-type": "application/json"}
        if self._secret:
            digest = hmac.new(self._secret, body, hashlib.sha256).hexdigest()
            headers["x-sidecar-signature"] = f"sha256={digest}"
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.post(self._url, data=body, headers=headers) as resp,
            ):
                if resp.status >= 300:
                    log.warning(
                        "approval webhook refused", extra={"approval_id": approval_id, "status": resp.status}
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "approval webhook failed", extra={"approval_id": approval_id, "error": type(exc).__name__}
            )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


class Approvals:
    def __init__(self, store: ApprovalStore, settings: Settings, notifier: Notifier | None = None) -> None:
        self.store = store
        self._settings = settings
        self._notifier = notifier or Notifier(settings)
        # A claim outlives the longest a forwarded call can take; a crashed holder's claim then lapses.
        self._claim_seconds = settings.upstream_connect_timeout + settings.upstream_read_timeout + 60
        self._spool_limit = spool_limit(settings.approval_spool_bytes, settings.max_upload_bytes)
        # Pending approvals per tenant, for the metrics gauge (which must be read synchronously): counted
        # from the store every PENDING_REFRESH seconds, and bumped at once when this sidecar asks for one.
        self.pending: Counter[str] = Counter()
        # Forwarded headers an approval binds (the upstream acts on them): see model.Binding.headers.
        self._bound = ("openai-beta", *settings.forward_headers)

    async def count_pending(self, stop: asyncio.Event, every: float = PENDING_REFRESH) -> None:
        while not stop.is_set():
            try:
                found = await self.store.list("pending")
                self.pending = Counter(a.tenant or "" for a in found)
            except StoreUnavailable:
                pass  # keep the last count; /readyz reports the store
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    async def lookup(self, call: Call, request: web.Request, payload: Payload) -> ApprovalDoc:
        """Bind the call to its fingerprint and report the approval it would use (docs/policy-input.md)."""
        upload: SpooledBody | None = None
        if payload.kind == "stream":  # a gated upload is read in full: its approval binds every byte
            upload = await SpooledBody.fill(
                chunks(request, self._settings.client_body_timeout),  # stall-timed, framing checked
                self._spool_limit,
                self._settings.approval_spool_dir,
            )
            digest = upload.sha256
        else:
            digest = model.body_hash(payload.raw)  # JSON: the exact bytes forwarded (before masking/caps)
        binding = model.Binding(
            method=call.method,
            path=call.path,
            query=call.query,
            tenant=call.subject.tenant,
            organization=call.organization,
            project=call.project,
            content_type=payload.content_type,
            body_sha256=digest,
            headers=self._bound_headers(request),
        )
        ticket = ApprovalTicket(model.fingerprint(binding), upload=upload)
        call.approval = ticket  # from here the proxy closes the spool when the call ends
        try:
            found = await self.store.find(ticket.fingerprint)
        except StoreUnavailable:
            raise store_down() from None
        if found is not None:
            ticket.id, ticket.status = found.id, found.current(time.time())
        return {"id": ticket.id, "status": ticket.status}  # type: ignore[typeddict-item]

    def _bound_headers(self, request: web.Request) -> str:
        # The canonical stage refused repeated headers, so each name has one value here.
        pairs = sorted((name, request.headers[name]) for name in self._bound if name in request.headers)
        return orjson.dumps(pairs).decode()

    async def check(self, call: Call, decision: Decision, payload: Payload) -> None:
        """Return when the call may pass; else raise the 403 saying where the call's approval stands."""
        ticket = call.approval
        if ticket is None:
            return
        if not decision.require_approval and ticket.status != "approved":
            return  # the policy, shown the approval's status, no longer asks for one
        try:
            if ticket.status == "approved" and ticket.id is not None:
                claimed = await self.store.update(
                    ticket.id, lambda a, now: (model.claim(a, call.id, now, self._claim_seconds), False)
                )
                if claimed:
                    ticket.claimed = True
                    return
                raise _held(
                    "approval_required",
                    f"Approval {ticket.id} is in use by another call of this request; "
                    "an approval lets one call through.",
                    ticket.id,
                )
            if ticket.status == "pending" and ticket.id:
                raise _held(
                    "approval_required", _pending_text(ticket.id, ticket.upload is not None), ticket.id
                )
            if ticket.status == "denied" and ticket.id:
                raise _held("approval_denied", f"Approval {ticket.id} was denied by an approver.", ticket.id)
            if ticket.status == "expired" and ticket.id:
                raise _held(
                    "approval_expired",
                    f"Approval {ticket.id} expired before it was used; send the request again to ask for "
                    "a new approval.",
                    ticket.id,
                )
            approval = await self._request(call, decision, ticket)
        except StoreUnavailable:
            raise store_down() from None
        except ApprovalError as exc:  # the approval vanished between lookup and claim: ask again
            raise _held("approval_required", str(exc), ticket.id or "") from None
        raise _held("approval_required", _pending_text(approval.id, ticket.upload is not None), approval.id)

    async def _request(self, call: Call, decision: Decision, ticket: ApprovalTicket) -> Approval:
        now = time.time()
        fresh = Approval(
            id=model.new_approval_id(),
            fingerprint=ticket.fingerprint,
            tenant=call.subject.tenant,
            sub=call.subject.sub or "",
            method=call.method,
            path=call.path,
            operation=call.operation,
            model=call.model,
            approvers=list(decision.approvers),
            created_at=now,
            expires_at=now + self.store.ttl,
            # The rest of what the approval binds, so approvers see the query and where it is sent.
            extra={
                "request_id": call.id,
                "query": call.query,
                "organization": call.organization,
                "project": call.project,
            },
        )
        approval = await self.store.create(fresh)
        ticket.id, ticket.status = approval.id, approval.current(now)
        if approval is fresh:
            self.pending[approval.tenant or ""] += 1
            log.info("approval requested", extra={"request_id": call.id, "approval_id": approval.id})
            self._notifier.requested(approval)
        return approval

    async def finish(self, call: Call, succeeded: bool) -> None:
        """Consume the claimed approval when the call went through, release it when it failed."""
        ticket = call.approval
        if ticket is None or not ticket.claimed or ticket.id is None:
            return
        ticket.claimed = False
        try:
            used = await self.store.update(
                ticket.id, lambda a, now: (model.finish(a, call.id, succeeded, now),) * 2
            )
        except (StoreUnavailable, ApprovalError) as exc:
            # The claim lapses by itself; until then the approval cannot be used twice.
            log.error(
                "approval finish failed",
                extra={"request_id": call.id, "approval_id": ticket.id, "error": str(exc)},
            )
            return
        ticket.status = "used" if used else "approved"

    async def close(self) -> None:
        await self._notifier.close()
        await self.store.close()


def _pending_text(approval_id: str, upload: bool) -> str:
    # An upload is bound to its bytes as sent, and clients pick a new multipart boundary per request.
    same = " (byte for byte: the same multipart boundary too)" if upload else ""
    return (
        f"This operation needs human approval. Approval {approval_id} is pending: an approver can run "
        f"`sidecar approvals approve {approval_id}`; then send the identical request again{same}."
    )


def store_down() -> SidecarError:
    return SidecarError(503, "store_unavailable", "The approval store is unavailable.")

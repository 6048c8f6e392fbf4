"""`sidecar approvals list | approve ID | deny ID`.

Two ways to reach the approvals:
- through a sidecar's admin API (`--admin-url`, default `http://SIDECAR_ADMIN_HOST:SIDECAR_ADMIN_PORT`),
  authenticated with `--token` / SIDECAR_ADMIN_TOKEN (the approver's JWT, or a static key in
  development). This is the only way to reach the in-memory store, which lives inside one sidecar;
- straight to the shared store, when SIDECAR_REDIS_URL is set and no `--admin-url` is given. Anyone with
  the store's credentials is an operator; the approver policy still decides, for the identity given with
  `--as`/`--group`/`--tenant`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

from sidecar import config
from sidecar.approvals.approvers import ApproverCheck, act
from sidecar.approvals.model import STATUSES, Status
from sidecar.approvals.store import build_store
from sidecar.budget.store import StoreUnavailable
from sidecar.errors import SidecarError
from sidecar.pipeline.context import Subject


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    approvals = sub.add_parser("approvals", help="list, approve and deny pending approvals")
    asub = approvals.add_subparsers(dest="approvals_command", required=True)
    for name, text in [
        ("list", "approvals in the store (pending ones by default)"),
        ("approve", "approve one: the identical request then passes once"),
        ("deny", "deny one: the request then gets 403 approval_denied"),
    ]:
        cmd = asub.add_parser(name, help=text)
        if name == "list":
            cmd.add_argument("--status", choices=[*STATUSES, "all"], default="pending")
            cmd.add_argument("--tenant")
        else:
            cmd.add_argument("id", help="the approval id (apr_...), from x-approval-id or `list`")
            cmd.add_argument("--reason", help="recorded with the decision")
            cmd.add_argument(
                "--as", dest="as_sub", default=os.environ.get("USER", ""), help="approver (store)"
            )
            cmd.add_argument("--group", action="append", default=[], help="approver group (store access)")
            cmd.add_argument("--tenant", dest="approver_tenant", help="approver tenant (store access)")
        cmd.add_argument("--admin-url", default=os.environ.get("SIDECAR_ADMIN_URL", ""))
        cmd.add_argument("--token", default=os.environ.get("SIDECAR_ADMIN_TOKEN", ""))
        cmd.add_argument("--config", help="YAML settings file (environment variables win)")
        cmd.add_argument("--json", action="store_true", help="machine-readable output")
        cmd.set_defaults(func=run)


def _print(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no approvals")
        return
    print(f"{'id':30} {'status':9} {'tenant':10} {'requested by':24} {'operation':26} expires (UTC)")
    for row in rows:
        expires = datetime.fromtimestamp(row["expires_at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{row['id']:30} {row['status']:9} {row['tenant'] or '-':10} {row['sub']:24} "
            f"{row['operation']:26} {expires}"
        )


async def _over_http(args: argparse.Namespace, base: str) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), headers=headers) as session:
        if args.approvals_command == "list":
            query = {} if args.status == "all" else {"status": args.status}
            if args.tenant:
                query["tenant"] = args.tenant
            request = session.get(f"{base}/v1/approvals", params=query)
        else:
            body = {"reason": args.reason} if args.reason else {}
            request = session.post(f"{base}/v1/approvals/{args.id}/{args.approvals_command}", json=body)
        async with request as resp:
            doc = await resp.json(content_type=None)
            if resp.status >= 400:
                error = doc.get("error", {}) if isinstance(doc, dict) else {}
                raise SidecarError(resp.status, error.get("code", "error"), error.get("message", str(doc)))
    return list(doc["data"]) if args.approvals_command == "list" else [doc]


async def _in_store(args: argparse.Namespace, settings: config.Settings) -> list[dict[str, Any]]:
    from sidecar.app import build_engine  # the engine only when an approver acts

    store = build_store(settings)
    try:
        if args.approvals_command == "list":
            status = None if args.status == "all" else args.status
            found = await store.list(status, args.tenant)
            now = time.time()
            return [a.public(now) for a in found]
        engine = await build_engine(settings)
        await engine.start()
        try:
            approver = Subject(True, args.as_sub, args.approver_tenant, tuple(args.group), "cli")
            verdict: Status = "approved" if args.approvals_command == "approve" else "denied"
            check = ApproverCheck(engine, settings.approver_decision_path)
            approval = await act(store, check, args.id, verdict, approver=approver, reason=args.reason)
            return [approval.public(time.time())]
        finally:
            await engine.close()
    finally:
        await store.close()


async def _run(args: argparse.Namespace) -> int:
    settings = config.load(args.config, require_keys=False)
    try:
        if args.admin_url or not settings.redis_url:
            base = (args.admin_url or f"http://{settings.admin_host}:{settings.admin_port}").rstrip("/")
            rows = await _over_http(args, base)
        else:
            rows = await _in_store(args, settings)
    except SidecarError as err:
        print(f"sidecar approvals: {err.code}: {err.message}", file=sys.stderr)
        return 1
    except (StoreUnavailable, aiohttp.ClientError, OSError) as exc:
        print(f"sidecar approvals: cannot reach the approvals: {exc}", file=sys.stderr)
        return 2
    _print(rows, args.json)
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))

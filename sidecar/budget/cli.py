"""`sidecar budget show|set|reset --tenant T`: read and change budgets in the configured store.

Budgets the CLI can reach live in Redis (`SIDECAR_REDIS_URL`); the in-memory store belongs to one sidecar
process and cannot be managed from outside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from sidecar import config
from sidecar.budget.redis_store import RedisBudgetStore
from sidecar.budget.store import WINDOWS, StoreUnavailable, UsageRow


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    budget = sub.add_parser("budget", help="show and change tenant budgets in the configured store")
    bsub = budget.add_subparsers(dest="budget_command", required=True)
    commands = [
        ("show", "each window's limit, used, remaining and reset time"),
        ("set", "set used tokens and/or stored limits (a stored limit caps the policy's)"),
        ("reset", "zero the tenant's usage in every window (stored limits stay)"),
    ]
    for name, text in commands:
        cmd = bsub.add_parser(name, help=text)
        cmd.add_argument("--tenant", required=True)
        cmd.add_argument("--config", help="YAML settings file (environment variables win)")
        cmd.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "set":
            cmd.add_argument(
                "--used", action="append", default=[], metavar="WINDOW=N", help="e.g. day=120000"
            )
            cmd.add_argument(
                "--limit", action="append", default=[], metavar="WINDOW=N|none", help="e.g. day=2000000"
            )
        cmd.set_defaults(func=run)


def _pairs(items: list[str], what: str, allow_none: bool = False) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for item in items:
        window, _, value = item.partition("=")
        if window not in WINDOWS or not value:
            raise ValueError(f"--{what} {item!r}: expected WINDOW=N with WINDOW one of {', '.join(WINDOWS)}")
        if allow_none and value.lower() == "none":
            out[window] = None
        else:
            number = int(value)
            if number < 0:
                raise ValueError(f"--{what} {item!r}: must not be negative")
            out[window] = number
    return out


def _print(tenant: str, rows: dict[str, UsageRow], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"tenant": tenant, "windows": {w: r.to_json() for w, r in rows.items()}}, indent=2))
        return
    print(f"tenant {tenant}")
    print(f"{'window':8} {'limit':>14} {'used':>14} {'remaining':>14}  resets at (UTC)")
    for window in WINDOWS:
        row = rows.get(window)
        if row is None:
            continue
        limit = "-" if row.limit is None else f"{row.limit:,}"
        remaining = "-" if row.remaining is None else f"{row.remaining:,}"
        print(f"{window:8} {limit:>14} {row.used:>14,} {remaining:>14}  {row.resets_at:%Y-%m-%d %H:%M:%S}")


async def _run(args: argparse.Namespace) -> int:
    settings = config.load(args.config, require_keys=False)
    if not settings.redis_url:
        print("sidecar: budgets live in each sidecar's memory unless SIDECAR_REDIS_URL is set; "
              "set it to manage them from the command line", file=sys.stderr)  # fmt: skip
        return 2
    store = RedisBudgetStore(settings.redis_url, timeout=max(settings.redis_timeout, 2.0))
    try:
        if args.budget_command == "reset":
            await store.reset(args.tenant)
        elif args.budget_command == "set":
            used = {k: v for k, v in _pairs(args.used, "used").items() if v is not None}
            limits = _pairs(args.limit, "limit", allow_none=True)
            if not used and not limits:
                raise ValueError("nothing to set: give --used and/or --limit")
            await store.set_limit_usage(args.tenant, used=used or None, limits=limits or None)
        _print(args.tenant, await store.show(args.tenant), args.json)
    except StoreUnavailable as exc:
        print(f"sidecar: the budget store is unavailable: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))

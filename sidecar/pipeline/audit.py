"""Stages 6 and 10: the tamper-evident audit record (docs/audit.md).

One JSON line when the call is decided (before anything is forwarded) and one when it ends, joined by
`decision_id`. Each line carries `prev_hash` and `hash` = SHA-256 over the previous hash and the
canonical (sorted-key) JSON of the line without its hash, so removing, editing or reordering a line
breaks the chain. Records hold counts, names and identifiers only: never prompt text, PII values, the
provider key or the caller's credential.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from sidecar.errors import SidecarError
from sidecar.pipeline.context import Call

log = logging.getLogger(__name__)

GENESIS = "0" * 64


def _link(prev_hash: str, canonical: bytes) -> str:
    """The chain rule, in one place: SHA-256 over the previous hash and the record's canonical JSON."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical).hexdigest()


def canonical(record: dict[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in record.items() if k != "hash"}, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: str, record: dict[str, Any]) -> str:
    return _link(prev_hash, canonical(record))


def error_doc(err: SidecarError) -> dict[str, Any]:
    """`status` and `code`, plus the machine-readable `reason` and `credential` an error may carry.

    Identity errors say why a credential was refused (`token_expired`, `wrong_audience`, `unknown_kid`, ...)
    and which one (`api_key`, `end_user_token`, `peer`); the credential itself never appears.
    """
    doc: dict[str, Any] = {"status": err.status, "code": err.code}
    for extra in ("reason", "credential"):
        value = getattr(err, extra, None)
        if value:
            doc[extra] = value
    return doc


def _timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_record(call: Call, phase: str, revision: str) -> dict[str, Any]:
    decision = call.decision
    err = call.error
    if decision is not None:
        decided: dict[str, Any] = {
            "allow": decision.allow,
            "reasons": list(decision.reasons),
            "code": decision.code if not decision.allow else None,
            "require_approval": decision.require_approval,
        }
    else:
        decided = {"allow": False, "reasons": [], "code": None, "require_approval": False}
    usage = call.usage
    timings = call.timings_ms
    return {
        "decision_id": call.id,
        "timestamp": _timestamp(),
        "phase": phase,
        "trace_id": call.trace_id,
        "span_id": call.span_id,
        "subject": {"sub": call.subject.sub, "tenant": call.subject.tenant},
        "request": {
            "method": call.method,
            "path": call.path,
            "operation": call.operation,
            "model": call.model,
            "stream": call.stream,
        },
        "decision": decided,
        "approval": (
            {"id": call.approval.id, "status": call.approval.status} if call.approval is not None else None
        ),
        "pii": {"found": dict(call.pii_found), "masked": dict(call.pii_masked)},
        "budget": {
            "reserved": call.reserved_tokens,
            "used": usage.total if usage is not None else None,
            "refunded": call.refunded_tokens,
        },
        "upstream": {"status": call.upstream_status, "latency_ms": call.upstream_latency_ms},
        "latency_ms": {
            "total": call.elapsed_ms(),
            "policy": timings.get("policy"),
            "pii": timings.get("pii"),
            "budget": timings.get("budget"),
        },
        "bundle": {"revision": revision},
        "outcome": call.outcome,
        "error": error_doc(err) if err is not None else None,
        "fail_open": list(call.fail_open),
    }


def _escaped(value: Any) -> Any:
    """`value` with every string made valid UTF-8 (a lone surrogate becomes the text `\\udc85`)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escaped(v) for v in value]
    return value


def _last_hash(path: Path) -> str:
    """The hash of the log's last record, so a restarted sidecar continues the same chain."""
    if not path.exists() or path.stat().st_size == 0:
        return GENESIS
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        block = min(end, 1 << 16)
        while True:
            fh.seek(end - block)
            lines = fh.read(block).rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or block == end:
                break
            block = min(end, block * 4)
    try:
        last = orjson.loads(lines[-1])
        return str(last["hash"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise ValueError(
            f"audit log {path}: the last line is not a chained record; run `sidecar audit verify`"
        ) from None


class AuditLog:
    """Appends chained records to a file (or stdout), flushed per record."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._fh: IO[bytes]
        if target == "-":
            self._fh = sys.stdout.buffer
            self._prev = GENESIS
        else:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._prev = _last_hash(path)
            self._fh = path.open("ab")

    def write(self, record: dict[str, Any]) -> None:
        record["prev_hash"] = self._prev
        # Serialised once: the canonical bytes are hashed, then written with the hash appended last.
        try:
            body = canonical(record)
        except TypeError:  # a string that is not valid UTF-8 (a lone surrogate): escaped, not dropped
            record = _escaped(record)
            body = canonical(record)
        digest = _link(self._prev, body)
        self._fh.write(body[:-1] + b',"hash":"' + digest.encode() + b'"}\n')
        self._fh.flush()
        self._prev = digest

    def start(self, call: Call, revision: str) -> None:
        """The record written before forwarding; if it cannot be written, nothing is forwarded."""
        try:
            self.write(build_record(call, "start", revision))
        except OSError as exc:
            log.error("audit write failed", extra={"request_id": call.id, "error": str(exc)})
            raise SidecarError(503, "audit_unavailable", "The audit log cannot be written.") from None

    def end(self, call: Call, revision: str) -> None:
        """The closing record; called once for every call, however it ended, and never raises."""
        try:
            self.write(build_record(call, "end", revision))
        except OSError as exc:
            log.error("audit write failed", extra={"request_id": call.id, "error": str(exc)})
        except Exception as exc:  # a bug must not turn the call's answer into a bare 500
            log.error("audit record failed", extra={"request_id": call.id, "error": type(exc).__name__})

    def approval(self, action: str, approval: dict[str, Any], approver_sub: str | None) -> None:
        """An approver's act (`phase: "approval"`), chained with the call records; ids only, no content."""
        record = {
            "decision_id": approval["id"],
            "timestamp": _timestamp(),
            "phase": "approval",
            "approval": {"id": approval["id"], "action": action, "status": approval["status"]},
            "approver": {"sub": approver_sub},
            "subject": {"sub": approval["sub"], "tenant": approval["tenant"]},
            "request": {k: approval[k] for k in ("method", "path", "operation", "model")},
        }
        try:
            self.write(record)
        except OSError as exc:
            log.error("audit write failed", extra={"approval_id": approval["id"], "error": str(exc)})

    def close(self) -> None:
        if self.target != "-":
            self._fh.close()


def verify(path: str) -> tuple[bool, str]:
    """Check the chain of an audit log: (ok, message naming the first bad line)."""
    prev = GENESIS
    count = 0
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                return False, f"line {number}: empty line"
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                return False, f"line {number}: not JSON ({exc})"
            if not isinstance(record, dict) or "hash" not in record:
                return False, f"line {number}: not an audit record"
            if record.get("prev_hash") != prev:
                return (
                    False,
                    f"line {number}: prev_hash does not match line {number - 1} (removed or reordered)",
                )
            if chain_hash(prev, record) != record["hash"]:
                return False, f"line {number}: hash mismatch (the record was edited)"
            prev = record["hash"]
            count = number
    return True, f"{count} records, chain intact"

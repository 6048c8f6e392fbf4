import itertools
import json
from pathlib import Path

from sidecar.cli import main
from sidecar.documents import Decision
from sidecar.pipeline.audit import GENESIS, AuditLog, verify
from sidecar.pipeline.context import Call, Subject, Usage


def _call(n: int) -> Call:
    call = Call(id=f"req_{n}", method="POST", path="/v1/responses")
    call.subject = Subject(True, "sa:bot", "acme")
    call.operation, call.model = "responses.create", "gpt-4o"
    call.decision = Decision(allow=True)
    call.usage = Usage(10, 5)
    return call


def _write(path: Path, n: int) -> None:
    log = AuditLog(str(path))
    for i in range(n):
        log.start(_call(i), "rev-1")
        log.end(_call(i), "rev-1")
    log.close()


def test_records_have_the_spec_fields_and_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 2)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["phase"] for r in records] == ["start", "end", "start", "end"]
    required = {
        "decision_id", "timestamp", "phase", "trace_id", "span_id", "subject", "request", "decision", "pii",
        "budget", "upstream", "latency_ms", "bundle", "prev_hash", "hash",
    }  # fmt: skip
    for record in records:
        assert required <= set(record)
        assert set(record["budget"]) == {"reserved", "used", "refunded"}
        assert set(record["latency_ms"]) >= {"total", "policy", "pii", "budget"}
    assert records[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(records))
    assert verify(str(path)) == (True, "4 records, chain intact")


def test_chain_continues_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 1)
    _write(path, 1)
    ok, message = verify(str(path))
    assert ok, message


def test_tampering_is_detected_and_named(tmp_path: Path, capsys: object) -> None:
    path = tmp_path / "audit.log"
    _write(path, 3)
    lines = path.read_text().splitlines()

    edited = list(lines)
    edited[2] = edited[2].replace('"acme"', '"evil"')
    path.write_text("\n".join(edited) + "\n")
    assert verify(str(path)) == (False, "line 3: hash mismatch (the record was edited)")
    assert main(["audit", "verify", str(path)]) == 1

    path.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    ok, message = verify(str(path))
    assert not ok and message.startswith("line 2: prev_hash")

    path.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    ok, message = verify(str(path))
    assert not ok and message.startswith("line 1: prev_hash")

    path.write_text("\n".join(lines) + "\n")
    assert main(["audit", "verify", str(path)]) == 0

"""The audit trail of a working day: allowed, denied, refused, errored and approval-gated calls all leave
records; the chain verifies across a restart and names tampering; and nothing secret is in the file."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from sidecar.cli import main
from tests.conftest import ACME_KEY, PROVIDER_KEY, MakeSidecar, RunningSidecar

EMAIL, PHONE, NAME = "olivia.brandt@example.net", "415-555-0123", "Olivia Brandt"
PROMPT = f"Draft a note to {NAME} ({EMAIL}, {PHONE}) about the renewal."
LEAD_KEY = "ck-ml-lead-key"


async def _day_of_calls(sidecar: RunningSidecar) -> dict[str, str]:
    """Run one call of each kind; their request ids by kind."""
    ids: dict[str, str] = {}
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key=ACME_KEY, max_retries=0)
    allowed = await client.responses.with_raw_response.create(model="gpt-4o", input=PROMPT)
    ids["allowed"] = allowed.headers["x-request-id"]
    streamed = await client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    async for _ in streamed.parse():
        pass
    ids["streamed"] = streamed.headers["x-request-id"]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await client.responses.create(model="o1-pro", input=PROMPT)
    ids["denied"] = denied.value.response.headers["x-request-id"]
    with pytest.raises(openai.InternalServerError) as failed:
        await client.responses.create(
            model="gpt-4o", input=PROMPT, extra_headers={"x-dev-upstream-fail": "500"}
        )
    ids["upstream_error"] = failed.value.response.headers["x-request-id"]
    stranger = openai.AsyncOpenAI(base_url=sidecar.url, api_key="ck-stolen-" + "x" * 20, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        await stranger.models.list()
    ids["unauthenticated"] = refused.value.response.headers["x-request-id"]
    with pytest.raises(openai.PermissionDeniedError) as held:
        await client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-audit")
    ids["held"] = held.value.response.headers["x-request-id"]
    return ids


async def test_every_call_is_audited_and_the_log_holds_no_secrets(
    make_sidecar: MakeSidecar, tmp_path: Path
) -> None:
    log = tmp_path / "shared-audit.log"
    first = await make_sidecar(SIDECAR_AUDIT_LOG=str(log))
    ids = await _day_of_calls(first)
    await first.stop()  # a restart: the next sidecar continues the same chain
    second = await make_sidecar(SIDECAR_AUDIT_LOG=str(log))
    client = openai.AsyncOpenAI(base_url=second.url, api_key=ACME_KEY, max_retries=0)
    again = await client.responses.with_raw_response.create(model="gpt-4o-mini", input="hello again")
    ids["after_restart"] = again.headers["x-request-id"]

    records = [json.loads(line) for line in log.read_text().splitlines()]
    phases: dict[str, list[str]] = {}
    for record in records:
        phases.setdefault(record["decision_id"], []).append(record["phase"])
    forwarded = ("allowed", "streamed", "upstream_error", "after_restart")
    for kind, request_id in ids.items():
        assert phases[request_id] == (["start", "end"] if kind in forwarded else ["end"]), kind
    ends = {r["decision_id"]: r for r in records if r["phase"] == "end"}
    assert ends[ids["allowed"]]["outcome"] == "forwarded" and ends[ids["allowed"]]["decision"]["allow"]
    assert ends[ids["allowed"]]["pii"]["masked"] == {"PERSON": 1, "EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}
    assert ends[ids["streamed"]]["budget"]["used"] > 0 and ends[ids["streamed"]]["request"]["stream"]
    assert ends[ids["denied"]]["decision"]["allow"] is False and ends[ids["denied"]]["decision"]["reasons"]
    assert ends[ids["upstream_error"]]["upstream"]["status"] == 500
    assert ends[ids["unauthenticated"]]["error"]["reason"] == "unknown_credential"
    assert (
        ends[ids["held"]]["decision"]["require_approval"]
        and ends[ids["held"]]["approval"]["status"] == "pending"
    )
    assert ends[ids["held"]]["error"]["code"] == "approval_required"

    assert main(["audit", "verify", str(log)]) == 0
    text = log.read_text()
    for secret in (
        EMAIL,
        PHONE,
        "Brandt",
        PROVIDER_KEY,
        ACME_KEY,
        "ck-stolen",
        "Draft a note",
        "hello again",
    ):
        assert secret not in text, secret

    lines = text.splitlines()
    lines[len(lines) // 2] = lines[len(lines) // 2].replace('"acme"', '"other"', 1)
    log.write_text("\n".join(lines) + "\n")
    assert main(["audit", "verify", str(log)]) == 1

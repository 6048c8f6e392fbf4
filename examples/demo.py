"""`make demo`: a real openai-agents agent behind the sidecar, against the local stand-in upstream.

Starts `sidecar dev-upstream` and `sidecar serve` as real processes on free loopback ports, runs an agent
with a function tool in all four modes (Responses / Chat Completions, plain / streamed), shows what the
policy refuses, walks a fine-tuning job through a human approval (`sidecar approvals approve`), and
verifies the audit chain.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import openai
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)

ROOT = Path(__file__).resolve().parents[1]
PROVIDER_KEY = "sk-demo-provider-key"  # lives only in the sidecar's environment
CALLER_KEY = "ck-demo-acme-agent"  # what the agent holds (examples/keys.json)
APPROVER_KEY = "ck-demo-ml-lead"  # alice, group ml-leads: an approver in the shipped policy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited early with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not become ready")


@function_tool
def get_weather(city: str) -> str:
    """The current weather for a city."""
    return f"Sunny and 21C in {city}"


async def run_agents(base_url: str) -> list[tuple[str, str, str]]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=CALLER_KEY)
    rows = []
    for api in ("responses", "chat"):
        model = (
            OpenAIResponsesModel(model="gpt-4o", openai_client=client)
            if api == "responses"
            else OpenAIChatCompletionsModel(model="gpt-4o", openai_client=client)
        )
        agent = Agent(name="weather", instructions="Use the tool.", tools=[get_weather], model=model)
        for streamed in (False, True):
            if streamed:
                run = Runner.run_streamed(agent, "What's the weather in Lisbon?")
                async for _event in run.stream_events():
                    pass
                output = str(run.final_output)
            else:
                output = str((await Runner.run(agent, "What's the weather in Lisbon?")).final_output)
            rows.append((api, "stream" if streamed else "json", output.replace("\n", " ")))
    return rows


async def refusals(base_url: str) -> list[tuple[str, str]]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=CALLER_KEY, max_retries=2)
    rows = []
    try:
        await client.responses.create(model="o1-pro", input="hello")
    except openai.PermissionDeniedError as exc:
        rows.append(
            ("model o1-pro", f"403 {exc.code}: {exc.body['message'] if isinstance(exc.body, dict) else exc}")
        )
    try:
        await client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-abc")
    except openai.PermissionDeniedError as exc:
        rows.append(("fine-tuning job", f"403 {exc.code} (held for a human approver)"))
    try:
        await client.post("/organization/users", cast_to=object, body={})
    except openai.PermissionDeniedError as exc:
        rows.append(("admin API", f"403 {exc.code}"))
    stranger = openai.AsyncOpenAI(base_url=base_url, api_key="sk-someone-elses-key", max_retries=0)
    try:
        await stranger.models.list()
    except openai.AuthenticationError as exc:
        rows.append(("unknown caller key", f"401 {exc.code}"))
    return rows


async def approval_flow(base_url: str, admin_url: str) -> list[tuple[str, str]]:
    """A high-risk call: held, approved by a human with the CLI, passed once, then held again."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=CALLER_KEY, max_retries=0)

    async def create() -> str:
        job = await client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-demo")
        return f"created {job.id}"

    rows = []
    try:
        await create()
        return [("first call", "UNEXPECTED: not held")]
    except openai.PermissionDeniedError as exc:
        approval_id = exc.response.headers["x-approval-id"]
        rows.append(("first call", f"403 {exc.code}, x-approval-id {approval_id}"))
    cli = [sys.executable, "-m", "sidecar", "approvals", "approve", approval_id, "--reason", "demo"]
    approved = await asyncio.to_thread(
        subprocess.run,
        [*cli, "--admin-url", admin_url, "--token", APPROVER_KEY],
        capture_output=True,
        text=True,
    )
    rows.append(("alice approves", "ok" if approved.returncode == 0 else approved.stderr.strip()))
    rows.append(("identical re-send", await create()))
    try:
        await create()
        rows.append(("another re-send", "UNEXPECTED: passed twice"))
    except openai.PermissionDeniedError as exc:
        rows.append(("another re-send", f"403 {exc.code} (single use: a new approval)"))
    return rows


async def everything(
    base_url: str, admin_url: str
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    return await run_agents(base_url), await refusals(base_url), await approval_flow(base_url, admin_url)


def main() -> int:
    set_tracing_disabled(True)
    work = Path(tempfile.mkdtemp(prefix="sidecar-demo-"))
    up_port, port, admin = free_port(), free_port(), free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "dev-upstream", "--port", str(up_port), "--api-key", PROVIDER_KEY],
        stdout=subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "SIDECAR_PORT": str(port),
        "SIDECAR_ADMIN_PORT": str(admin),
        "SIDECAR_UPSTREAM_URL": f"http://127.0.0.1:{up_port}",
        "SIDECAR_UPSTREAM_API_KEY": PROVIDER_KEY,
        "SIDECAR_STATIC_KEYS_FILE": str(ROOT / "examples" / "keys.json"),
        "SIDECAR_AUDIT_LOG": str(work / "audit.log"),
        "SIDECAR_LOG_LEVEL": "warning",
    }
    sidecar = subprocess.Popen([sys.executable, "-m", "sidecar", "serve"], env=env)
    try:
        wait_ready(f"http://127.0.0.1:{up_port}/_dev/health", upstream)
        wait_ready(f"http://127.0.0.1:{admin}/readyz", sidecar)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz") as resp:
            ready = json.load(resp)
        base = f"http://127.0.0.1:{port}/v1"
        # One event loop for every client call: the SDK's shared HTTP client is bound to the first loop.
        agent_rows, refused, approval_rows = asyncio.run(everything(base, f"http://127.0.0.1:{admin}"))
        with urllib.request.urlopen(f"http://127.0.0.1:{up_port}/_dev/requests") as resp:
            seen = json.load(resp)
    finally:
        sidecar.terminate()
        sidecar.wait(15)
        upstream.terminate()
        upstream.wait(15)

    verify = subprocess.run(
        [sys.executable, "-m", "sidecar", "audit", "verify", str(work / "audit.log")],
        capture_output=True,
        text=True,
    )
    keys = {r["headers"].get("authorization") for r in seen}
    print("\n=== sidecar demo ===")
    print(f"policy: {ready['policy']['engine']} engine, bundle {ready['bundle']['revision']}")
    print("\nagent with a function tool, through the sidecar:")
    for api, mode, output in agent_rows:
        print(f"  {api:9} {mode:6}  ->  {output}")
    print("\nrefused by the sidecar:")
    for what, outcome in refused:
        print(f"  {what:20} {outcome}")
    print("\nhuman approval of a fine-tuning job:")
    for what, outcome in approval_rows:
        print(f"  {what:20} {outcome}")
    print(
        f"\nupstream saw {len(seen)} calls, all with the provider key: {keys == {'Bearer ' + PROVIDER_KEY}}"
    )
    print(f"the agent never held the provider key; it used {CALLER_KEY!r}")
    print(f"audit log: {(verify.stdout or verify.stderr).strip()}")
    ok = len(agent_rows) == 4 and all("Sunny" in r[2] for r in agent_rows) and len(refused) == 4
    ok = ok and verify.returncode == 0 and keys == {"Bearer " + PROVIDER_KEY}
    ok = ok and approval_rows[2][1].startswith("created ftjob-") and "new approval" in approval_rows[3][1]
    print("\nresult:", "OK" if ok else "UNEXPECTED (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

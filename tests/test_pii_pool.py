"""The PII worker processes never outlive the sidecar, even when it is killed without a chance to clean up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import BUNDLE, PROVIDER_KEY, free_port, wait_http


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_die_with_a_killed_sidecar(keys_file: str, tmp_path: Path) -> None:
    admin = free_port()
    env = {**os.environ, "SIDECAR_PORT": str(free_port()), "SIDECAR_ADMIN_PORT": str(admin),
           "SIDECAR_UPSTREAM_URL": "http://127.0.0.1:9", "SIDECAR_UPSTREAM_API_KEY": PROVIDER_KEY,
           "SIDECAR_STATIC_KEYS_FILE": keys_file, "SIDECAR_BUNDLE": str(BUNDLE), "SIDECAR_PII_MODE": "patterns",
           "SIDECAR_PII_WORKERS": "2", "SIDECAR_AUDIT_LOG": str(tmp_path / "audit.log"),
           "SIDECAR_LOG_LEVEL": "warning"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve"], env=env)
    try:
        wait_http(f"http://127.0.0.1:{admin}/readyz", 60.0, proc)
        workers = _children(proc.pid)
        assert len(workers) >= 2, workers  # the two detector workers (and the resource tracker)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 15
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftover = [w for w in workers if _alive(w)]
    for pid in leftover:  # clean up before failing
        os.kill(pid, signal.SIGKILL)
    assert not leftover, f"workers outlived the killed sidecar: {leftover}"

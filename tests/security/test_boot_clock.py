"""A server on a machine that has just booted behaves like any other (finding 9).

``time.monotonic()`` counts from boot. On main before the fix the offers' cache started at
``0.0``, which on a machine up for less than ten minutes looked fresh, so the first
``/supported`` read never ran and every metered request was a 500 (``AttributeError:
'_facilitator_address'``). These tests run a real uvicorn process whose monotonic clock
reads about one second (a time namespace, as root) and failed on main with that 500.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.fault_harness import uvicorn_server
from x402_meter.devstack import LocalStack

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def just_booted() -> list[str]:
    """A command prefix under which the monotonic clock starts near one second."""
    uptime = int(float(Path("/proc/uptime").read_text().split()[0]))
    prefix = ["unshare", "--time", f"--monotonic=-{max(uptime - 1, 0)}", "--fork", "--kill-child"]
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([*prefix, "true"], check=False).returncode != 0:
        pytest.skip("needs unshare --time (util-linux, as root)")
    return prefix


def test_a_server_whose_clock_starts_at_boot_challenges_instead_of_failing(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    with uvicorn_server(
        x402_local_stack, store, tmp_path / "server.log", command_prefix=just_booted()
    ) as server:
        clock = httpx.get(f"{server.url}/clock").json()["monotonic"]
        first = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT)
        second = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT)
    assert clock < 600  # the premise: this server's monotonic clock is younger than any TTL
    assert (first.status_code, second.status_code) == (402, 402)
    assert first.json()["reason"] == "payment_required"

"""Uvicorn processes serving bench/sse_server.py, each dying with the benchmark that started it."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from x402_meter.devstack import LocalStack
from x402_meter.devstack.processes import ChildProcess, uvicorn_ready

ROOT = Path(__file__).resolve().parents[1]


CPUS: Final = sorted(os.sched_getaffinity(0))
SERVER_CPU: Final = CPUS[-1]
"""Every server runs on this core, and the client (the harness) on the others, so that no
variant shares a core with its client by chance: the noise the scheduler adds to a ratio."""


def pin(pid: int, cpu: int) -> None:
    """Keep a process (0: this one) on one core; nothing on a machine of one core."""
    if len(CPUS) > 1:
        os.sched_setaffinity(pid, {cpu})


def pin_client() -> None:
    """The harness on every core but the servers'."""
    if len(CPUS) > 1:
        os.sched_setaffinity(0, set(CPUS[:-1]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """The resident set size of a process (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass(frozen=True)
class Server:
    name: str
    host: str
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextmanager
def sse_server(
    mode: str,
    stack: LocalStack,
    log_dir: Path,
    *,
    store_url: str = "",
    max_tokens: int = 16384,
    source: Path | None = None,
    name: str | None = None,
    null_meter: bool = False,
    meter_options: dict[str, object] | None = None,
) -> Iterator[Server]:
    """bench/sse_server.py in front of ``mode`` (bare, meter or sdk), in its own uvicorn process.

    ``null_meter``: X402Meter with a meter that reads nothing (its cost around the meter).
    One worker, uvicorn's defaults otherwise, access log off. ``source``: a directory holding
    another ``x402_meter`` package to serve instead of the installed one (to compare a change
    with what it changes, side by side). ``meter_options``: more ``X402Meter`` options (JSON
    values), as ``$X402_BENCH_METER_OPTIONS``.
    """
    port = free_port()
    name = name or mode
    env = {
        **os.environ,
        "X402_BENCH_MODE": mode,
        "X402_BENCH_STACK": json.dumps(stack.as_json_dict()),
        "X402_BENCH_STORE": store_url,
        "X402_BENCH_MAX_TOKENS": str(max_tokens),
    }
    if null_meter:
        env["X402_BENCH_NULL_METER"] = "1"
    if meter_options is not None:
        env["X402_BENCH_METER_OPTIONS"] = json.dumps(meter_options)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(source), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.sse_server:app",
        "--app-dir",
        str(ROOT),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
    ]
    process = ChildProcess(
        args, name=f"uvicorn-{name}", env=env, log_path=log_dir / f"{name}.log", merge_stderr=True
    )
    try:
        process.wait_for_line(uvicorn_ready(), timeout=60)
        pin(process.pid, SERVER_CPU)
        yield Server(name, "127.0.0.1", port, process.pid)
    finally:
        process.stop()

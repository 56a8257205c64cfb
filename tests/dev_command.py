"""``x402-meter dev`` run as a user runs it: a process of its own, read line by line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def dev_process(*args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """``x402-meter dev ARGS``, killed if the test leaves it running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "x402_meter", "dev", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@contextmanager
def dev_stack(
    *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], dict[str, object]]]:
    """``x402-meter dev --json ARGS`` and its one JSON line."""
    with dev_process("--json", *args, env=env) as process:
        assert process.stdout is not None
        line = process.stdout.readline()
        yield process, json.loads(line)


def free_port_pair() -> int:
    """A port that is free on loopback, and the next one too (for ``dev --port BASE``)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            base: int = first.getsockname()[1]
            if base >= 65534:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", base + 1))
                except OSError:
                    continue
                return base
    raise AssertionError("no two consecutive free ports on loopback")

"""A throwaway redis-server (Debian's ``redis-server``) on a free loopback port.

For tests of the Redis store: no persistence, stopped by PID, dies with its parent.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from x402_meter.devstack.processes import ChildProcess


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server(log_path: Path | None = None) -> Iterator[str]:
    """Yield ``redis://127.0.0.1:<port>/0`` while a private redis-server runs."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server not found: apt-get install redis-server")
    port = _free_port()
    process = ChildProcess(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        name="redis-server",
        log_path=log_path,
    )
    try:
        process.wait_for_line(lambda line: "Ready to accept connections" in line, timeout=30)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.stop()

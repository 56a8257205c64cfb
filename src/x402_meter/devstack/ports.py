"""Checking that a fixed port of the local stack is free before anything starts.

A taken port would otherwise surface as a child process's startup failure, after the
chain had started; checked first, it is one clear sentence naming the port and the flag.
"""

from __future__ import annotations

import socket
from typing import Final

from x402_meter.errors import PortInUseError as PortInUseError

LOOPBACK: Final = "127.0.0.1"
"""The stack listens on loopback only: its keys are public and its facilitator pays gas."""


def ensure_port_free(host: str, port: int, what: str) -> None:
    """Raise ``PortInUseError`` if ``port`` cannot be bound on ``host``; 0 is always free.

    ``SO_REUSEADDR``, as anvil and uvicorn bind: the connections a stopped stack left in
    TIME_WAIT must not make its restart on the same port fail; a listener still does.
    """
    if port == 0:
        return
    with socket.socket(socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PortInUseError(f"port {port} for the {what} is taken ({exc.strerror})") from None

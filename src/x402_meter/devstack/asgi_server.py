"""Serve an ASGI app with uvicorn on a free loopback port, inside the caller's event loop.

Used by ``x402-meter demo`` and by tests: readiness is an event set by uvicorn's startup,
so nothing polls. Needs the ``devstack`` extra (uvicorn).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = anyio.Event()

    async def startup(self, sockets: Sequence[socket.socket] | None = None) -> None:
        await super().startup(sockets=list(sockets) if sockets else None)
        self.ready.set()

    def install_signal_handlers(self) -> None:  # the caller owns the process's signals
        return None


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Yield the base URL of ``app`` served by uvicorn; shut it down (with lifespan) after."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="auto"))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, [sock])
        await server.ready.wait()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True

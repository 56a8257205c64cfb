"""A pass-through in front of the local facilitator that notes every ``/verify`` and ``/settle``.

The facilitator keeps no count of its calls, so the session benchmark puts this proxy between
the metered server and it: everything the server (and its settlement and claims workers)
asks the facilitator goes through here, is forwarded as it came, and is noted with what it
was (the scheme, the payload's ``type`` for a channel: deposit, voucher, claim, settle,
refund) and what came back (status, success, the transaction). ``GET /tally`` answers the
notes so far as JSON. Served by uvicorn in its own process (``tally_server``), so that it
takes no time from the harness's event loop.

Environment: ``X402_BENCH_FACILITATOR`` (the facilitator's base URL).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from bench.servers import ROOT, Server, free_port
from x402_meter.devstack.processes import ChildProcess, uvicorn_ready

_HOP_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding"})


def call_kind(path: str, body: bytes) -> dict[str, str]:
    """What a facilitator call was: its path, the scheme, and a channel payload's type."""
    try:
        payload = json.loads(body).get("paymentPayload") or {}
        scheme = str((payload.get("accepted") or {}).get("scheme", ""))
        kind = str((payload.get("payload") or {}).get("type", ""))
    except (ValueError, AttributeError):
        scheme, kind = "", ""
    return {"path": path, "scheme": scheme, "type": kind}


def call_outcome(status: int, body: bytes) -> dict[str, Any]:
    """What the facilitator answered: the status, and a settlement's success and transaction."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    return {
        "status": status,
        "ok": bool(answer.get("success", answer.get("isValid", False))),
        "transaction": str(answer.get("transaction") or ""),
    }


class FacilitatorTally:
    """The proxy: forwards each request to the facilitator and notes the payment ones."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.calls: list[dict[str, Any]] = []
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.upstream, timeout=120)
        return self._http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if scope["path"] == "/tally":
            await self._answer(
                send, 200, [(b"content-type", b"application/json")], json.dumps(self.calls).encode()
            )
            return
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name.decode("latin-1").lower() not in _HOP_HEADERS
        ]
        query = scope.get("query_string", b"").decode("latin-1")
        target = scope["path"] + (f"?{query}" if query else "")
        answer = await self._client().request(
            scope["method"], target, headers=headers, content=bytes(body)
        )
        if scope["path"] in ("/verify", "/settle"):
            self.calls.append(
                call_kind(scope["path"], bytes(body))
                | call_outcome(answer.status_code, answer.content)
            )
        kept = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in answer.headers.items()
            if name.lower() not in _HOP_HEADERS and name.lower() != "content-encoding"
        ]
        await self._answer(send, answer.status_code, kept, answer.content)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._http is not None:
                    await self._http.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    async def _answer(
        send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def build() -> FacilitatorTally:
    return FacilitatorTally(os.environ["X402_BENCH_FACILITATOR"])


@dataclass(frozen=True)
class TallyServer:
    server: Server

    @property
    def url(self) -> str:
        return self.server.url

    def calls(self) -> list[dict[str, Any]]:
        """Every ``/verify`` and ``/settle`` noted so far, in order."""
        answer = httpx.get(f"{self.url}/tally", timeout=30)
        answer.raise_for_status()
        calls: list[dict[str, Any]] = answer.json()
        return calls


@contextmanager
def tally_server(
    facilitator_url: str, log_dir: Path, *, name: str = "tally"
) -> Iterator[TallyServer]:
    """The proxy in front of ``facilitator_url``, in its own uvicorn process."""
    port = free_port()
    env = {**os.environ, "X402_BENCH_FACILITATOR": facilitator_url}
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.facilitator_tally:build",
        "--factory",
        "--app-dir",
        str(ROOT),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
    ]
    process = ChildProcess(
        args,
        name=f"facilitator-{name}",
        env=env,
        log_path=log_dir / f"tally-{name}.log",
        merge_stderr=True,
    )
    try:
        process.wait_for_line(uvicorn_ready(), timeout=60)
        yield TallyServer(Server(name, "127.0.0.1", port, process.pid))
    finally:
        process.stop()

"""Reading a metered request's body before it is admitted: bounded in size, time and memory.

The 402 asks for what the request can cost, and that depends on its prompt, so a metered
body is read before any payment is looked at: by anyone, paid or not. Three bounds keep
that from being a way to hold a server's memory: each body has a size limit (413) and a
time limit (408), and all bodies being read at once share one budget of bytes (503).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import anyio
from starlette.types import Message, Receive, Scope

from x402_meter.errors import RequestRefusedError

BUSY_RETRY_AFTER_SECONDS: Final = 1


class BodyBudget:
    """The bytes of request bodies being read at once, across the requests of one meter.

    Only bodies still arriving count: a body is given back once it is read (or refused), so
    a slow upload holds its share for at most the read time limit.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


@dataclass(frozen=True, slots=True)
class RequestBody:
    body: bytes
    disconnect: Message | None
    """The message that ended the body early (the client left), if one did."""


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, if it sent a well-formed one."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def read_request_body(
    scope: Scope, receive: Receive, *, limit: int, time_limit: float, budget: BodyBudget
) -> RequestBody:
    """The whole body, or a ``RequestRefusedError``: 413 over ``limit`` bytes (before reading
    any of it when ``Content-Length`` says so), 408 if it takes more than ``time_limit``
    seconds, 503 when the bodies being read would take more than ``budget``."""
    declared = declared_length(scope)
    if declared is not None and declared > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []  # kept as they came: no copy until the end, none grown
    size = 0
    try:
        # move_on_after, not fail_after: the same deadline at half the cost (fail_after
        # wraps it in two generator-based context managers), paid by every metered request.
        with anyio.move_on_after(time_limit):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return RequestBody(b"".join(chunks), message)
                chunk: bytes = message.get("body", b"")
                if size + len(chunk) > limit:
                    raise _too_large(limit)
                if not budget.take(len(chunk)):
                    raise RequestRefusedError(
                        "server_busy",
                        "too many request bodies are being read at once; try again shortly",
                        status_code=503,
                        retry_after=BUSY_RETRY_AFTER_SECONDS,
                    )
                chunks.append(chunk)
                size += len(chunk)
                if not message.get("more_body", False):
                    return RequestBody(b"".join(chunks), None)
        # Only the deadline leaves the loop this way.
        raise RequestRefusedError(
            "request_timeout",
            f"the request body did not arrive within {time_limit:g} seconds",
            status_code=408,
        )
    finally:
        budget.give_back(size)


def _too_large(limit: int) -> RequestRefusedError:
    return RequestRefusedError(
        "request_too_large",
        f"a metered request body may have at most {limit} bytes",
        status_code=413,
    )

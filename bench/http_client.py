"""A minimal HTTP/1.1 client for the loopback benchmarks: one request per connection.

httpx would spend more CPU per byte than the server does, and on a two-core machine the
client would then be what is measured. This one writes the request and counts the bytes
that come back (chunked framing included), noting when the first byte and the first SSE
event (``data:``) arrive. Payments are signed before any clock starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

READ_SIZE = 1 << 18
_EVENT = b"data:"


class Exchange:
    """One request and its response, on a fresh connection (``Connection: close``)."""

    def __init__(
        self,
        host: str,
        port: int,
        target: str,
        *,
        method: str = "POST",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        lines = [
            f"{method} {target} HTTP/1.1",
            f"host: {host}:{port}",
            "content-type: application/json",
            f"content-length: {len(body)}",
            "connection: close",
            *(f"{name}: {value}" for name, value in headers),
        ]
        self._request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        self._host, self._port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.started = 0.0
        self.first_byte = float("nan")
        """Seconds from connecting to the first byte of the response."""
        self.first_event = float("nan")
        """Seconds from connecting to the first ``data:`` of the body (NaN if none came)."""
        self.elapsed = float("nan")
        """Seconds from connecting to the end of the response."""
        self.size = 0
        """Bytes of the body as they came over the wire (chunked framing included)."""
        self.tail = b""
        self._window = b""

    async def run(self) -> Exchange:
        await self.start()
        await self.finish()
        return self

    async def start(self, *, until_first_event: bool = True) -> None:
        """Connect, send, and read the head (and, for a stream, up to its first event)."""
        self.started = time.perf_counter()
        self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        self._writer.write(self._request)
        head = b""
        while b"\r\n\r\n" not in head:
            data = await self._reader.read(READ_SIZE)
            if not data:
                raise ConnectionError(f"connection closed before the head: {head!r}")
            if not head:
                self.first_byte = time.perf_counter() - self.started
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split(" ", 2)[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers.setdefault(name.strip().lower(), value.strip())
        self._take(rest)
        if until_first_event and self.status == 200:
            while self.first_event != self.first_event:  # NaN: no event yet
                data = await self._reader.read(READ_SIZE)
                if not data:
                    self._end()
                    return
                self._take(data)

    async def finish(self) -> None:
        """Read the rest of the response, to the server closing the connection."""
        assert self._reader is not None
        if self._writer is None:
            return
        read = self._reader.read
        size = 0
        previous = last = b""
        while data := await read(READ_SIZE):
            size += len(data)
            previous, last = last, data
        self.size += size
        self.tail = (self.tail + previous[-64:] + last)[-64:]
        self._end()

    def _take(self, data: bytes) -> None:
        self.size += len(data)
        self.tail = (self.tail + data)[-64:]
        if self.first_event != self.first_event:
            window = self._window + data
            if _EVENT in window:
                self.first_event = time.perf_counter() - self.started
            self._window = window[-(len(_EVENT) - 1) :]

    def _end(self) -> None:
        self.elapsed = time.perf_counter() - self.started
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    @property
    def complete_stream(self) -> bool:
        """Whether a chunked SSE response ended with ``[DONE]`` and the last chunk."""
        return self.tail.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")

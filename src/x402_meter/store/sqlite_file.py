"""One SQLite file as the stores use it: WAL, a busy timeout, one call at a time on a thread.

WAL journal (readers never block the writer), ``synchronous`` as asked, and a busy timeout
so concurrent workers (several processes on one host) queue instead of failing. Calls run
on a worker thread, one at a time per file object, so the event loop never blocks. The
ledger (``SQLiteStore``) and the channels (``SQLiteChannelStore``) each open their own.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal, TypeVar

import anyio
import anyio.to_thread

_T = TypeVar("_T")

LOCKED_RETRY_SECONDS: Final = 0.005
"""How long opening the file waits before trying again when another connection holds it."""

Synchronous = Literal["NORMAL", "FULL"]


class SQLiteFile:
    """A lazily opened connection to ``path`` with ``schema`` applied, used one call at a time."""

    def __init__(
        self,
        path: str | Path,
        schema: str,
        *,
        synchronous: Synchronous = "NORMAL",
        busy_timeout_seconds: float = 10.0,
    ) -> None:
        """``synchronous="NORMAL"`` survives any process crash; ``"FULL"`` also power loss."""
        self.path = Path(path)
        self._schema = schema
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout_seconds
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(1)

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            try:
                connection.row_factory = sqlite3.Row
                self._set_up(connection)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _set_up(self, connection: sqlite3.Connection) -> None:
        """WAL, ``synchronous`` and the schema, tried again while another connection holds
        the file (up to the busy timeout). Turning a new file to WAL answers "database is
        locked" at once, without the busy handler, while another connection opens it: the
        ledger, the channel store and the claims worker of one process open the same file
        at the first request, each on its own thread."""
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute(f"PRAGMA synchronous={self._synchronous}")
                connection.executescript(self._schema)
                return
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() >= deadline:
                    raise
                time.sleep(LOCKED_RETRY_SECONDS)  # on the worker thread, not the event loop

    async def run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """``work(connection)`` on the worker thread, after every earlier call has finished."""

        def locked() -> _T:
            with self._lock:
                return work(self._connect())

        return await anyio.to_thread.run_sync(locked, limiter=self._limiter)

    async def close(self) -> None:
        def close(db: sqlite3.Connection) -> None:
            db.close()
            self._connection = None

        if self._connection is not None:
            await self.run(close)

"""Channels in SQLite: the ledger's file, its own table, one statement per write.

A compare-and-set is one ``INSERT ... ON CONFLICT DO NOTHING`` (a new channel) or one
``UPDATE ... WHERE version = ?`` (a known one): two processes can never both win. Amounts
are text (uint256 does not fit SQLite's integers).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from pathlib import Path
from typing import Any, Final

from x402_meter.store.channel_base import ChannelRecord
from x402_meter.store.sqlite_file import SQLiteFile, Synchronous

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS x402_channels (
    channel_id TEXT PRIMARY KEY,
    network TEXT NOT NULL,
    payer TEXT NOT NULL,
    payer_authorizer TEXT NOT NULL,
    receiver TEXT NOT NULL,
    receiver_authorizer TEXT NOT NULL,
    token TEXT NOT NULL,
    withdraw_delay INTEGER NOT NULL,
    salt TEXT NOT NULL,
    balance TEXT NOT NULL,
    total_claimed TEXT NOT NULL,
    withdraw_requested_at INTEGER NOT NULL,
    refund_nonce TEXT NOT NULL,
    synced_at REAL NOT NULL,
    charged TEXT NOT NULL,
    voucher_max TEXT NOT NULL,
    voucher_signature TEXT NOT NULL,
    serving TEXT,
    serving_until REAL NOT NULL,
    last_charged TEXT,
    claimed TEXT NOT NULL,
    claim_transaction TEXT,
    claiming TEXT,
    claiming_until REAL NOT NULL,
    claim_failures INTEGER NOT NULL,
    claim_error TEXT,
    refunded TEXT NOT NULL,
    refund_transaction TEXT,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS x402_channels_updated ON x402_channels (updated_at);
CREATE INDEX IF NOT EXISTS x402_channels_unclaimed ON x402_channels (claiming_until)
    WHERE charged <> claimed;
"""

_FIELDS: Final = tuple(field.name for field in dataclasses.fields(ChannelRecord))
_COLUMNS: Final = ", ".join(_FIELDS)
_AMOUNTS: Final = frozenset(
    {"balance", "total_claimed", "refund_nonce", "charged", "voucher_max", "claimed", "refunded"}
)


def _row(record: ChannelRecord) -> tuple[Any, ...]:
    return tuple(
        str(value) if name in _AMOUNTS else value
        for name, value in zip(_FIELDS, dataclasses.astuple(record), strict=True)
    )


def _record(row: sqlite3.Row) -> ChannelRecord:
    values: dict[str, Any] = {
        name: int(row[name]) if name in _AMOUNTS else row[name] for name in _FIELDS
    }
    return ChannelRecord(**values)


class SQLiteChannelStore:
    """Channel records in the SQLite file ``path`` (the ledger's, or another)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "NORMAL",
        busy_timeout_seconds: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self._file = SQLiteFile(
            path, _SCHEMA, synchronous=synchronous, busy_timeout_seconds=busy_timeout_seconds
        )

    async def get(self, channel_id: str) -> ChannelRecord | None:
        def get(db: sqlite3.Connection) -> ChannelRecord | None:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM x402_channels WHERE channel_id = ?",
                (channel_id.lower(),),
            ).fetchone()
            return None if row is None else _record(row)

        return await self._file.run(get)

    async def put(self, record: ChannelRecord) -> ChannelRecord | None:
        now = time.time()
        stored = record.as_stored(now)
        values = _row(stored)

        def put(db: sqlite3.Connection) -> bool:
            if record.version == 0:
                placeholders = ", ".join("?" * len(_FIELDS))
                cursor = db.execute(
                    f"INSERT INTO x402_channels ({_COLUMNS}) VALUES ({placeholders})"
                    " ON CONFLICT (channel_id) DO NOTHING",
                    values,
                )
            else:
                changes = ", ".join(f"{name} = ?" for name in _FIELDS if name != "channel_id")
                rest = tuple(
                    v for name, v in zip(_FIELDS, values, strict=True) if name != "channel_id"
                )
                cursor = db.execute(
                    f"UPDATE x402_channels SET {changes} WHERE channel_id = ? AND version = ?",
                    (*rest, stored.channel_id, record.version),
                )
            return cursor.rowcount == 1

        return stored if await self._file.run(put) else None

    async def claimable(self, now: float, limit: int = 100) -> list[ChannelRecord]:
        # ``claimed`` never exceeds ``charged`` and both are canonical decimals: as text,
        # "not equal" is "charged above claimed", which the partial index covers.
        def select(db: sqlite3.Connection) -> list[ChannelRecord]:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM x402_channels"
                " WHERE charged <> claimed AND claiming_until <= ?"
                " ORDER BY claiming_until, synced_at LIMIT ?",
                (now, limit),
            ).fetchall()
            return [r for r in map(_record, rows) if r.claimable(now)]

        return await self._file.run(select)

    async def list(self, limit: int = 100, offset: int = 0) -> list[ChannelRecord]:
        def select(db: sqlite3.Connection) -> list[ChannelRecord]:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM x402_channels ORDER BY updated_at DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
            return [_record(row) for row in rows]

        return await self._file.run(select)

    async def aclose(self) -> None:
        await self._file.close()

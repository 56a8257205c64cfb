"""SQLite: the embedded default store, safe for several worker processes on one host.

Every write a single statement or an ``IMMEDIATE`` transaction, on a ``SQLiteFile`` (WAL, a
busy timeout, calls on a worker thread one at a time). Reservation is one conditional
upsert, so two processes can never both win. Amounts are stored as text: a uint256 does not
fit SQLite's 64-bit integers.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Final, TypeVar

from x402_meter.store.base import LedgerState, PaymentRecord, VoidedPayer
from x402_meter.store.sqlite_file import SQLiteFile, Synchronous

_T = TypeVar("_T")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS x402_reservations (
    key TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS x402_payments (
    receipt_id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    scheme TEXT NOT NULL,
    network TEXT NOT NULL,
    asset TEXT NOT NULL,
    payer TEXT NOT NULL,
    pay_to TEXT NOT NULL,
    max_amount TEXT NOT NULL,
    x402_version INTEGER NOT NULL,
    payload_json TEXT NOT NULL,
    requirements_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    amount TEXT,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cached_input_tokens INTEGER NOT NULL DEFAULT 0,
    usage_source TEXT,
    transaction_hash TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS x402_payments_open ON x402_payments (next_attempt_at)
    WHERE state IN ('verified', 'to_settle');
CREATE INDEX IF NOT EXISTS x402_payments_created ON x402_payments (created_at);
CREATE TABLE IF NOT EXISTS x402_voided_payers (
    payer TEXT PRIMARY KEY,
    until REAL NOT NULL,
    reason TEXT NOT NULL,
    voided_at REAL NOT NULL,
    receipt_id TEXT
);
"""

_COLUMNS: Final = (
    "receipt_id, key, state, scheme, network, asset, payer, pay_to, max_amount, x402_version,"
    " payload_json, requirements_json, created_at, updated_at, amount, input_tokens,"
    " output_tokens, cached_input_tokens, usage_source, transaction_hash, error, attempts,"
    " next_attempt_at, lease_owner, lease_until"
)
_OPEN: Final = "('verified', 'to_settle')"
_VOIDED_COLUMNS: Final = "payer, until, reason, voided_at, receipt_id"
_SWEEP_EVERY: Final = 4096


def _row(record: PaymentRecord) -> tuple[Any, ...]:
    return (
        record.receipt_id,
        record.key,
        record.state.value,
        record.scheme,
        record.network,
        record.asset,
        record.payer,
        record.pay_to,
        str(record.max_amount),
        record.x402_version,
        record.payload_json,
        record.requirements_json,
        record.created_at,
        record.updated_at,
        None if record.amount is None else str(record.amount),
        record.input_tokens,
        record.output_tokens,
        record.cached_input_tokens,
        record.usage_source,
        record.transaction,
        record.error,
        record.attempts,
        record.next_attempt_at,
        record.lease_owner,
        record.lease_until,
    )


def _record(row: sqlite3.Row) -> PaymentRecord:
    return PaymentRecord(
        receipt_id=row["receipt_id"],
        key=row["key"],
        state=LedgerState(row["state"]),
        scheme=row["scheme"],
        network=row["network"],
        asset=row["asset"],
        payer=row["payer"],
        pay_to=row["pay_to"],
        max_amount=int(row["max_amount"]),
        x402_version=row["x402_version"],
        payload_json=row["payload_json"],
        requirements_json=row["requirements_json"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        amount=None if row["amount"] is None else int(row["amount"]),
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cached_input_tokens=row["cached_input_tokens"],
        usage_source=row["usage_source"],
        transaction=row["transaction_hash"],
        error=row["error"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        lease_owner=row["lease_owner"],
        lease_until=row["lease_until"],
    )


class SQLiteStore:
    """Reservations and ledger in one SQLite file (``sqlite:///path`` in store URLs)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "NORMAL",
        busy_timeout_seconds: float = 10.0,
    ) -> None:
        """``synchronous="NORMAL"`` survives any process crash; ``"FULL"`` also power loss."""
        self.path = Path(path)
        self._file = SQLiteFile(
            path, _SCHEMA, synchronous=synchronous, busy_timeout_seconds=busy_timeout_seconds
        )
        self._until_sweep = _SWEEP_EVERY

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._file.run(work)

    async def reserve(self, key: str, expires_at: float) -> bool:
        now = time.time()

        def reserve(db: sqlite3.Connection) -> bool:
            # One statement: insert, or take over a reservation that has expired.
            cursor = db.execute(
                "INSERT INTO x402_reservations (key, expires_at) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at"
                " WHERE x402_reservations.expires_at <= ?",
                (key, expires_at, now),
            )
            return cursor.rowcount == 1

        won = await self._run(reserve)
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self._until_sweep = _SWEEP_EVERY
            await self._run(
                lambda db: db.execute("DELETE FROM x402_reservations WHERE expires_at <= ?", (now,))
            )
        return won

    async def release(self, key: str) -> None:
        await self._run(
            lambda db: db.execute("DELETE FROM x402_reservations WHERE key = ?", (key,))
        )

    async def save(self, record: PaymentRecord) -> None:
        placeholders = ", ".join("?" * len(_COLUMNS.split(",")))
        await self._run(
            lambda db: db.execute(
                f"INSERT OR REPLACE INTO x402_payments ({_COLUMNS}) VALUES ({placeholders})",
                _row(record),
            )
        )

    async def get(self, receipt_id: str) -> PaymentRecord | None:
        def get(db: sqlite3.Connection) -> PaymentRecord | None:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM x402_payments WHERE receipt_id = ?", (receipt_id,)
            ).fetchone()
            return None if row is None else _record(row)

        return await self._run(get)

    async def claim(
        self, receipt_id: str, owner: str, until: float, now: float
    ) -> PaymentRecord | None:
        def claim(db: sqlite3.Connection) -> PaymentRecord | None:
            row = db.execute(
                f"UPDATE x402_payments SET lease_owner = ?, lease_until = ?"
                f" WHERE receipt_id = ? AND state IN {_OPEN}"
                " AND (lease_owner IS NULL OR lease_owner = ? OR lease_until <= ?)"
                f" RETURNING {_COLUMNS}",
                (owner, until, receipt_id, owner, now),
            ).fetchone()
            return None if row is None else _record(row)

        return await self._run(claim)

    async def due(self, now: float, limit: int = 100) -> list[PaymentRecord]:
        def due(db: sqlite3.Connection) -> list[PaymentRecord]:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM x402_payments WHERE state IN {_OPEN}"
                " AND lease_until <= ? AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
                (now, now, limit),
            ).fetchall()
            return [_record(row) for row in rows]

        return await self._run(due)

    async def void_payer(self, entry: VoidedPayer) -> None:
        row = (entry.payer.lower(), entry.until, entry.reason, entry.voided_at, entry.receipt_id)
        now = time.time()

        def void(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM x402_voided_payers WHERE until <= ?", (now,))  # forgotten
            db.execute(
                f"INSERT OR REPLACE INTO x402_voided_payers ({_VOIDED_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?)",
                row,
            )

        await self._run(void)

    async def voided_payer(self, payer: str, now: float) -> VoidedPayer | None:
        def get(db: sqlite3.Connection) -> VoidedPayer | None:
            row = db.execute(
                f"SELECT {_VOIDED_COLUMNS} FROM x402_voided_payers WHERE payer = ? AND until > ?",
                (payer.lower(), now),
            ).fetchone()
            return None if row is None else VoidedPayer(*row)

        return await self._run(get)

    async def voided_payers(self, now: float, limit: int = 100) -> list[VoidedPayer]:
        def select(db: sqlite3.Connection) -> list[VoidedPayer]:
            rows = db.execute(
                f"SELECT {_VOIDED_COLUMNS} FROM x402_voided_payers WHERE until > ?"
                " ORDER BY voided_at DESC LIMIT ?",
                (now, limit),
            ).fetchall()
            return [VoidedPayer(*row) for row in rows]

        return await self._run(select)

    async def clear_voided_payer(self, payer: str) -> bool:
        now = time.time()

        def clear(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "DELETE FROM x402_voided_payers WHERE payer = ? AND until > ?", (payer.lower(), now)
            )
            return cursor.rowcount > 0

        return await self._run(clear)

    async def list(
        self, states: Collection[LedgerState] | None = None, limit: int = 100, offset: int = 0
    ) -> list[PaymentRecord]:
        def select(db: sqlite3.Connection) -> list[PaymentRecord]:
            where, params = "", []
            if states is not None:
                wanted = [LedgerState(state).value for state in states]
                where = f" WHERE state IN ({', '.join('?' * len(wanted))})"
                params = wanted
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM x402_payments{where}"
                " ORDER BY created_at DESC LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
            return [_record(row) for row in rows]

        return await self._run(select)

    async def aclose(self) -> None:
        await self._file.close()

"""An in-process store: for tests and single-process development."""

from __future__ import annotations

import time

from x402_meter.store.base import PaymentRecord


class MemoryStore:
    """Reservations and ledger in dictionaries. Atomic because the event loop is one thread.

    Not shared between processes and lost on restart: use it for tests and development.
    """

    def __init__(self) -> None:
        self._reservations: dict[str, float] = {}
        self._records: dict[str, PaymentRecord] = {}

    async def reserve(self, key: str, expires_at: float) -> bool:
        held_until = self._reservations.get(key)
        if held_until is not None and held_until > time.time():
            return False
        self._reservations[key] = expires_at
        return True

    async def release(self, key: str) -> None:
        self._reservations.pop(key, None)

    async def save(self, record: PaymentRecord) -> None:
        self._records[record.receipt_id] = record

    async def get(self, receipt_id: str) -> PaymentRecord | None:
        return self._records.get(receipt_id)

    async def aclose(self) -> None:
        return None

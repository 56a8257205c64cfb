"""An in-process store: for tests and single-process development."""

from __future__ import annotations

import time
from collections.abc import Collection

from x402_meter.store.base import OPEN_STATES, LedgerState, PaymentRecord, VoidedPayer


class MemoryStore:
    """Reservations and ledger in dictionaries. Atomic because the event loop is one thread.

    Not shared between processes and lost on restart: use it for tests and development.
    """

    _SWEEP_EVERY = 4096

    def __init__(self) -> None:
        self._reservations: dict[str, float] = {}
        self._records: dict[str, PaymentRecord] = {}
        self._voided: dict[str, VoidedPayer] = {}
        self._until_sweep = self._SWEEP_EVERY

    async def reserve(self, key: str, expires_at: float) -> bool:
        now = time.time()
        held_until = self._reservations.get(key)
        if held_until is not None and held_until > now:
            return False
        self._reservations[key] = expires_at
        self._until_sweep -= 1
        if self._until_sweep <= 0:  # expired authorizations can never be replayed: forget them
            self._until_sweep = self._SWEEP_EVERY
            self._reservations = {k: t for k, t in self._reservations.items() if t > now}
        return True

    def reserved_keys(self) -> frozenset[str]:
        """The keys held right now (for tests and debugging)."""
        return frozenset(self._reservations)

    async def release(self, key: str) -> None:
        self._reservations.pop(key, None)

    async def save(self, record: PaymentRecord) -> None:
        self._records[record.receipt_id] = record

    async def get(self, receipt_id: str) -> PaymentRecord | None:
        return self._records.get(receipt_id)

    async def claim(
        self, receipt_id: str, owner: str, until: float, now: float
    ) -> PaymentRecord | None:
        record = self._records.get(receipt_id)
        if record is None or record.state not in OPEN_STATES:
            return None
        if record.lease_owner not in (None, owner) and record.lease_until > now:
            return None
        claimed = record.replace(lease_owner=owner, lease_until=until)
        self._records[receipt_id] = claimed
        return claimed

    async def due(self, now: float, limit: int = 100) -> list[PaymentRecord]:
        open_rows = (
            r
            for r in self._records.values()
            if r.state in OPEN_STATES and r.lease_until <= now and r.next_attempt_at <= now
        )
        return sorted(open_rows, key=lambda r: r.next_attempt_at)[:limit]

    async def void_payer(self, entry: VoidedPayer) -> None:
        now = time.time()
        self._voided = {p: e for p, e in self._voided.items() if e.until > now}  # few, ever
        self._voided[entry.payer.lower()] = entry

    async def voided_payer(self, payer: str, now: float) -> VoidedPayer | None:
        entry = self._voided.get(payer.lower())
        return entry if entry is not None and entry.until > now else None

    async def voided_payers(self, now: float, limit: int = 100) -> list[VoidedPayer]:
        entries = [e for e in self._voided.values() if e.until > now]
        entries.sort(key=lambda e: e.voided_at, reverse=True)
        return entries[:limit]

    async def clear_voided_payer(self, payer: str) -> bool:
        entry = self._voided.pop(payer.lower(), None)
        return entry is not None and entry.until > time.time()

    async def list(
        self, states: Collection[LedgerState] | None = None, limit: int = 100, offset: int = 0
    ) -> list[PaymentRecord]:
        rows = [r for r in self._records.values() if states is None or r.state in states]
        rows.sort(key=lambda r: r.created_at, reverse=True)
        return rows[offset : offset + limit]

    async def aclose(self) -> None:
        return None

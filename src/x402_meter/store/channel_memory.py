"""Channels in a dictionary: for tests and single-process development."""

from __future__ import annotations

import dataclasses
import time

from x402_meter.store.channel_base import ChannelRecord, ClaimRecord


class MemoryChannelStore:
    """Compare-and-set on a dictionary; atomic because the event loop is one thread."""

    def __init__(self) -> None:
        self._records: dict[str, ChannelRecord] = {}
        self._claims: dict[str, ClaimRecord] = {}
        """The claim log, by transaction, in the order logged."""

    async def get(self, channel_id: str) -> ChannelRecord | None:
        return self._records.get(channel_id.lower())

    async def put(self, record: ChannelRecord) -> ChannelRecord | None:
        key = record.channel_id.lower()
        current = self._records.get(key)
        if (current.version if current is not None else 0) != record.version:
            return None
        now = time.time()
        stored = dataclasses.replace(
            record,
            channel_id=key,
            version=record.version + 1,
            created_at=current.created_at if current is not None else now,
            updated_at=now,
        )
        self._records[key] = stored
        return stored

    async def claimable(self, now: float, limit: int = 100) -> list[ChannelRecord]:
        records = [r for r in self._records.values() if r.claimable(now)]
        records.sort(key=lambda r: (r.claiming_until, r.synced_at))
        return records[:limit]

    async def add_claim(self, claim: ClaimRecord) -> None:
        self._claims.pop(claim.transaction, None)
        self._claims[claim.transaction] = claim

    async def claims(self, limit: int = 100, offset: int = 0) -> list[ClaimRecord]:
        newest_first = sorted(self._claims.values(), key=lambda c: c.claimed_at, reverse=True)
        return newest_first[offset : offset + limit]

    async def list(self, limit: int = 100, offset: int = 0) -> list[ChannelRecord]:
        records = sorted(self._records.values(), key=lambda r: r.updated_at, reverse=True)
        return records[offset : offset + limit]

    async def aclose(self) -> None:
        return None

"""Redis: the store for many workers on many hosts.

A reservation is ``SET key NX PXAT <deadline>``: atomic, and it expires by itself when the
authorization does. Each ledger row is a hash; sorted sets index the rows by creation time
(per state, for listing) and the open rows by when they next need attention (``due``).
Saving a row and taking a lease are Lua scripts, each one atomic step on the server. A save
reads the state the row was in and takes it out of that state's set only (and out of the
open set only when it leaves an open state), so it costs the same however many states
there are, and writers on many hosts never leave a row listed under a state it has left.
The ledger survives the death of any worker; it is as durable as the Redis server is
configured to be (use AOF with ``appendfsync everysec`` or ``always`` for money).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection
from typing import Any, Final

from x402_meter.store.base import OPEN_STATES, LedgerState, PaymentRecord, VoidedPayer

try:
    from redis.asyncio import Redis
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the Redis store needs redis-py: pip install 'x402-meter[redis]'") from exc

_INT_FIELDS: Final = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "attempts",
    "x402_version",
)
_FLOAT_FIELDS: Final = ("created_at", "updated_at", "next_attempt_at", "lease_until")
_OPTIONAL_FIELDS: Final = ("usage_source", "transaction", "error", "lease_owner")

# KEYS: row hash, created zset, open zset, then one zset per state (in ARGV[5]'s order).
# ARGV: receipt id, new state, created_at, open score ('' for a final state), states (csv),
# open states (csv), then the row's field/value pairs. Reading the previous state in the
# same atomic step as the write is what keeps concurrent writers from missing a move.
_SAVE: Final = """
local previous = redis.call('HGET', KEYS[1], 'state')
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
local index = 4
for state in string.gmatch(ARGV[5], '[^,]+') do
  if state == ARGV[2] then
    redis.call('ZADD', KEYS[index], ARGV[3], ARGV[1])
  elseif state == previous then
    redis.call('ZREM', KEYS[index], ARGV[1])
  end
  index = index + 1
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
elseif previous and string.find(',' .. ARGV[6] .. ',', ',' .. previous .. ',', 1, true) then
  redis.call('ZREM', KEYS[3], ARGV[1])
end
"""

# KEYS: row hash, open zset. ARGV: owner, until, now, open states (csv).
_CLAIM: Final = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or not string.find(',' .. ARGV[4] .. ',', ',' .. state .. ',', 1, true) then
  return nil
end
local owner = redis.call('HGET', KEYS[1], 'lease_owner')
local lease_until = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
if owner and owner ~= '' and owner ~= ARGV[1] and lease_until > tonumber(ARGV[3]) then
  return nil
end
redis.call('HSET', KEYS[1], 'lease_owner', ARGV[1], 'lease_until', ARGV[2])
local next_attempt = tonumber(redis.call('HGET', KEYS[1], 'next_attempt_at') or '0')
redis.call('ZADD', KEYS[2], math.max(tonumber(ARGV[2]), next_attempt), ARGV[5])
return redis.call('HGETALL', KEYS[1])
"""


def _encode(record: PaymentRecord) -> dict[Any, str]:  # Any: redis-py's key type is a union
    fields: dict[Any, str] = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        fields[field.name] = (
            "" if value is None else str(value.value if isinstance(value, LedgerState) else value)
        )
    return fields


def _decode(raw: dict[str, str]) -> PaymentRecord:
    values: dict[str, Any] = dict(raw)
    values["state"] = LedgerState(raw["state"])
    values["max_amount"] = int(raw["max_amount"])
    values["amount"] = int(raw["amount"]) if raw.get("amount") else None
    for name in _INT_FIELDS:
        values[name] = int(raw.get(name) or 0)
    for name in _FLOAT_FIELDS:
        values[name] = float(raw.get(name) or 0)
    for name in _OPTIONAL_FIELDS:
        values[name] = raw.get(name) or None
    return PaymentRecord(**values)


def _strings(values: Any) -> list[str]:
    return [str(value) for value in values]


class RedisStore:
    """Reservations and ledger in Redis (``redis://host:port/db`` in store URLs)."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "x402:") -> None:
        self.url = url
        self.prefix = prefix
        """Where its keys start (a channel store beside it uses the same)."""
        self._redis: Redis = Redis.from_url(url, decode_responses=True)
        self._prefix = prefix
        self._open = f"{prefix}open"
        self._created = f"{prefix}created"
        self._voided = f"{prefix}voided"
        """Voided payers, scored by the time until which they are refused."""
        self._claim = self._redis.register_script(_CLAIM)
        self._save = self._redis.register_script(_SAVE)
        self._state_csv = ",".join(state.value for state in LedgerState)
        self._open_state_csv = ",".join(state.value for state in OPEN_STATES)
        self._state_keys = [self._state_key(state) for state in LedgerState]

    def _row_key(self, receipt_id: str) -> str:
        return f"{self._prefix}payment:{receipt_id}"

    def _state_key(self, state: LedgerState) -> str:
        return f"{self._prefix}state:{state.value}"

    async def reserve(self, key: str, expires_at: float) -> bool:
        expiry_ms = max(int(expires_at * 1000), int(time.time() * 1000) + 1)
        won = await self._redis.set(
            f"{self._prefix}reservation:{key}", "1", nx=True, pxat=expiry_ms
        )
        return bool(won)

    async def release(self, key: str) -> None:
        await self._redis.delete(f"{self._prefix}reservation:{key}")

    async def save(self, record: PaymentRecord) -> None:
        # Every state's set is declared as a key (as Redis asks of scripts); the script
        # touches only the new state's and, if the row moved, the previous state's.
        open_score = (
            repr(max(record.lease_until, record.next_attempt_at))
            if record.state in OPEN_STATES
            else ""
        )
        fields = [item for pair in _encode(record).items() for item in pair]
        await self._save(
            keys=[self._row_key(record.receipt_id), self._created, self._open, *self._state_keys],
            args=[
                record.receipt_id,
                record.state.value,
                repr(record.created_at),
                open_score,
                self._state_csv,
                self._open_state_csv,
                *fields,
            ],
        )

    async def get(self, receipt_id: str) -> PaymentRecord | None:
        raw = await self._redis.hgetall(self._row_key(receipt_id))
        return _decode({str(k): str(v) for k, v in raw.items()}) if raw else None

    async def claim(
        self, receipt_id: str, owner: str, until: float, now: float
    ) -> PaymentRecord | None:
        open_states = ",".join(state.value for state in OPEN_STATES)
        flat = await self._claim(
            keys=[self._row_key(receipt_id), self._open],
            args=[owner, repr(until), repr(now), open_states, receipt_id],
        )
        if not flat:
            return None
        return _decode({str(k): str(v) for k, v in zip(flat[::2], flat[1::2], strict=True)})

    async def _rows(self, receipt_ids: list[str]) -> list[PaymentRecord]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for receipt_id in receipt_ids:
                pipe.hgetall(self._row_key(receipt_id))
            raws = await pipe.execute()
        return [_decode(raw) for raw in raws if raw]

    async def due(self, now: float, limit: int = 100) -> list[PaymentRecord]:
        ids = await self._redis.zrangebyscore(self._open, "-inf", now, start=0, num=limit)
        rows = await self._rows(_strings(ids))
        return [
            r
            for r in rows
            if r.state in OPEN_STATES and r.lease_until <= now and r.next_attempt_at <= now
        ]

    def _voided_key(self, payer: str) -> str:
        return f"{self._prefix}voided:{payer.lower()}"

    async def void_payer(self, entry: VoidedPayer) -> None:
        # The entry's own key expires when the refusal does; the index is pruned as it is read.
        payer = entry.payer.lower()
        fields = {
            "until": repr(entry.until),
            "reason": entry.reason,
            "voided_at": repr(entry.voided_at),
            "receipt_id": entry.receipt_id or "",
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._voided_key(payer))
            pipe.hset(self._voided_key(payer), mapping=fields)  # type: ignore[arg-type]
            pipe.pexpireat(self._voided_key(payer), max(int(entry.until * 1000), 1))
            pipe.zadd(self._voided, {payer: entry.until})
            await pipe.execute()

    @staticmethod
    def _voided_entry(payer: str, raw: dict[str, str]) -> VoidedPayer:
        return VoidedPayer(
            payer=payer,
            until=float(raw["until"]),
            reason=raw["reason"],
            voided_at=float(raw["voided_at"]),
            receipt_id=raw.get("receipt_id") or None,
        )

    async def voided_payer(self, payer: str, now: float) -> VoidedPayer | None:
        raw = await self._redis.hgetall(self._voided_key(payer))
        if not raw:
            return None
        entry = self._voided_entry(payer.lower(), {str(k): str(v) for k, v in raw.items()})
        return entry if entry.until > now else None

    async def voided_payers(self, now: float, limit: int = 100) -> list[VoidedPayer]:
        # Prune what has expired by the clock (``now`` may be a question about the future).
        await self._redis.zremrangebyscore(self._voided, "-inf", min(now, time.time()))
        payers = _strings(await self._redis.zrangebyscore(self._voided, f"({now!r}", "+inf"))
        async with self._redis.pipeline(transaction=False) as pipe:
            for payer in payers:
                pipe.hgetall(self._voided_key(payer))
            raws = await pipe.execute()
        entries = [
            self._voided_entry(payer, {str(k): str(v) for k, v in raw.items()})
            for payer, raw in zip(payers, raws, strict=True)
            if raw
        ]
        entries = [e for e in entries if e.until > now]
        entries.sort(key=lambda e: e.voided_at, reverse=True)
        return entries[:limit]

    async def clear_voided_payer(self, payer: str) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._voided_key(payer))
            pipe.zrem(self._voided, payer.lower())
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def list(
        self, states: Collection[LedgerState] | None = None, limit: int = 100, offset: int = 0
    ) -> list[PaymentRecord]:
        if states is None:
            ids = await self._redis.zrevrange(self._created, offset, offset + limit - 1)
            return await self._rows(_strings(ids))
        wanted = {LedgerState(state) for state in states}
        found: dict[str, PaymentRecord] = {}
        for state in wanted:
            ids = await self._redis.zrevrange(self._state_key(state), 0, offset + limit - 1)
            # A row another writer moves between these reads is fetched as it is now: keep
            # it once, and only if its state is still one of those asked for.
            for row in await self._rows(_strings(ids)):
                if row.state in wanted:
                    found[row.receipt_id] = row
        rows = sorted(found.values(), key=lambda r: r.created_at, reverse=True)
        return rows[offset : offset + limit]

    async def aclose(self) -> None:
        await self._redis.aclose()

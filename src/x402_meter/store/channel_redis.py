"""Channels in Redis: for sessions served by many workers on many hosts.

Each channel is a hash; a sorted set orders the channels by when they were last written
(for listing) and another holds the channels with something to claim, scored by when their
claim is free (``claiming_until``). A write is one Lua script, one atomic step on the
server: it compares the stored ``version`` with the one the writer read and only then
writes the hash and both indexes, so two writers can never both win and the indexes never
disagree with the hash. The claim log is a hash (transaction -> the claim as JSON) and a
sorted set of the transactions by time. Amounts are decimal strings (uint256 does not fit
Redis's numbers). As durable as the Redis server is configured to be: use AOF
(``appendfsync everysec`` or ``always``) for money.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any, Final

from x402_meter.store.channel_base import ChannelRecord, ClaimRecord

try:
    from redis.asyncio import Redis
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the Redis store needs redis-py: pip install 'x402-meter[redis]'") from exc

_READERS: Final[dict[str, Callable[[str], Any]]] = {
    "str": str,
    "str | None": lambda text: text or None,
    "int": lambda text: int(text or 0),
    "float": lambda text: float(text or 0),
}
_FIELDS: Final = {
    field.name: _READERS[str(field.type)] for field in dataclasses.fields(ChannelRecord)
}
"""How to read each field back from its string (a new field of another type fails here)."""

# KEYS: the channel's hash, the "updated" zset, the "claimable" zset.
# ARGV: the version read (0: none stored), channel id, updated_at, '1' if it has something
# to claim, its claiming_until, then the record's field/value pairs.
_PUT: Final = """
local stored = redis.call('HGET', KEYS[1], 'version') or '0'
if stored ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
else
  redis.call('ZREM', KEYS[3], ARGV[2])
end
return 1
"""


def _encode(record: ChannelRecord) -> list[str]:
    """The record as field/value pairs: None as '', floats exactly (``repr``)."""
    pairs: list[str] = []
    for name in _FIELDS:
        value = getattr(record, name)
        text = repr(value) if isinstance(value, float) else "" if value is None else str(value)
        pairs += [name, text]
    return pairs


def _decode(raw: dict[str, str]) -> ChannelRecord:
    return ChannelRecord(**{name: read(raw.get(name, "")) for name, read in _FIELDS.items()})


class RedisChannelStore:
    """Channel records in Redis (``redis://host:port/db``), keys under ``prefix``."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "x402:") -> None:
        self.url = url
        self.prefix = prefix
        self._redis: Redis = Redis.from_url(url, decode_responses=True)
        self._updated = f"{prefix}channels:updated"
        self._claimable = f"{prefix}channels:claimable"
        self._put = self._redis.register_script(_PUT)
        self._claim_log = f"{prefix}channels:claims"
        self._claim_times = f"{prefix}channels:claims:at"

    def _key(self, channel_id: str) -> str:
        return f"{self.prefix}channel:{channel_id.lower()}"

    async def get(self, channel_id: str) -> ChannelRecord | None:
        raw = await self._redis.hgetall(self._key(channel_id))
        return _decode({str(k): str(v) for k, v in raw.items()}) if raw else None

    async def put(self, record: ChannelRecord) -> ChannelRecord | None:
        now = time.time()
        stored = record.as_stored(now)
        written = await self._put(
            keys=[self._key(stored.channel_id), self._updated, self._claimable],
            args=[
                str(record.version),
                stored.channel_id,
                repr(now),
                "1" if stored.charged > stored.claimed else "",
                repr(stored.claiming_until),
                *_encode(stored),
            ],
        )
        return stored if written == 1 else None

    async def _records(self, channel_ids: list[str]) -> list[ChannelRecord]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel_id in channel_ids:
                pipe.hgetall(self._key(channel_id))
            raws = await pipe.execute()
        return [_decode({str(k): str(v) for k, v in raw.items()}) for raw in raws if raw]

    async def claimable(self, now: float, limit: int = 100) -> list[ChannelRecord]:
        ids = await self._redis.zrangebyscore(self._claimable, "-inf", now, start=0, num=limit)
        # A record written between the two reads is taken as it is now: keep it only if it
        # still qualifies.
        records = [r for r in await self._records([str(i) for i in ids]) if r.claimable(now)]
        records.sort(key=lambda r: (r.claiming_until, r.synced_at))
        return records

    async def add_claim(self, claim: ClaimRecord) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._claim_log, claim.transaction, json.dumps(claim.as_json()))
            pipe.zadd(self._claim_times, {claim.transaction: claim.claimed_at})
            await pipe.execute()

    async def claims(self, limit: int = 100, offset: int = 0) -> list[ClaimRecord]:
        transactions = await self._redis.zrevrange(self._claim_times, offset, offset + limit - 1)
        if not transactions:
            return []
        texts = await self._redis.hmget(self._claim_log, [str(t) for t in transactions])
        return [ClaimRecord.from_json(json.loads(text)) for text in texts if text]

    async def list(self, limit: int = 100, offset: int = 0) -> list[ChannelRecord]:
        ids = await self._redis.zrevrange(self._updated, offset, offset + limit - 1)
        return await self._records([str(i) for i in ids])

    async def aclose(self) -> None:
        await self._redis.aclose()

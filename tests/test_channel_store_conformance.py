"""One conformance suite for every channel store backend: memory, SQLite and Redis (a private
redis-server for the session, each test under its own key prefix)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import anyio
import pytest

from x402_meter.errors import ConfigurationError
from x402_meter.store import (
    ChannelRecord,
    ChannelStore,
    ClaimedChannel,
    ClaimRecord,
    MemoryChannelStore,
    MemoryStore,
    PaymentStore,
    SQLiteChannelStore,
    SQLiteStore,
    channel_store_beside,
    open_channel_store,
)
from x402_meter.store.channel_redis import RedisChannelStore
from x402_meter.store.redis import RedisStore

pytestmark = pytest.mark.anyio

BACKENDS = ["memory", "sqlite", "redis"]
CHANNEL = "0x" + "ab" * 32


def channel_store_of(request: pytest.FixtureRequest, tmp_path: Path) -> ChannelStore:
    """A new channel store of the kind ``request.param`` names (one of ``BACKENDS``)."""
    if request.param == "memory":
        return MemoryChannelStore()
    if request.param == "sqlite":
        return SQLiteChannelStore(tmp_path / "ledger.db")
    url = request.getfixturevalue("redis_url")
    return RedisChannelStore(url, prefix=f"t{time.time_ns()}:")


@pytest.fixture(params=BACKENDS)
async def channels(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChannelStore]:
    backend = channel_store_of(request, tmp_path)
    yield backend
    await backend.aclose()


def channel(channel_id: str = CHANNEL, **changes: object) -> ChannelRecord:
    """A channel never written (version 0), with ``changes``."""
    record = ChannelRecord(
        channel_id=channel_id,
        network="eip155:31337",
        payer="0x" + "11" * 20,
        payer_authorizer="0x" + "11" * 20,
        receiver="0x" + "33" * 20,
        receiver_authorizer="0x" + "44" * 20,
        token="0x" + "55" * 20,
        withdraw_delay=900,
        salt="0x" + "00" * 32,
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


async def test_a_new_channel_is_stored_at_version_one(channels: ChannelStore) -> None:
    stored = await channels.put(channel(balance=10_000, synced_at=1.5))
    assert stored is not None
    assert stored.version == 1
    assert await channels.get(CHANNEL) == stored
    assert await channels.get(CHANNEL.upper().replace("0X", "0x")) == stored
    assert await channels.get("0x" + "cd" * 32) is None


async def test_every_field_round_trips_with_uint256_amounts(channels: ChannelStore) -> None:
    huge = 2**256 - 1
    written = channel(
        balance=huge,
        total_claimed=huge - 1,
        withdraw_requested_at=1_700_000_000,
        refund_nonce=huge - 2,
        synced_at=1_700_000_001.25,
        charged=huge - 3,
        voucher_max=huge - 4,
        voucher_signature="0x" + "ee" * 65,
        serving="batch-settlement:k",
        serving_until=1_700_000_300.5,
        last_charged="batch-settlement:j",
        claimed=huge - 5,
        claim_transaction="0x" + "ff" * 32,
        claiming="host:1:ab",
        claiming_until=1_700_000_400.75,
        claim_failures=3,
        claim_error="invalid_batch_settlement_evm_claim_simulation_failed",
    )
    stored = await channels.put(written)
    assert stored is not None
    assert await channels.get(CHANNEL) == stored
    assert dataclasses.replace(stored, version=0, created_at=0.0, updated_at=0.0) == written


async def test_a_write_from_a_stale_read_fails_and_changes_nothing(
    channels: ChannelStore,
) -> None:
    first = await channels.put(channel(charged=100))
    assert first is not None
    second = await channels.put(dataclasses.replace(first, charged=200))
    assert second is not None
    assert second.version == 2
    assert await channels.put(dataclasses.replace(first, charged=999)) is None
    assert await channels.get(CHANNEL) == second


async def test_a_second_new_record_for_a_known_channel_fails(channels: ChannelStore) -> None:
    first = await channels.put(channel(charged=100))
    assert await channels.put(channel(charged=5)) is None
    assert await channels.get(CHANNEL) == first


async def test_of_fifty_writes_from_one_read_exactly_one_wins(channels: ChannelStore) -> None:
    read = await channels.put(channel())
    assert read is not None
    wins: list[int] = []

    async def write(serving: int) -> None:
        if await channels.put(dataclasses.replace(read, serving=f"k{serving}")) is not None:
            wins.append(serving)

    async with anyio.create_task_group() as tasks:
        for index in range(50):
            tasks.start_soon(write, index)
    assert len(wins) == 1
    stored = await channels.get(CHANNEL)
    assert stored is not None
    assert stored.serving == f"k{wins[0]}"
    assert stored.version == 2


async def test_concurrent_read_modify_writes_lose_no_charge(channels: ChannelStore) -> None:
    """Twenty writers each add their charge, reading again whenever their write lost."""
    assert await channels.put(channel()) is not None

    async def charge(amount: int) -> None:
        while True:
            current = await channels.get(CHANNEL)
            assert current is not None
            if await channels.put(dataclasses.replace(current, charged=current.charged + amount)):
                return

    async with anyio.create_task_group() as tasks:
        for amount in range(1, 21):
            tasks.start_soon(charge, amount)
    stored = await channels.get(CHANNEL)
    assert stored is not None
    assert stored.charged == sum(range(1, 21))
    assert stored.version == 21


async def test_channels_are_listed_most_recently_written_first(channels: ChannelStore) -> None:
    ids = ["0x" + f"{n:02x}" * 32 for n in range(1, 4)]
    for channel_id in ids:
        assert await channels.put(channel(channel_id)) is not None
    first = await channels.get(ids[0])
    assert first is not None
    assert await channels.put(dataclasses.replace(first, charged=1)) is not None
    listed = [r.channel_id for r in await channels.list()]
    assert listed == [ids[0], ids[2], ids[1]]
    assert [r.channel_id for r in await channels.list(limit=1, offset=1)] == [ids[2]]


async def test_claimable_channels_are_charged_beyond_their_claims_with_a_free_claim(
    channels: ChannelStore,
) -> None:
    ids = ["0x" + f"{n:02x}" * 32 for n in range(1, 7)]
    written = [
        channel(ids[0], charged=10, claimed=4, claiming_until=30.0),  # free since 30
        channel(ids[1], charged=10, claimed=0),  # free since ever
        channel(ids[2], charged=10, claimed=10),  # all claimed
        channel(ids[3], charged=0),  # nothing charged
        channel(ids[4], charged=10, claiming="w", claiming_until=200.0),  # held until 200
        channel(ids[5], charged=2**255, claimed=2**255 - 1, claiming_until=50.0),
    ]
    for record in written:
        assert await channels.put(record) is not None
    assert [r.channel_id for r in await channels.claimable(100.0)] == [ids[1], ids[0], ids[5]]
    assert [r.channel_id for r in await channels.claimable(100.0, limit=2)] == ids[1::-1]
    assert [r.channel_id for r in await channels.claimable(40.0)] == [ids[1], ids[0]]
    assert ids[4] in [r.channel_id for r in await channels.claimable(200.0)]


async def test_a_channel_leaves_the_claimable_ones_when_claimed_and_returns_when_charged(
    channels: ChannelStore,
) -> None:
    stored = await channels.put(channel(charged=10))
    assert stored is not None
    assert [r.channel_id for r in await channels.claimable(1.0)] == [CHANNEL]
    stored = await channels.put(dataclasses.replace(stored, claimed=10))
    assert stored is not None
    assert await channels.claimable(1.0) == []
    assert await channels.put(dataclasses.replace(stored, charged=11)) is not None
    assert [r.charged for r in await channels.claimable(1.0)] == [11]


def test_a_record_is_busy_while_its_lease_runs() -> None:
    held = channel(serving="k", serving_until=100.0)
    assert held.busy(99.0)
    assert not held.busy(100.0)
    assert not channel().busy(0.0)


# -- SQLite: shared by processes, durable -------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_two_stores_on_one_file_or_server_share_channels_and_their_versions(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two processes' stores: one SQLite file, or one Redis server under one prefix."""
    one: ChannelStore
    other: ChannelStore
    if backend == "sqlite":
        one, other = SQLiteChannelStore(tmp_path / "l.db"), SQLiteChannelStore(tmp_path / "l.db")
    else:
        url, prefix = request.getfixturevalue("redis_url"), f"t{time.time_ns()}:"
        one, other = RedisChannelStore(url, prefix=prefix), RedisChannelStore(url, prefix=prefix)
    try:
        written = await one.put(channel(charged=7))
        assert written is not None
        assert await other.get(CHANNEL) == written
        assert await other.put(dataclasses.replace(written, charged=8)) is not None
        assert await one.put(dataclasses.replace(written, charged=9)) is None
        assert [r.charged for r in await one.claimable(1.0)] == [8]
    finally:
        await one.aclose()
        await other.aclose()


async def test_a_sqlite_channel_outlives_its_store(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    first = SQLiteChannelStore(path)
    written = await first.put(channel(charged=42))
    await first.aclose()
    again = SQLiteChannelStore(path)
    try:
        assert await again.get(CHANNEL) == written
    finally:
        await again.aclose()


async def test_the_ledger_and_the_channels_share_one_sqlite_file(tmp_path: Path) -> None:
    ledger = SQLiteStore(tmp_path / "ledger.db")
    beside = channel_store_beside(ledger)
    try:
        assert isinstance(beside, SQLiteChannelStore)
        assert beside.path == ledger.path
        assert await beside.put(channel()) is not None
        assert await ledger.reserve("k", 2**40)
    finally:
        await beside.aclose()
        await ledger.aclose()


def test_a_memory_ledger_gets_memory_channels() -> None:
    assert isinstance(channel_store_beside(MemoryStore()), MemoryChannelStore)


async def test_a_redis_ledger_gets_channels_on_its_server_under_its_prefix(
    redis_url: str,
) -> None:
    prefix = f"t{time.time_ns()}:"
    ledger = RedisStore(redis_url, prefix=prefix)
    beside = channel_store_beside(ledger)
    again = RedisChannelStore(redis_url, prefix=prefix)
    try:
        assert isinstance(beside, RedisChannelStore)
        assert (beside.url, beside.prefix) == (redis_url, prefix)
        written = await beside.put(channel(charged=3))
        assert await again.get(CHANNEL) == written
    finally:
        for store in (beside, again, ledger):
            await store.aclose()


def test_another_ledger_needs_a_channel_store_of_its_own() -> None:
    unknown = cast(PaymentStore, object())  # a payment store no channel store goes with
    with pytest.raises(ConfigurationError, match="channel_store="):
        channel_store_beside(unknown)


@pytest.mark.parametrize("url", ["redis://", "sqlite:///", "ftp://x", "nothing"])
def test_a_channel_store_url_names_memory_sqlite_or_redis(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_channel_store(url)


async def test_channel_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_channel_store("memory://"), MemoryChannelStore)
    sqlite = open_channel_store(f"sqlite:///{tmp_path}/c.db")
    assert isinstance(sqlite, SQLiteChannelStore)
    assert sqlite.path == tmp_path / "c.db"
    redis = open_channel_store("redis://127.0.0.1:6390/2")
    assert isinstance(redis, RedisChannelStore)
    assert (redis.url, redis.prefix) == ("redis://127.0.0.1:6390/2", "x402:")
    await redis.aclose()


def claim(transaction: str, at: float, *amounts: tuple[str, int, int]) -> ClaimRecord:
    return ClaimRecord(
        transaction=transaction,
        network="eip155:31337",
        receiver="0x" + "33" * 20,
        token="0x" + "55" * 20,
        channels=tuple(ClaimedChannel(*row) for row in amounts),
        claimed_at=at,
    )


async def test_the_claim_log_lists_claims_newest_first_with_uint256_amounts(
    channels: ChannelStore,
) -> None:
    huge = 2**256 - 1
    older = claim("0x" + "01" * 32, 100.5, (CHANNEL, 5, 5), ("0x" + "cd" * 32, huge, huge))
    newer = claim("0x" + "02" * 32, 200.25, (CHANNEL, 7, 12))
    for logged in (older, newer):
        await channels.add_claim(logged)

    assert await channels.claims() == [newer, older]
    assert await channels.claims(limit=1, offset=1) == [older]
    assert older.amount == 5 + huge


async def test_a_claim_logged_twice_is_one_entry(channels: ChannelStore) -> None:
    logged = claim("0x" + "01" * 32, 100.0, (CHANNEL, 5, 5))
    await channels.add_claim(logged)
    await channels.add_claim(logged)
    assert await channels.claims() == [logged]

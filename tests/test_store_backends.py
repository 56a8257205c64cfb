"""What each backend adds to the shared contract: expiry, and safety across processes."""

from __future__ import annotations

import multiprocessing
import random
import time
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from tests.ledger_rows import payment_row
from x402_meter.store import (
    OPEN_STATES,
    LedgerState,
    MemoryStore,
    PaymentStore,
    SQLiteStore,
    open_store,
)
from x402_meter.store.redis import RedisStore

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_an_expired_reservation_can_be_taken_over(backend: str, tmp_path: Path) -> None:
    store: PaymentStore = MemoryStore() if backend == "memory" else SQLiteStore(tmp_path / "x.db")
    assert await store.reserve("k", time.time() - 1)  # its authorization has already expired
    assert await store.reserve("k", time.time() + 60)
    assert not await store.reserve("k", time.time() + 60)
    await store.aclose()


async def test_redis_reservations_expire_with_the_authorization(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix="expiry:")
    deadline = time.time() + 120
    assert await store.reserve("k", deadline)
    client = Redis.from_url(redis_url)
    expires_ms = await client.pexpiretime("expiry:reservation:k")
    await client.aclose()
    await store.aclose()
    assert abs(expires_ms - deadline * 1000) <= 1


def _reserve_all(
    path: str,
    keys: list[str],
    start: multiprocessing.synchronize.Event,
    wins: multiprocessing.Queue[str],
) -> None:
    async def run() -> None:
        store = SQLiteStore(path)
        expires = time.time() + 60
        for key in keys:
            if await store.reserve(key, expires):
                wins.put(key)
        await store.aclose()

    start.wait()
    anyio.run(run)


def test_two_processes_racing_on_one_sqlite_file_win_each_key_once(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    keys = [f"key-{i}" for i in range(300)]
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    wins: multiprocessing.Queue[str] = context.Queue()
    workers = [
        context.Process(target=_reserve_all, args=(path, keys, start, wins)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    start.set()
    won = [wins.get(timeout=60) for _ in keys]  # exactly one win per key, whoever won it
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(won) == sorted(keys)
    assert wins.empty()


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("memory://", MemoryStore),
        ("sqlite:///ledger.db", SQLiteStore),
        ("redis://127.0.0.1:1/0", RedisStore),
    ],
)
def test_store_urls_name_their_backend(url: str, kind: type) -> None:
    assert isinstance(open_store(url), kind)


async def _zrem_calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_zrem", {}).get("calls", 0))


async def test_a_redis_save_removes_a_row_only_from_the_sets_it_leaves(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix=f"zrem{time.time_ns()}:")
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        removals: list[int] = []
        for row in (
            payment_row("r1"),  # new: nothing to leave
            payment_row("r1", attempts=1),  # same state
            payment_row("r1", state=LedgerState.TO_SETTLE),  # verified -> to_settle
            payment_row("r1", state=LedgerState.SETTLED, amount=346),  # and out of open
            payment_row("r1", state=LedgerState.SETTLED, amount=346, transaction="0xabc"),
        ):
            before = await _zrem_calls(client)
            await store.save(row)
            removals.append(await _zrem_calls(client) - before)
        assert removals == [0, 0, 1, 2, 0]
    finally:
        await client.aclose()
        await store.aclose()


async def test_two_redis_writers_leave_each_row_listed_under_its_state_only(
    redis_url: str,
) -> None:
    """Two servers sharing one Redis save the same rows in random states at once."""
    prefix = f"race{time.time_ns()}:"
    stores = [RedisStore(redis_url, prefix=prefix) for _ in range(2)]
    ids = [f"r{index}" for index in range(20)]
    states = list(LedgerState)
    chooser = random.Random(402)
    plans = [[(chooser.choice(ids), chooser.choice(states)) for _ in range(400)] for _ in stores]

    async def write(store: RedisStore, plan: list[tuple[str, LedgerState]]) -> None:
        for receipt_id, state in plan:
            await store.save(payment_row(receipt_id, state=state))

    async with anyio.create_task_group() as tasks:
        for store, plan in zip(stores, plans, strict=True):
            for part in range(4):  # several connections per server, interleaved
                tasks.start_soon(write, store, plan[part::4])
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        for receipt_id in ids:
            row = await stores[0].get(receipt_id)
            assert row is not None
            indexed = {
                state
                for state in states
                if await client.zscore(f"{prefix}state:{state.value}", receipt_id) is not None
            }
            assert indexed == {row.state}, receipt_id
            is_open = await client.zscore(f"{prefix}open", receipt_id) is not None
            assert is_open == (row.state in OPEN_STATES), receipt_id
    finally:
        await client.aclose()
        for store in stores:
            await store.aclose()


def test_connections_opening_a_new_sqlite_file_at_once_all_open_it(tmp_path: Path) -> None:
    """The ledger, the channel store and the claims worker open one new file at the first
    request, each on its own thread: turning it to WAL answered "database is locked" to
    some of them (a 500) before opening tried again."""
    from x402_meter.store.channel_sqlite import SQLiteChannelStore
    from x402_meter.store.sqlite import SQLiteStore

    async def open_all(stores: list[SQLiteStore | SQLiteChannelStore]) -> None:
        async with anyio.create_task_group() as group:
            for store in stores:
                group.start_soon(store.list)
        for store in stores:
            await store.aclose()

    for round_ in range(30):
        path = tmp_path / f"new-{round_}.db"
        stores: list[SQLiteStore | SQLiteChannelStore] = [SQLiteStore(path)]
        stores += [SQLiteChannelStore(path), SQLiteChannelStore(path)]
        anyio.run(open_all, stores)

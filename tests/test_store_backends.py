"""What each backend adds to the shared contract: expiry, and safety across processes."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from x402_meter.store import MemoryStore, PaymentStore, SQLiteStore, open_store
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

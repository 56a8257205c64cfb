"""One conformance suite, run against every store backend: memory, SQLite and Redis."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from tests.ledger_rows import payment_row
from x402_meter.store import (
    LedgerState,
    MemoryStore,
    PaymentRecord,
    PaymentStore,
    SQLiteStore,
    VoidedPayer,
)
from x402_meter.store.redis import RedisStore

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[PaymentStore]:
    backend: PaymentStore
    if request.param == "memory":
        backend = MemoryStore()
    elif request.param == "sqlite":
        backend = SQLiteStore(tmp_path / "ledger.db")
    else:
        backend = RedisStore(request.getfixturevalue("redis_url"), prefix=f"t{time.time_ns()}:")
    yield backend
    await backend.aclose()


def record(receipt_id: str = "r1", **changes: object) -> PaymentRecord:
    return payment_row(receipt_id, **changes)


async def test_a_key_is_reserved_once(store: PaymentStore) -> None:
    expires = time.time() + 60
    assert await store.reserve("k", expires)
    assert not await store.reserve("k", expires)


async def test_a_released_key_can_be_reserved_again(store: PaymentStore) -> None:
    expires = time.time() + 60
    assert await store.reserve("k", expires)
    await store.release("k")
    assert await store.reserve("k", expires)


async def test_fifty_concurrent_reservations_of_one_key_have_one_winner(
    store: PaymentStore,
) -> None:
    wins: list[bool] = []
    expires = time.time() + 60

    async def attempt() -> None:
        wins.append(await store.reserve("contended", expires))

    async with anyio.create_task_group() as tasks:
        for _ in range(50):
            tasks.start_soon(attempt)
    assert sorted(wins) == [False] * 49 + [True]


async def test_a_record_round_trips_with_uint256_amounts_and_empty_fields(
    store: PaymentStore,
) -> None:
    huge = 2**256 - 1
    saved = record(max_amount=huge, amount=huge - 1, usage_source="input=reported,output=estimated")
    await store.save(saved)
    assert await store.get("r1") == saved
    assert await store.get("missing") is None


async def test_saving_again_replaces_the_row(store: PaymentStore) -> None:
    await store.save(record())
    settled = record(state=LedgerState.SETTLED, amount=346, transaction="0xabc", attempts=1)
    await store.save(settled)
    assert await store.get("r1") == settled


async def test_an_open_row_is_leased_to_one_owner_at_a_time(store: PaymentStore) -> None:
    await store.save(record())
    now = time.time()
    mine = await store.claim("r1", "worker-a", now + 30, now)
    assert mine is not None
    assert (mine.lease_owner, mine.lease_until) == ("worker-a", now + 30)
    assert await store.claim("r1", "worker-b", now + 30, now) is None
    renewed = await store.claim("r1", "worker-a", now + 60, now)
    assert renewed is not None
    assert renewed.lease_until == now + 60
    taken_over = await store.claim("r1", "worker-b", now + 120, now + 61)  # the lease ran out
    assert taken_over is not None
    assert taken_over.lease_owner == "worker-b"


async def test_final_and_missing_rows_cannot_be_leased(store: PaymentStore) -> None:
    await store.save(record(state=LedgerState.SETTLED))
    now = time.time()
    assert await store.claim("r1", "worker-a", now + 30, now) is None
    assert await store.claim("missing", "worker-a", now + 30, now) is None


async def test_due_lists_open_rows_nobody_holds_whose_time_has_come(store: PaymentStore) -> None:
    now = time.time()
    await store.save(record("ready", state=LedgerState.TO_SETTLE, next_attempt_at=now - 1))
    await store.save(
        record("orphaned", state=LedgerState.VERIFIED, lease_owner="dead", lease_until=now - 5)
    )
    await store.save(record("streaming", lease_owner="alive", lease_until=now + 30))
    await store.save(record("backing-off", state=LedgerState.TO_SETTLE, next_attempt_at=now + 30))
    await store.save(record("done", state=LedgerState.SETTLED))
    due = await store.due(now)
    assert {row.receipt_id for row in due} == {"ready", "orphaned"}


async def test_leasing_a_due_row_takes_it_off_the_due_list(store: PaymentStore) -> None:
    now = time.time()
    await store.save(record(state=LedgerState.TO_SETTLE))
    assert await store.claim("r1", "worker-a", now + 30, now) is not None
    assert await store.due(now) == []


async def test_list_filters_by_state_newest_first_with_paging(store: PaymentStore) -> None:
    for index in range(5):
        state = LedgerState.SETTLED if index % 2 else LedgerState.FAILED
        await store.save(record(f"r{index}", state=state, created_at=1_700_000_000.0 + index))
    assert [r.receipt_id for r in await store.list()] == ["r4", "r3", "r2", "r1", "r0"]
    assert [r.receipt_id for r in await store.list([LedgerState.SETTLED])] == ["r3", "r1"]
    assert [r.receipt_id for r in await store.list(limit=2, offset=1)] == ["r3", "r2"]


async def test_a_row_that_changes_state_is_listed_under_its_new_state_only(
    store: PaymentStore,
) -> None:
    await store.save(record("moved"))
    await store.save(record("stays", state=LedgerState.TO_SETTLE))
    await store.save(record("moved", state=LedgerState.TO_SETTLE))
    await store.save(record("moved", state=LedgerState.SETTLED, amount=346))

    async def listed(*states: LedgerState) -> set[str]:
        return {row.receipt_id for row in await store.list(states)}

    assert await listed(LedgerState.VERIFIED) == set()
    assert await listed(LedgerState.TO_SETTLE) == {"stays"}
    assert await listed(LedgerState.SETTLED) == {"moved"}
    assert await listed(LedgerState.TO_SETTLE, LedgerState.SETTLED) == {"moved", "stays"}
    assert len(await store.list()) == 2
    assert [r.receipt_id for r in await store.due(time.time())] == ["stays"]


def voided(payer: str, until: float, voided_at: float = 1_700_000_000.0) -> VoidedPayer:
    return VoidedPayer(payer, until, "permit2_insufficient_balance", voided_at, "r1")


async def test_a_voided_payer_is_refused_until_its_time_in_any_case(store: PaymentStore) -> None:
    now = time.time()
    payer = "0x" + "ab" * 20
    assert await store.voided_payer(payer, now) is None
    entry = voided(payer, now + 60)
    await store.void_payer(entry)
    assert await store.voided_payer(payer, now) == entry
    assert await store.voided_payer(payer.upper().replace("0X", "0x"), now) == entry
    assert await store.voided_payer(payer, now + 61) is None  # its time is over
    assert await store.voided_payer("0x" + "cd" * 20, now) is None


async def test_voiding_again_replaces_the_entry(store: PaymentStore) -> None:
    now = time.time()
    payer = "0x" + "ab" * 20
    await store.void_payer(voided(payer, now + 60))
    later = VoidedPayer(payer, now + 600, "permit2_allowance_required", now, "r2")
    await store.void_payer(later)
    assert await store.voided_payer(payer, now) == later
    assert len(await store.voided_payers(now)) == 1


async def test_voided_payers_lists_those_refused_now_latest_first(store: PaymentStore) -> None:
    now = time.time()
    a, b, gone = ("0x" + c * 20 for c in ("aa", "bb", "cc"))
    await store.void_payer(voided(a, now + 60, voided_at=now - 10))
    await store.void_payer(voided(b, now + 60, voided_at=now - 5))
    await store.void_payer(voided(gone, now + 1, voided_at=now - 1))
    assert [e.payer for e in await store.voided_payers(now)] == [gone, b, a]
    assert [e.payer for e in await store.voided_payers(now + 2)] == [b, a]
    assert [e.payer for e in await store.voided_payers(now, limit=1)] == [gone]


async def test_a_cleared_payer_is_no_longer_refused(store: PaymentStore) -> None:
    now = time.time()
    payer = "0x" + "ab" * 20
    await store.void_payer(voided(payer, now + 60))
    assert await store.clear_voided_payer(payer.upper().replace("0X", "0x"))
    assert await store.voided_payer(payer, now) is None
    assert await store.voided_payers(now) == []
    assert not await store.clear_voided_payer(payer)  # nothing left to clear

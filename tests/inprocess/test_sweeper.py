"""The settlement sweeper recovers rows whose server is gone, never one its own process is
still serving: a heartbeat late past the lease (a loop or a store too busy to checkpoint)
is not an abandoned answer. Settling it from its checkpoint would charge a part of a
running answer and use its authorization up; the answer's next re-check would then read as
a void, end it, and refuse an honest payer."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from tests.apps import PRICE_ATOMIC
from tests.inprocess.facilitator import InProcessFacilitator
from tests.inprocess.harness import (
    FIRST,
    REST,
    WaitingApp,
    calling,
    metered,
    paid_stream,
    receipt_of,
)
from x402_meter import MemoryStore, RetryPolicy
from x402_meter.store import LedgerState, PaymentRecord

pytestmark = pytest.mark.anyio


class LateCheckpoints(MemoryStore):
    """Once ``late`` is set, checkpoints wait for it to be cleared: the row's lease runs out
    while its answer is still served. Counts the sweeper's looks at a live row that is due."""

    def __init__(self) -> None:
        super().__init__()
        self.checkpointed = anyio.Event()
        """Set by the first checkpoint that counted something."""
        self.late: anyio.Event | None = None
        self.due_looks = 0
        self.looked = anyio.Event()

    async def save(self, record: PaymentRecord) -> None:
        if record.state is LedgerState.VERIFIED and record.amount:
            if self.late is not None:
                await self.late.wait()
            self.checkpointed.set()
        await super().save(record)

    async def due(self, now: float, limit: int = 100) -> list[PaymentRecord]:
        rows = await super().due(now, limit)
        if any(row.state is LedgerState.VERIFIED for row in rows):
            self.due_looks += 1
            looked, self.looked = self.looked, anyio.Event()
            looked.set()
        return rows

    async def looks(self, count: int) -> None:
        while self.due_looks < count:
            await self.looked.wait()


async def test_a_live_answer_whose_lease_ran_out_is_not_recovered_by_its_own_sweeper() -> None:
    facilitator, app, store = InProcessFacilitator(), WaitingApp(), LateCheckpoints()
    retry = RetryPolicy(first=0.01, longest=0.05, sweep_every=0.01, lease_seconds=0.15)
    options: dict[str, Any] = {"checkpoint_every": 0.01, "settlement_retry": retry}
    meter = metered(app, facilitator, store=store, recheck_every=0, **options)
    late = anyio.Event()

    async def checkpoints_run_late() -> None:
        await store.checkpointed.wait()  # the count so far is on record
        store.late = late
        await store.looks(3)  # the lease has run out and the sweeper has seen the row due
        late.set()  # the checkpoints catch up
        app.finish.set()

    async with calling(meter) as client:
        answer = await paid_stream(client, app, checkpoints_run_late)
        paid = await receipt_of(client, answer)
    assert answer.content == FIRST + b"".join(REST)
    assert paid["status"] == "settled"
    charge = (paid["input_tokens"] + paid["output_tokens"]) * PRICE_ATOMIC
    assert [s.amount for s in facilitator.settled] == [charge]  # once, for the whole answer
    assert await meter.runtime.store.voided_payers(0.0) == []

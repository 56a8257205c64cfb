"""Re-checks while an answer streams: what ends it early, what is charged, who is refused.

A void or an invalid payment ends the answer at the re-check that finds it; a facilitator
that is down (no connection, an error, no answer within ``recheck_timeout``) ends it at the
second miss in a row, blaming no one; a slow one whose answers still arrive does not end
it. The attacks themselves run against real servers and the chain in
tests/security/test_voiding.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import anyio
import pytest

from tests.apps import PRICE_ATOMIC
from tests.inprocess.facilitator import InProcessFacilitator, Refusal
from tests.inprocess.harness import (
    FIRST,
    PAYER,
    REST,
    STREAMED,
    WaitingApp,
    calling,
    metered,
    paid_stream,
    pay,
    receipt_of,
)
from x402_meter import MemoryStore, X402Meter
from x402_meter.pipeline.heartbeat import RECHECK_JITTER, recheck_wait
from x402_meter.store import PaymentRecord

pytestmark = pytest.mark.anyio

RECHECK_EVERY: Final = 0.05
"""Re-checks a few beats apart, so that the tests take a fraction of a second."""


class Beats(MemoryStore):
    """A store that counts its writes: a streaming answer's checkpoints are its heartbeat,
    so a test can wait for time to pass on the meter's own clock."""

    def __init__(self) -> None:
        super().__init__()
        self.saves = 0
        self.saved = anyio.Event()

    async def save(self, record: PaymentRecord) -> None:
        await super().save(record)
        self.saves += 1
        saved, self.saved = self.saved, anyio.Event()
        saved.set()

    async def beats(self, count: int) -> None:
        """Wait until ``count`` more rows have been written (checkpoints, as the answer runs)."""
        until = self.saves + count
        while self.saves < until:
            await self.saved.wait()


def meter_for(app: WaitingApp, facilitator: InProcessFacilitator, **options: Any) -> X402Meter:
    return metered(app, facilitator, recheck_every=RECHECK_EVERY, **options)


@pytest.mark.parametrize("reason", ["permit2_insufficient_balance", "upto_facilitator_mismatch"])
async def test_a_recheck_that_finds_the_payment_invalid_ends_the_answer_at_once(
    reason: str,
) -> None:
    """Whatever the reason, the answer ends at once and what was served is charged. The
    payer is not remembered as a voider on the re-check's word: here the settlement lands
    (a re-check can misread a facilitator's RPC trouble as a void)."""
    facilitator, app = InProcessFacilitator(), WaitingApp()
    meter = meter_for(app, facilitator)

    def refuse() -> None:
        facilitator.verify_refusal = Refusal(reason)

    async with calling(meter) as client:
        answer = await paid_stream(client, app, refuse)
        paid = await receipt_of(client, answer)
    assert answer.content == FIRST  # closed where it was
    assert len(facilitator.verified) == 2  # admission, the re-check that ended it
    assert paid["status"] == "settled"
    assert int(paid["amount"]) == (paid["input_tokens"] + paid["output_tokens"]) * PRICE_ATOMIC
    assert await meter.runtime.store.voided_payers(0.0) == []


async def test_a_payer_whose_void_the_settlement_confirms_is_refused_next_time() -> None:
    reason = "permit2_insufficient_balance"
    facilitator, app = InProcessFacilitator(), WaitingApp()
    meter = meter_for(app, facilitator)

    def void() -> None:  # the payer moved its funds: re-checks and the settlement see it
        facilitator.verify_refusal = facilitator.settle_refusal = Refusal(reason)

    async with calling(meter) as client:
        answer = await paid_stream(client, app, void)
        paid = await receipt_of(client, answer)
        facilitator.verify_refusal = facilitator.settle_refusal = None  # funds back
        again = await pay(client, STREAMED)
    assert answer.content == FIRST
    assert paid["status"] == "failed"
    [entry] = await meter.runtime.store.voided_payers(0.0)
    assert (entry.payer, entry.reason) == (PAYER.address.lower(), reason)
    assert entry.receipt_id == answer.headers["x-payment-receipt"].rsplit("/", 1)[-1]
    assert again.status_code == 402  # the same payer, a new authorization: refused
    assert again.json()["reason"] == "payer_voided"
    assert len(facilitator.verified) == 2  # before verifying


def refusing_connections(facilitator: InProcessFacilitator) -> None:
    facilitator.verify_unreachable = True


def answering_503(facilitator: InProcessFacilitator) -> None:
    facilitator.verify_status = 503


def not_answering(facilitator: InProcessFacilitator) -> None:
    facilitator.verify_gate = anyio.Event()  # never set: hung


@pytest.mark.parametrize(
    ("outage", "reaches_it"),
    [(refusing_connections, False), (answering_503, True), (not_answering, True)],
)
async def test_a_facilitator_that_is_down_ends_the_answer_at_the_second_miss_blaming_no_one(
    outage: Callable[[InProcessFacilitator], None], reaches_it: bool
) -> None:
    facilitator, app = InProcessFacilitator(), WaitingApp()
    meter = meter_for(app, facilitator, recheck_timeout=RECHECK_EVERY)

    def go_down() -> None:
        outage(facilitator)

    async with calling(meter) as client:
        answer = await paid_stream(client, app, go_down)
        paid = await receipt_of(client, answer)
    assert answer.content == FIRST
    if reaches_it:
        assert len(facilitator.verified) == 3  # admission; one miss tolerated, the second ends it
    assert paid["status"] == "settled"  # the settlement still goes through
    assert paid["output_tokens"] > 0
    assert int(paid["amount"]) == (paid["input_tokens"] + paid["output_tokens"]) * PRICE_ATOMIC
    assert await meter.runtime.store.voided_payers(0.0) == []


async def test_a_slow_facilitator_whose_answer_comes_late_does_not_end_the_answer() -> None:
    facilitator, app, store = InProcessFacilitator(), WaitingApp(), Beats()
    meter = meter_for(app, facilitator, store=store, checkpoint_every=RECHECK_EVERY)
    gate = anyio.Event()

    async def answer_late() -> None:
        facilitator.verify_gate = gate
        await facilitator.verify_calls(2)  # a re-check is waiting on the facilitator
        await store.beats(10)  # nine beats later: many times recheck_every
        assert len(facilitator.verified) == 2  # none other was started meanwhile
        gate.set()  # the answer arrives: valid
        await facilitator.verify_calls(3)  # and the stream is re-checked on, as before
        app.finish.set()

    async with calling(meter) as client:
        answer = await paid_stream(client, app, answer_late)
        paid = await receipt_of(client, answer)
    assert answer.content == FIRST + b"".join(REST)  # served to its end
    assert facilitator.most_verifying == 1  # one re-check at a time, never piled up
    assert paid["status"] == "settled"
    assert await meter.runtime.store.voided_payers(0.0) == []


def test_the_wait_between_rechecks_is_at_most_recheck_every_and_jittered() -> None:
    waits = [recheck_wait(5.0) for _ in range(1000)]
    assert all(5.0 * (1 - RECHECK_JITTER) <= wait <= 5.0 for wait in waits)
    assert max(waits) - min(waits) > 5.0 * RECHECK_JITTER / 2  # spread, not one value

"""Sessions and their claims worker in the middleware: a withdrawal the meter learns of is
mirrored in the channel's record and has the worker claim at once.

The in-process facilitator's channel ledger stands in for the chain (it does not claim:
the claims themselves are proven against the chain in ``tests/test_session_claims.py``).
"""

from __future__ import annotations

import dataclasses

import pytest

from tests.inprocess.facilitator import InProcessFacilitator
from tests.inprocess.harness import QUESTION, calling, chat_app
from tests.inprocess.sessions import (
    ChannelPayer,
    channel_of,
    send,
    session_meter,
    session_offer,
)
from x402_meter.schemes.batch_settlement import BatchSettlementScheme

pytestmark = pytest.mark.anyio

REQUESTED_AT = 1_700_000_000


async def test_a_withdrawal_seen_on_a_stale_mirror_is_mirrored_and_claimed_at_once() -> None:
    facilitator = InProcessFacilitator()
    meter = session_meter(chat_app(), facilitator)
    sessions = meter.runtime.schemes["batch-settlement"]
    assert isinstance(sessions, BatchSettlementScheme)
    assert meter.runtime.claims is not None
    assert sessions.on_withdrawal == meter.runtime.claims.wake
    woken: list[str] = []
    sessions.on_withdrawal = woken.append
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements = await session_offer(client, QUESTION)
        maximum = int(requirements.amount)
        opened = await send(client, QUESTION, payer.deposit(requirements, maximum, 10 * maximum))
        assert opened.status_code == 200, opened.text
        channel_id = payer.channel_id(requirements)
        facilitator.channels[channel_id].withdraw_requested_at = REQUESTED_AT
        record = await channel_of(meter, channel_id)
        channels = meter.runtime.channels
        assert channels is not None
        assert await channels.put(dataclasses.replace(record, synced_at=0.0)) is not None

        refused = await send(
            client, QUESTION, payer.voucher(requirements, record.charged + maximum)
        )
        again = await send(client, QUESTION, payer.voucher(requirements, record.charged + maximum))
    await meter.runtime.settler.aclose()

    assert refused.status_code == again.status_code == 402
    assert refused.json()["reason"] == again.json()["reason"] == "channel_withdrawal_pending"
    mirrored = await channel_of(meter, channel_id)
    assert mirrored.withdraw_requested_at == REQUESTED_AT
    assert mirrored.synced_at > 0
    assert mirrored.charged == record.charged  # the charge stays, to claim
    assert woken == [channel_id]  # once: the second request found it mirrored

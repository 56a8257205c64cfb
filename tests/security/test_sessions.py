"""Attacks on sessions (``batch-settlement``): a payer who wants an answer its channel does not
pay for. Vouchers are admitted by the meter alone, so these defences are the meter's own:
the channel's charged cumulative (an old voucher does not cover a new answer), its lock (one
request at a time), its mirrored balance (a voucher the escrow cannot pay is worthless).

In-process tier: real EIP-712 signatures from the SDK's client functions, the meter's own
checks, the in-process facilitator's channel ledger in place of the chain. Each test counts
the app's runs: a refused request never reaches it.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from starlette.types import Receive, Scope, Send
from x402.schemas import PaymentPayload, PaymentRequirements

from tests.inprocess.facilitator import InProcessFacilitator
from tests.inprocess.harness import HANG, QUESTION, STREAMED, WaitingApp, calling, chat_app
from tests.inprocess.sessions import (
    ChannelPayer,
    channel_of,
    send,
    session_meter,
    session_offer,
)
from x402_meter import X402Meter

pytestmark = pytest.mark.anyio

MISMATCH = "invalid_batch_settlement_evm_cumulative_amount_mismatch"


class Counted:
    """An app that counts its runs."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.runs = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.runs += 1
        await self.app(scope, receive, send)


async def open_channel(
    meter: X402Meter, client: httpx.AsyncClient, payer: ChannelPayer, deposit_times: int = 10
) -> tuple[PaymentRequirements, PaymentPayload]:
    requirements = await session_offer(client, QUESTION)
    maximum = int(requirements.amount)
    deposit = payer.deposit(requirements, maximum, deposit_times * maximum)
    assert (await send(client, QUESTION, deposit)).status_code == 200
    return requirements, deposit


async def test_replaying_old_vouchers_never_gets_an_answer_for_free() -> None:
    """The payer paid three answers; each of its earlier payments, sent again as it was,
    is refused (the channel's cumulative has moved past it): the app never runs for them
    and the channel's charge does not move."""
    app = Counted(chat_app())
    meter = session_meter(app, InProcessFacilitator())
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, deposit = await open_channel(meter, client, payer)
        channel_id, maximum = payer.channel_id(requirements), int(requirements.amount)
        paid = [deposit]
        for _ in range(2):
            charged = (await channel_of(meter, channel_id)).charged
            voucher = payer.voucher(requirements, charged + maximum)
            assert (await send(client, QUESTION, voucher)).status_code == 200
            paid.append(voucher)
        charged, runs = (await channel_of(meter, channel_id)).charged, app.runs
        replies = [await send(client, QUESTION, payment) for payment in paid * 2]
    assert [r.status_code for r in replies] == [402] * 6
    assert {r.json()["reason"] for r in replies} == {MISMATCH}
    assert app.runs == runs
    assert (await channel_of(meter, channel_id)).charged == charged


async def test_of_two_requests_at_once_on_one_channel_one_is_served_and_one_refused() -> None:
    """Both carry the one valid voucher: the first holds the channel while it streams, the
    second is refused as busy; once the first is charged, the same voucher is stale. One
    answer, one charge: none lost, none free."""
    app = WaitingApp()
    counted = Counted(app)
    facilitator = InProcessFacilitator()
    opener = session_meter(chat_app(), facilitator)
    payer = ChannelPayer()
    async with calling(opener) as client:
        requirements, _ = await open_channel(opener, client, payer)
    channel_id = payer.channel_id(requirements)
    before = await channel_of(opener, channel_id)
    voucher = payer.voucher(requirements, before.charged + int(requirements.amount))
    meter = session_meter(counted, facilitator, channel_store=opener.runtime.channels)
    answers: list[httpx.Response] = []
    async with calling(meter) as client:
        with anyio.fail_after(HANG):  # a guard against a hang, not a timing assertion
            async with anyio.create_task_group() as tasks:

                async def first() -> None:
                    answers.append(await send(client, STREAMED, voucher))

                tasks.start_soon(first)
                await app.streaming.wait()
                second = await send(client, STREAMED, voucher)
                app.finish.set()
        again = await send(client, STREAMED, voucher)
    assert answers[0].status_code == 200
    assert second.status_code == 402
    assert second.json()["reason"] == "invalid_batch_settlement_evm_channel_busy"
    assert again.status_code == 402
    assert again.json()["reason"] == MISMATCH
    assert counted.runs == 1
    after = await channel_of(meter, channel_id)
    assert after.charged > before.charged
    assert after.serving is None


async def test_a_voucher_above_the_channels_balance_never_gets_an_answer() -> None:
    """The deposit covers one request's maximum; the next voucher (charged + maximum) is
    more than the escrow holds: refused before the app runs, whatever its signature."""
    app = Counted(chat_app())
    meter = session_meter(app, InProcessFacilitator())
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, _ = await open_channel(meter, client, payer, deposit_times=1)
        channel = await channel_of(meter, payer.channel_id(requirements))
        runs = app.runs
        over = payer.voucher(requirements, channel.charged + int(requirements.amount))
        answer = await send(client, QUESTION, over)
    assert answer.status_code == 402
    assert answer.json()["reason"] == "invalid_batch_settlement_evm_cumulative_exceeds_balance"
    assert app.runs == runs
    assert (await channel_of(meter, payer.channel_id(requirements))).charged == channel.charged


async def test_a_voucher_for_less_than_the_answer_may_cost_is_not_admitted() -> None:
    """A voucher one unit short of charged + maximum would let the answer cost more than
    the payer signed for: refused (the corrective 402 says what to sign)."""
    app = Counted(chat_app())
    meter = session_meter(app, InProcessFacilitator())
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, _ = await open_channel(meter, client, payer)
        channel = await channel_of(meter, payer.channel_id(requirements))
        runs = app.runs
        short = payer.voucher(requirements, channel.charged + int(requirements.amount) - 1)
        answer = await send(client, QUESTION, short)
    assert answer.status_code == 402
    assert answer.json()["reason"] == MISMATCH
    assert app.runs == runs


SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def malleated(payload: PaymentPayload, *, flip_s: bool, v_offset: int = 0) -> PaymentPayload:
    """``payload`` with its voucher's signature changed into another form that recovers to
    the same signer (``s`` mirrored into the curve order's upper half, ``v`` flipped; or
    ``v`` written as 0/1): what ``ecrecover`` in the contract refuses."""
    inner = dict(payload.payload)
    voucher = dict(inner["voucher"])
    raw = bytes.fromhex(voucher["signature"].removeprefix("0x"))
    r, s, v = raw[:32], int.from_bytes(raw[32:64], "big"), raw[64]
    if flip_s:
        s, v = SECP256K1_N - s, 55 - v  # 27 <-> 28
    voucher["signature"] = "0x" + (r + s.to_bytes(32, "big") + bytes([v - v_offset])).hex()
    inner["voucher"] = voucher
    return payload.model_copy(update={"payload": inner})


@pytest.mark.parametrize(
    ("flip_s", "v_offset"), [(True, 0), (False, 27)], ids=["high_s", "v_0_or_1"]
)
async def test_a_voucher_signed_in_a_form_the_contract_refuses_never_gets_an_answer(
    flip_s: bool, v_offset: int
) -> None:
    """The malleated twin of a valid voucher signature recovers to the payer (the SDK's
    off-chain check accepts it) but the contract's ``ecrecover`` refuses it: a voucher
    the seller could never claim. Refused before the app runs; the channel unchanged."""
    app = Counted(chat_app())
    meter = session_meter(app, InProcessFacilitator())
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, _ = await open_channel(meter, client, payer)
        channel_id = payer.channel_id(requirements)
        before, runs = await channel_of(meter, channel_id), app.runs
        honest = payer.voucher(requirements, before.charged + int(requirements.amount))
        forged = malleated(honest, flip_s=flip_s, v_offset=v_offset)
        answer = await send(client, QUESTION, forged)
        assert answer.status_code == 402
        assert answer.json()["reason"] == "invalid_batch_settlement_evm_voucher_signature"
        assert app.runs == runs
        after = await channel_of(meter, channel_id)
        assert (after.charged, after.serving, after.voucher_signature) == (
            before.charged,
            None,
            before.voucher_signature,
        )
        assert (await send(client, QUESTION, honest)).status_code == 200  # the honest form

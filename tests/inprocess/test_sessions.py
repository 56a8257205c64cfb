"""Sessions (``batch-settlement``) in the middleware: the offer, one deposit then vouchers
admitted with no facilitator call, each answer charged its exact cost in the channel store,
what the client is told, and every refusal a 402 (or 400) with the spec's reason.

Payments are signed by the official SDK's client functions (real EIP-712 signatures, checked
by the meter itself); the facilitator is the in-process one, whose channel ledger stands in
for the chain.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import anyio
import httpx
import pytest
from x402 import x402Client
from x402.http.clients.httpx import x402_httpx_transport
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme as PayerScheme
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentRequirements

from tests.apps import PRICE_ATOMIC
from tests.inprocess.facilitator import NETWORK, RECEIVER_AUTHORIZER, InProcessFacilitator
from tests.inprocess.harness import (
    ASSET,
    HANG,
    PAYER,
    QUESTION,
    STREAMED,
    WaitingApp,
    calling,
    chat_app,
    offered,
    receipt_of,
)
from tests.inprocess.sessions import (
    SESSIONS,
    ChannelPayer,
    channel_of,
    send,
    session_meter,
    session_offer,
    settlement,
)
from tests.openai_stream import COMPLETION_TOKENS, PROMPT_TOKENS
from x402_meter import X402Meter
from x402_meter.devstack.accounts import PAYERS
from x402_meter.schemes.channel_state import ChargingChannels
from x402_meter.store import LedgerState

pytestmark = pytest.mark.anyio

ANSWER_COST = (PROMPT_TOKENS + COMPLETION_TOKENS) * PRICE_ATOMIC
"""What a JSON answer of the chat app costs: the usage it reports, at the price."""


async def opened(
    meter: X402Meter, client: httpx.AsyncClient, payer: ChannelPayer, deposit_times: int = 10
) -> tuple[PaymentRequirements, int]:
    """Open ``payer``'s channel with a first paid request (a deposit of ``deposit_times``
    the maximum); the requirements and what the channel has charged since."""
    requirements = await session_offer(client, QUESTION)
    maximum = int(requirements.amount)
    answer = await send(
        client, QUESTION, payer.deposit(requirements, maximum, deposit_times * maximum)
    )
    assert answer.status_code == 200, answer.text
    return requirements, (await channel_of(meter, payer.channel_id(requirements))).charged


# -- the offer ------------------------------------------------------------------------------


async def test_the_402_offers_a_session_beside_upto_for_the_same_maximum() -> None:
    meter = session_meter(chat_app(), InProcessFacilitator(), session_deposit_multiple=4)
    async with calling(meter) as client:
        challenge = await client.post("/v1/chat/completions", json=QUESTION)
    upto, session = offered(challenge, "upto"), offered(challenge, SESSIONS)
    assert session.amount == upto.amount
    assert (session.asset, session.pay_to, session.network) == (upto.asset, upto.pay_to, NETWORK)
    assert session.extra == {
        "name": ASSET.name,
        "version": ASSET.version,
        "receiverAuthorizer": RECEIVER_AUTHORIZER,
        "withdrawDelay": 900,
        "minDeposit": str(4 * int(upto.amount)),
        "assetTransferMethod": "eip3009",
    }


async def test_the_sellers_own_receiver_authorizer_and_withdraw_delay_are_offered() -> None:
    class Authorizer:
        address = PAYERS[5].address

    meter = session_meter(
        chat_app(),
        InProcessFacilitator(),
        session_receiver_authorizer=Authorizer(),
        session_withdraw_delay=3600,
    )
    async with calling(meter) as client:
        session = await session_offer(client, QUESTION)
    assert session.extra is not None
    assert session.extra["receiverAuthorizer"] == PAYERS[5].address
    assert session.extra["withdrawDelay"] == 3600


# -- the official client pays -----------------------------------------------------------------


async def test_the_sdk_client_deposits_once_then_pays_by_voucher_with_no_facilitator_call() -> None:
    """The official client (its own channel state, its own deposit size) pays four JSON
    answers: the first deposits (the facilitator verifies and settles it), the next three
    are vouchers the meter admits alone. Each answer is charged its exact cost, and the
    client follows the charged cumulative from each PAYMENT-RESPONSE."""
    facilitator = InProcessFacilitator()
    meter = session_meter(chat_app(), facilitator)
    payer = x402Client().register(NETWORK, PayerScheme(EthAccountSigner(PAYER.account)))
    payer.set_spend_controls({"allowed_assets": [{"network": NETWORK, "asset": ASSET.address}]})
    transport = x402_httpx_transport(payer, httpx.ASGITransport(app=meter))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as paying:
        first = await paying.post("/v1/chat/completions", json=QUESTION)
        assert first.status_code == 200, first.text
        assert facilitator.calls == ["/verify", "/settle"]
        answers = [await paying.post("/v1/chat/completions", json=QUESTION) for _ in range(3)]
    await meter.runtime.settler.aclose()
    assert facilitator.calls == ["/verify", "/settle"]  # no call for any voucher
    settled = [settlement(a) for a in (first, *answers)]
    assert [s["extra"]["chargedAmount"] for s in settled] == [str(ANSWER_COST)] * 4
    cumulative = [int(s["extra"]["channelState"]["chargedCumulativeAmount"]) for s in settled]
    assert cumulative == [ANSWER_COST * n for n in range(1, 5)]
    assert all(s["transaction"] == "" for s in settled)


# -- the charge -----------------------------------------------------------------------------


async def test_each_answer_is_charged_its_cost_and_the_channel_keeps_the_latest_voucher() -> None:
    facilitator = InProcessFacilitator()
    meter = session_meter(chat_app(), facilitator)
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        maximum = int(requirements.amount)
        assert charged == ANSWER_COST
        voucher = payer.voucher(requirements, charged + maximum)
        answer = await send(client, QUESTION, voucher)
    assert answer.status_code == 200
    channel = await channel_of(meter, payer.channel_id(requirements))
    assert channel.charged == 2 * ANSWER_COST
    assert channel.voucher_max == charged + maximum
    assert channel.voucher_signature == voucher.payload["voucher"]["signature"].lower()
    assert channel.serving is None
    assert channel.balance == 10 * maximum
    assert facilitator.calls == ["/verify", "/settle"]


async def test_a_streamed_answer_is_charged_in_its_receipt() -> None:
    meter = session_meter(chat_app(), InProcessFacilitator())
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        answer = await send(
            client, STREAMED, payer.voucher(requirements, charged + int(requirements.amount))
        )
        receipt = await receipt_of(client, answer)
    assert answer.status_code == 200
    assert "payment-response" not in answer.headers  # the headers left before the charge
    cost = int(receipt["amount"])
    assert 0 < cost < int(requirements.amount)
    assert receipt["status"] == "settled"
    assert receipt["transaction"] is None
    assert receipt["channel"] == {
        "id": payer.channel_id(requirements),
        "charged_cumulative": str(charged + cost),
    }
    assert (await channel_of(meter, payer.channel_id(requirements))).charged == charged + cost


async def test_an_answer_that_failed_is_charged_nothing_and_frees_the_channel() -> None:
    facilitator = InProcessFacilitator()
    payer = ChannelPayer()
    good = session_meter(chat_app(), facilitator)
    async with calling(good) as client:
        requirements, charged = await opened(good, client, payer)
    failing = session_meter(chat_app(status=500), facilitator, channel_store=good.runtime.channels)
    async with calling(failing) as client:
        voucher = payer.voucher(requirements, charged + int(requirements.amount))
        answer = await send(client, QUESTION, voucher)
        receipt = await receipt_of(client, answer)
    assert answer.status_code == 500
    assert receipt["status"] == "not_charged"
    channel = await channel_of(good, payer.channel_id(requirements))
    assert (channel.charged, channel.serving) == (charged, None)
    assert channel.voucher_max == int(requirements.amount)  # still the deposit's voucher


async def test_an_answer_is_capped_at_its_voucher_increment() -> None:
    """With 20 tokens of output allowed, the chat app's JSON answer (116 reported) costs
    more than the voucher's increment: the charge is the increment, never more."""
    meter = session_meter(chat_app(), InProcessFacilitator(), max_tokens=20)
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        maximum = int(requirements.amount)
        assert charged == maximum  # the first answer hit its cap too
        answer = await send(client, QUESTION, payer.voucher(requirements, charged + maximum))
    assert settlement(answer)["extra"]["chargedAmount"] == str(maximum)
    assert (await channel_of(meter, payer.channel_id(requirements))).charged == 2 * maximum


# -- when the facilitator is asked ------------------------------------------------------------


async def test_a_stale_mirror_is_refreshed_by_one_facilitator_verify() -> None:
    facilitator = InProcessFacilitator()
    meter = session_meter(chat_app(), facilitator)
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        channels = meter.runtime.channels
        assert channels is not None
        record = await channel_of(meter, payer.channel_id(requirements))
        assert await channels.put(dataclasses.replace(record, synced_at=0.0)) is not None
        maximum = int(requirements.amount)
        refreshed = await send(client, QUESTION, payer.voucher(requirements, charged + maximum))
        local = await send(
            client, QUESTION, payer.voucher(requirements, charged + ANSWER_COST + maximum)
        )
    assert (refreshed.status_code, local.status_code) == (200, 200)
    assert facilitator.calls == ["/verify", "/settle", "/verify"]


async def test_a_server_without_the_channel_takes_the_chains_claimed_total_as_baseline() -> None:
    """A server that lost its channel record (here: another meter on the same chain) never
    takes the client's word for the charged baseline: the voucher must build on what was
    claimed on chain, and the corrective 402 says so, with no voucher of ours to show."""
    facilitator = InProcessFacilitator()
    payer = ChannelPayer()
    first = session_meter(chat_app(), facilitator)
    async with calling(first) as client:
        requirements, charged = await opened(first, client, payer)
    facilitator.channels[payer.channel_id(requirements)].total_claimed = 100
    amnesiac = session_meter(chat_app(), facilitator)
    maximum = int(requirements.amount)
    async with calling(amnesiac) as client:
        claimed = await send(client, QUESTION, payer.voucher(requirements, charged + maximum))
        from_chain = await send(client, QUESTION, payer.voucher(requirements, 100 + maximum))
    assert claimed.status_code == 402
    assert claimed.json()["reason"] == "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    state = offered(claimed, SESSIONS).extra
    assert state is not None
    assert state["channelState"]["chargedCumulativeAmount"] == "100"
    assert "voucherState" not in state
    assert from_chain.status_code == 200
    assert (await channel_of(amnesiac, payer.channel_id(requirements))).charged == 100 + (
        ANSWER_COST
    )


# -- refusals -------------------------------------------------------------------------------


async def test_a_stale_cumulative_gets_the_corrective_402_with_the_servers_voucher() -> None:
    meter = session_meter(chat_app(), InProcessFacilitator())
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        maximum = int(requirements.amount)
        first = payer.voucher(requirements, charged + maximum)
        assert (await send(client, QUESTION, first)).status_code == 200
        stale = await send(client, QUESTION, payer.voucher(requirements, charged + maximum))
    assert stale.status_code == 402
    assert stale.json()["reason"] == "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    extra = offered(stale, SESSIONS).extra
    assert extra is not None
    assert extra["channelState"]["chargedCumulativeAmount"] == str(charged + ANSWER_COST)
    assert extra["voucherState"] == {
        "signedMaxClaimable": str(charged + maximum),
        "signature": first.payload["voucher"]["signature"].lower(),
    }


async def test_a_second_request_on_a_busy_channel_is_refused_as_busy() -> None:
    app = WaitingApp()
    payer = ChannelPayer()
    facilitator = InProcessFacilitator()
    opener = session_meter(chat_app(), facilitator)
    async with calling(opener) as client:
        requirements, charged = await opened(opener, client, payer)
    meter = session_meter(app, facilitator, channel_store=opener.runtime.channels)
    maximum = int(requirements.amount)
    answers: list[httpx.Response] = []
    async with calling(meter) as client:
        with anyio.fail_after(HANG):  # a guard against a hang, not a timing assertion
            async with anyio.create_task_group() as tasks:
                voucher = payer.voucher(requirements, charged + maximum)

                async def streaming() -> None:
                    answers.append(await send(client, STREAMED, voucher))

                tasks.start_soon(streaming)
                await app.streaming.wait()
                busy = await send(client, STREAMED, payer.voucher(requirements, charged + maximum))
                app.finish.set()
    assert busy.status_code == 402
    assert busy.json()["reason"] == "invalid_batch_settlement_evm_channel_busy"
    assert answers[0].status_code == 200


async def test_a_voucher_above_the_balance_is_refused() -> None:
    meter = session_meter(chat_app(), InProcessFacilitator())
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer, deposit_times=1)
        maximum = int(requirements.amount)
        answer = await send(client, QUESTION, payer.voucher(requirements, charged + maximum))
    assert answer.status_code == 402
    assert answer.json()["reason"] == "invalid_batch_settlement_evm_cumulative_exceeds_balance"
    assert (await channel_of(meter, payer.channel_id(requirements))).charged == charged


async def test_a_channel_with_a_withdrawal_requested_takes_no_more_vouchers() -> None:
    facilitator = InProcessFacilitator()
    meter = session_meter(chat_app(), facilitator)
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        facilitator.channels[payer.channel_id(requirements)].withdraw_requested_at = 1_700_000_000
        channels = meter.runtime.channels
        assert channels is not None
        record = await channel_of(meter, payer.channel_id(requirements))
        assert await channels.put(dataclasses.replace(record, synced_at=0.0)) is not None
        answer = await send(
            client, QUESTION, payer.voucher(requirements, charged + int(requirements.amount))
        )
    assert answer.status_code == 402
    assert answer.json()["reason"] == "channel_withdrawal_pending"


async def test_a_forged_voucher_is_refused_with_no_facilitator_call() -> None:
    facilitator = InProcessFacilitator()
    meter = session_meter(chat_app(), facilitator)
    payer, forger = ChannelPayer(), ChannelPayer(PAYERS[2].private_key)
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        forged = forger.voucher(
            requirements,
            charged + int(requirements.amount),
            config=payer.config(requirements),
        )
        answer = await send(client, QUESTION, forged)
    assert answer.status_code == 402
    assert answer.json()["reason"] == "invalid_batch_settlement_evm_voucher_signature"
    assert facilitator.calls == ["/verify", "/settle"]


async def test_a_voucher_for_another_channel_id_than_its_config_is_refused() -> None:
    meter = session_meter(chat_app(), InProcessFacilitator())
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        wrong = payer.voucher(
            requirements, charged + int(requirements.amount), channel_id="0x" + "12" * 32
        )
        answer = await send(client, QUESTION, wrong)
    assert answer.status_code == 402
    assert answer.json()["reason"] == "invalid_batch_settlement_evm_channel_id_mismatch"


@pytest.mark.parametrize(
    ("change", "reason", "status"),
    [
        ({"type": "claim"}, "invalid_batch_settlement_evm_payload_type", 402),
        ({"voucher": {"channelId": "0x12"}}, "invalid_payload", 400),
        ({"channelConfig": {"withdrawDelay": "900"}}, "invalid_payload", 400),
        ({"voucher": {"maxClaimableAmount": "0100"}}, "invalid_payload", 400),
        ({"voucher": {"maxClaimableAmount": str(2**128)}}, "invalid_payload", 400),
        ({"channelConfig": {"receiver": PAYERS[1].address}}, None, 402),
    ],
)
async def test_a_malformed_or_foreign_payload_is_refused_before_anything_else(
    change: dict[str, Any], reason: str | None, status: int
) -> None:
    facilitator = InProcessFacilitator()
    meter = session_meter(chat_app(), facilitator)
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, charged = await opened(meter, client, payer)
        voucher = payer.voucher(requirements, charged + int(requirements.amount))
        for name, fields in change.items():
            if isinstance(fields, dict):
                voucher.payload[name] = {**voucher.payload[name], **fields}
            else:
                voucher.payload[name] = fields
        answer = await send(client, QUESTION, voucher)
    assert answer.status_code == status
    assert answer.json()["reason"] == (reason or "invalid_batch_settlement_evm_channel_id_mismatch")
    assert facilitator.calls == ["/verify", "/settle"]


async def test_a_deposit_that_does_not_land_frees_the_channel_and_serves_nothing() -> None:
    from tests.inprocess.facilitator import Refusal

    facilitator = InProcessFacilitator(
        settle_refusal=Refusal("invalid_batch_settlement_evm_deposit_transaction_failed")
    )
    meter = session_meter(chat_app(), facilitator)
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements = await session_offer(client, QUESTION)
        maximum = int(requirements.amount)
        answer = await send(client, QUESTION, payer.deposit(requirements, maximum, 10 * maximum))
    assert answer.status_code == 402
    assert answer.json()["reason"] == "invalid_batch_settlement_evm_deposit_transaction_failed"
    channel = await channel_of(meter, payer.channel_id(requirements))
    assert (channel.serving, channel.charged, channel.balance) == (None, 0, 0)
    assert facilitator.calls == ["/verify", "/settle"]


# -- a server that died mid-stream --------------------------------------------------------------


async def test_a_row_left_mid_stream_is_charged_to_its_channel_by_another_worker() -> None:
    """A server died while streaming: its ledger row is still ``verified`` with its last
    checkpoint, its request still holds the channel. Another worker's sweeper, once the
    row's lease has run out, charges the checkpoint to the channel and frees it."""
    facilitator = InProcessFacilitator()
    payer = ChannelPayer()
    dead = session_meter(chat_app(), facilitator)
    async with calling(dead) as client:
        requirements, charged = await opened(dead, client, payer)
        answer = await send(
            client, STREAMED, payer.voucher(requirements, charged + int(requirements.amount))
        )
    receipt_id = answer.headers["x-payment-receipt"].rsplit("/", 1)[-1]
    store, channels = dead.runtime.store, dead.runtime.channels
    assert channels is not None
    served = await store.get(receipt_id)
    channel = await channel_of(dead, payer.channel_id(requirements))
    assert served is not None
    assert served.amount
    # As the dead server left them: the row verified at its checkpoint, the channel held.
    left = dataclasses.replace(
        served, state=LedgerState.VERIFIED, amount=served.amount - 1, lease_until=1.0
    )
    await store.save(left)
    held = dataclasses.replace(
        channel,
        charged=charged,
        serving=served.key,
        serving_until=time.time() + 300,
        last_charged=None,
    )
    assert await channels.put(held) is not None

    worker = session_meter(chat_app(), facilitator, store=store, channel_store=channels)
    assert await worker.runtime.settler.sweep() == 1
    await worker.runtime.settler.drain()

    recovered = await store.get(receipt_id)
    assert recovered is not None
    assert (recovered.state, recovered.amount) == (LedgerState.SETTLED, served.amount - 1)
    after = await channel_of(worker, payer.channel_id(requirements))
    assert (after.charged, after.serving) == (charged + served.amount - 1, None)


async def test_charging_channels_wake_a_waiting_request_when_the_charge_is_done() -> None:
    charging = ChargingChannels()
    assert not await charging.wait("0xaa", 10)  # nothing charging: no wait at all
    charging.begin("0xaa")
    woken: list[bool] = []
    async with anyio.create_task_group() as tasks:

        async def waiter() -> None:
            woken.append(await charging.wait("0xaa", HANG))

        tasks.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        charging.end("0xaa")
    assert woken == [True]

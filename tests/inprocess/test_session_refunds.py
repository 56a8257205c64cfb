"""Sessions' refunds in the in-process tier: where a refund comes in, and what the payer
hears when the facilitator refuses it or is away.

The SDK clients probe the resource's URL with ``GET`` and send their refund there. On a
``POST``-only metered route the meter answers the probe where the app refuses it, takes
every refund payload for itself, and leaves the app's own answers alone. (Refunds that
land, and the attacks on them, are tested against the chain: ``tests/test_session_refunds.py``
and ``tests/security/test_session_refunds.py``.)
"""

from __future__ import annotations

import dataclasses
import time

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from x402.http import decode_payment_required_header
from x402.http.utils import decode_payment_response_header
from x402.mechanisms.evm.batch_settlement.errors import (
    ERR_MISSING_CHANNEL,
    ERR_REFUND_SIMULATION_FAILED,
)
from x402.schemas import PaymentPayload, PaymentRequired

from tests.apps import MAX_TOKENS
from tests.inprocess.facilitator import RECEIVER_AUTHORIZER, InProcessFacilitator, Refusal
from tests.inprocess.harness import (
    CHAT,
    QUESTION,
    STREAMED,
    calling,
    chat_app,
    header,
    metered,
)
from tests.inprocess.sessions import ChannelPayer, channel_of, send, session_meter, session_offer
from tests.inprocess.test_sessions import opened
from tests.security.test_session_refunds import offered_sessions
from tests.security.test_sessions import Counted, open_channel
from x402_meter import PriceTable, TokenPrice
from x402_meter.pricing import PricedRequest
from x402_meter.store import LedgerState

pytestmark = pytest.mark.anyio


def refund_of(payer: ChannelPayer, voucher: PaymentPayload) -> PaymentPayload:
    """``voucher`` made a refund (the SDK's shape: the same config and voucher)."""
    inner = {**voucher.payload, "type": "refund"}
    return voucher.model_copy(update={"payload": inner})


async def test_the_probe_of_a_post_only_route_gets_a_402_offering_a_session_alone() -> None:
    app = Counted(chat_app())
    async with calling(session_meter(app, InProcessFacilitator())) as client:
        probe = await client.get(CHAT)
    assert probe.status_code == 402
    required = decode_payment_required_header(probe.headers["payment-required"])
    assert isinstance(required, PaymentRequired)
    (offer,) = required.accepts
    assert offer.scheme == "batch-settlement"
    assert (offer.extra or {})["receiverAuthorizer"] == RECEIVER_AUTHORIZER
    assert app.runs == 1  # the app was asked first, and refused (405)


async def test_an_app_that_serves_get_at_the_path_keeps_its_answer() -> None:
    async def chat(request: Request) -> JSONResponse:
        return JSONResponse({"models": ["m"]})

    routes = [Route(CHAT, chat, methods=["GET"]), *chat_app().routes]  # type: ignore[attr-defined]
    meter = session_meter(Starlette(routes=routes), InProcessFacilitator())
    async with calling(meter) as client:
        listed = await client.get(CHAT)
        elsewhere = await client.get("/v1/other")
    assert (listed.status_code, listed.json()) == (200, {"models": ["m"]})
    assert elsewhere.status_code == 404  # not a metered path: the app's own 404


async def test_without_sessions_the_probe_is_the_apps() -> None:
    async with calling(metered(chat_app(), InProcessFacilitator())) as client:
        probe = await client.get(CHAT)
    assert probe.status_code == 405


async def test_a_refund_payload_never_reaches_the_app_whatever_the_method() -> None:
    """On the route's own method or another, a refund is the meter's (here: refused, the
    meter has no record of the channel): the app never runs for it."""
    app = Counted(chat_app())
    facilitator = InProcessFacilitator()
    payer = ChannelPayer()
    async with calling(session_meter(app, facilitator)) as client:
        requirements = await session_offer(client, QUESTION)
        runs = app.runs
        refund = refund_of(payer, payer.voucher(requirements, 0))
        answers = [
            await client.get(CHAT, headers=header(refund)),
            await client.post(CHAT, json=QUESTION, headers=header(refund)),
            await client.delete(CHAT, headers=header(refund)),
        ]
    assert [(a.status_code, a.json()["reason"]) for a in answers] == [
        (402, ERR_MISSING_CHANNEL)
    ] * 3
    assert app.runs == runs
    assert facilitator.calls == []


async def test_a_refund_the_facilitator_refuses_is_a_402_with_its_reason_and_frees_it() -> None:
    """As the SDK's server answers a failed settlement: 402 with ``PAYMENT-RESPONSE``
    (``success: false`` and the facilitator's reason), which the SDK client reports. The
    channel is free again: the next voucher is served."""
    facilitator = InProcessFacilitator()
    meter = session_meter(chat_app(), facilitator)
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, _ = await open_channel(meter, client, payer)
        channel_id = payer.channel_id(requirements)
        charged = (await channel_of(meter, channel_id)).charged
        facilitator.settle_refusal = Refusal(ERR_REFUND_SIMULATION_FAILED)
        refused = await client.get(
            CHAT, headers=header(refund_of(payer, payer.voucher(requirements, charged)))
        )
        facilitator.settle_refusal = None
        voucher = payer.voucher(requirements, charged + int(requirements.amount))
        served = await send(client, QUESTION, voucher)
    assert (refused.status_code, refused.json()["reason"]) == (402, ERR_REFUND_SIMULATION_FAILED)
    result = decode_payment_response_header(refused.headers["payment-response"])
    assert (result.success, result.error_reason) == (False, ERR_REFUND_SIMULATION_FAILED)
    assert served.status_code == 200
    record = await channel_of(meter, channel_id)
    assert (record.refunded, record.refund_transaction, record.serving) == (0, None, None)


async def test_a_refund_while_the_facilitator_is_away_is_a_503_and_frees_the_channel() -> None:
    facilitator = InProcessFacilitator()
    meter = session_meter(chat_app(), facilitator)
    payer = ChannelPayer()
    async with calling(meter) as client:
        requirements, _ = await open_channel(meter, client, payer)
        channel_id = payer.channel_id(requirements)
        charged = (await channel_of(meter, channel_id)).charged
        facilitator.unreachable = True
        away = await client.get(
            CHAT, headers=header(refund_of(payer, payer.voucher(requirements, charged)))
        )
        facilitator.unreachable = False
        served = await send(
            client, QUESTION, payer.voucher(requirements, charged + int(requirements.amount))
        )
    assert (away.status_code, away.json()["reason"]) == (503, "facilitator_unavailable")
    assert served.status_code == 200


async def test_a_route_priced_by_model_is_probed_at_its_dearest_price() -> None:
    """A refund pays nothing, and its probe names no model: a price table offers the
    session at its dearest price instead of refusing the probe (``model_required``)."""
    table = PriceTable({"small": "0.000001", "large": "0.000004"})
    meter = session_meter(chat_app(), InProcessFacilitator(), price_per_token=table)
    async with calling(meter) as client:
        probe = await client.get(CHAT)
    assert probe.status_code == 402, probe.text
    (offer,) = offered_sessions(probe)
    assert int(offer.amount) == 4 * MAX_TOKENS


async def test_a_price_function_that_cannot_price_a_refund_is_a_400_not_a_500() -> None:
    def priced_by_model(request: PricedRequest) -> TokenPrice:
        if request.model is None:
            raise ValueError("no model")
        return TokenPrice.per_million("2", "2")

    meter = session_meter(chat_app(), InProcessFacilitator(), price_per_token=priced_by_model)
    async with calling(meter) as client:
        probe = await client.get(CHAT)
    assert (probe.status_code, probe.json()["reason"]) == (400, "refund_price_unavailable")


async def test_a_refund_waits_for_a_dead_holders_charge_even_past_its_lease() -> None:
    """A server died mid-stream and its channel's lease is over before a sweeper charged
    the dead answer. A refund taking the channel then would start from a charged cumulative
    without that answer and return its money to the payer: the seller would lose it. As a
    voucher is, the refund is refused as busy, with no facilitator call, until the sweeper
    has charged it; then the payer's refund (for the cumulative that includes it) goes to
    the facilitator (which refuses it here: it has no chain to refund on)."""
    facilitator = InProcessFacilitator()
    payer = ChannelPayer()
    dead = session_meter(chat_app(), facilitator)
    async with calling(dead) as client:
        requirements, charged = await opened(dead, client, payer)
        maximum = int(requirements.amount)
        answer = await send(client, STREAMED, payer.voucher(requirements, charged + maximum))
    receipt_id = answer.headers["x-payment-receipt"].rsplit("/", 1)[-1]
    store, channels = dead.runtime.store, dead.runtime.channels
    assert channels is not None
    served = await store.get(receipt_id)
    channel = await channel_of(dead, payer.channel_id(requirements))
    assert served is not None
    assert served.amount
    row_lease = time.time() + 3600  # the dead row's lease ends after its channel's
    await store.save(dataclasses.replace(served, state=LedgerState.VERIFIED, lease_until=row_lease))
    left = dataclasses.replace(
        channel, charged=charged, serving=served.key, serving_until=1.0, last_charged=None
    )
    assert await channels.put(left) is not None

    worker = session_meter(chat_app(), facilitator, store=store, channel_store=channels)
    facilitator.settle_refusal = Refusal(ERR_REFUND_SIMULATION_FAILED)
    async with calling(worker) as client:
        calls = len(facilitator.calls)
        early = await client.get(
            CHAT, headers=header(refund_of(payer, payer.voucher(requirements, charged)))
        )
        assert facilitator.calls[calls:] == []
        assert await worker.runtime.settler.sweep(row_lease + 1) == 1
        await worker.runtime.settler.drain()
        after = charged + served.amount
        calls = len(facilitator.calls)
        asked = await client.get(
            CHAT, headers=header(refund_of(payer, payer.voucher(requirements, after)))
        )
        assert facilitator.calls[calls:] == ["/verify", "/settle"]
    assert (early.status_code, early.json()["reason"]) == (
        402,
        "invalid_batch_settlement_evm_channel_busy",
    )
    assert (asked.status_code, asked.json()["reason"]) == (402, ERR_REFUND_SIMULATION_FAILED)
    record = await channel_of(worker, payer.channel_id(requirements))
    assert (record.charged, record.serving, record.refunded) == (after, None, 0)

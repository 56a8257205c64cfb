"""Cooperative refunds of sessions end to end: the official Python SDK client's
``refund(url)`` against X402Meter on the local chain.

Everything is real: the SDK's batch-settlement client (signing with a key that reads the
chain) in the SDK's httpx client, X402Meter in uvicorn on a ``POST``-only chat route (the
SDK probes the URL with ``GET``), the bundled facilitator over HTTP, the stub model, the
contracts on anvil. Balances are read from the chain and checked to the atomic unit: what
left the payer is exactly what the seller charged, and ``payTo`` receives exactly that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
from x402.http import decode_payment_required_header
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme as PayerScheme
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.schemas import SettleResponse

from tests.channel_seller import Balances, payer_client, payer_scheme
from tests.examples.conftest import new_funded_payer
from tests.test_channels_sdk import contracts
from tests.test_sessions_sdk import (
    CHAT,
    QUESTION,
    STREAMED,
    Seller,
    seller,
    streamed_usage,
    usage_cost,
)
from x402_meter.devstack import LocalStack
from x402_meter.store import ChannelRecord

pytestmark = pytest.mark.anyio


def channel_config(record: ChannelRecord) -> ChannelConfig:
    return ChannelConfig(
        payer=record.payer,
        payer_authorizer=record.payer_authorizer,
        receiver=record.receiver,
        receiver_authorizer=record.receiver_authorizer,
        token=record.token,
        withdraw_delay=record.withdraw_delay,
        salt=record.salt,
    )


async def minimum_deposit(shop: Seller) -> int:
    async with httpx.AsyncClient(base_url=shop.base, timeout=60) as plain:
        challenge = await plain.post(CHAT, json=QUESTION)
    offers = decode_payment_required_header(challenge.headers["payment-required"]).accepts
    (offer,) = [r for r in offers if r.scheme == "batch-settlement"]
    return int((offer.extra or {})["minDeposit"])


async def chat(
    shop: Seller, scheme: PayerScheme, stack: LocalStack, bodies: list[dict[str, Any]]
) -> list[int]:
    """Each body asked in turn by the SDK client paying with ``scheme``; each answer's
    cost as the stub's usage says."""
    costs = []
    async with x402HttpxClient(payer_client(stack, scheme), timeout=60, base_url=shop.base) as http:
        for body in bodies:
            answer = await http.post(CHAT, json=body)
            assert answer.status_code == 200, answer.text
            usage = streamed_usage(answer.text) if body.get("stream") else answer.json()["usage"]
            costs.append(usage_cost(usage))
    return costs


async def refund(scheme: PayerScheme, url: str, amount: str | None = None) -> SettleResponse:
    """The SDK client's ``refund(url)`` (synchronous: on a thread, as the server is in
    this loop)."""
    from x402.mechanisms.evm.batch_settlement.client import RefundOptions

    options = RefundOptions(amount=amount)
    return await anyio.to_thread.run_sync(scheme.refund, url, options)


async def test_the_sdk_clients_refund_returns_the_rest_and_the_seller_keeps_every_charge(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """A JSON answer opens the channel, two streamed answers follow; the SDK client's
    ``refund(url)`` (a GET probe of a POST-only route, then its refund voucher, which is
    behind after the streamed answer: one corrective 402) claims every charge and returns
    the rest in one transaction. On chain: the payer is out exactly the charges, payTo
    (after the sweep) has exactly them, the escrow holds nothing of the channel."""
    stack = x402_local_stack
    payer = new_funded_payer(stack)
    async with seller(stack, tmp_path) as shop:
        deposit = await minimum_deposit(shop)
        start = Balances.read(stack, payer.address, shop.pay_to)
        scheme = payer_scheme(stack, payer)
        costs = await chat(shop, scheme, stack, [QUESTION, STREAMED, STREAMED])
        charged = sum(costs)

        settled = await refund(scheme, f"{shop.base}{CHAT}")

        assert settled.success, settled
        assert int(settled.amount or "") == deposit - charged
        assert settled.extra is not None
        state = settled.extra["channelState"]
        assert (state["chargedCumulativeAmount"], state["totalClaimed"]) == (
            str(charged),
            str(charged),
        )
        (record,) = await shop.channels.list()
        assert (record.charged, record.claimed, record.refunded) == (
            charged,
            charged,
            deposit - charged,
        )
        assert record.refund_transaction == settled.transaction
        assert record.claim_transaction == settled.transaction
        assert (record.balance, record.total_claimed, record.serving) == (charged, charged, None)
        on_chain = contracts(stack).channel(channel_config(record))
        assert (on_chain.balance, on_chain.total_claimed) == (charged, charged)

        claims = shop.meter.runtime.claims
        assert claims is not None
        await claims.claim_now()  # the sweep (woken by the refund; this pass makes sure)
        assert Balances.read(stack, payer.address, shop.pay_to) == start.moved(
            payer=-charged, pay_to=charged
        )

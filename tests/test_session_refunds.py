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
from eth_account import Account
from x402.http import decode_payment_required_header
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.batch_settlement.authorizer_signer import LocalAuthorizerSigner
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


async def swept(shop: Seller) -> None:
    """Wait for a claims pass that started now: what a refund claimed has been swept to
    ``payTo`` by then (the refund wakes the worker; this pass makes sure)."""
    claims = shop.meter.runtime.claims
    assert claims is not None
    await claims.claim_now()


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

        await swept(shop)
        assert Balances.read(stack, payer.address, shop.pay_to) == start.moved(
            payer=-charged, pay_to=charged
        )


async def test_after_a_full_refund_the_channel_takes_a_new_deposit_and_serves_again(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """The SDK client forgets a refunded channel; its next request recovers the channel
    from the chain (balance = what was claimed) and tops it up with a new deposit, which
    the meter admits on the same channel, and the answer is charged as before."""
    stack = x402_local_stack
    payer = new_funded_payer(stack)
    async with seller(stack, tmp_path) as shop:
        deposit = await minimum_deposit(shop)
        scheme = payer_scheme(stack, payer)
        first = sum(await chat(shop, scheme, stack, [QUESTION]))
        assert (await refund(scheme, f"{shop.base}{CHAT}")).success
        await swept(shop)
        start = Balances.read(stack, payer.address, shop.pay_to)

        second = sum(await chat(shop, scheme, stack, [QUESTION]))

        (record,) = await shop.channels.list()
        assert (record.charged, record.claimed, record.serving) == (first + second, first, None)
        assert record.balance == first + deposit
        assert Balances.read(stack, payer.address, shop.pay_to) == start.moved(
            payer=-deposit, contract=deposit
        )


async def test_a_partial_refund_returns_the_amount_asked_and_the_session_goes_on(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """``RefundOptions(amount=...)`` takes back that much (and claims what was charged);
    the channel keeps the rest and the next answer is paid by voucher on it as before."""
    stack = x402_local_stack
    payer = new_funded_payer(stack)
    async with seller(stack, tmp_path) as shop:
        deposit = await minimum_deposit(shop)
        scheme = payer_scheme(stack, payer)
        first = sum(await chat(shop, scheme, stack, [QUESTION]))
        start = Balances.read(stack, payer.address, shop.pay_to)

        settled = await refund(scheme, f"{shop.base}{CHAT}", amount="1000")
        second = sum(await chat(shop, scheme, stack, [QUESTION]))

        assert (settled.success, settled.amount) == (True, "1000")
        (record,) = await shop.channels.list()
        assert (record.charged, record.claimed, record.refunded) == (first + second, first, 1000)
        assert record.balance == deposit - 1000
        await swept(shop)  # the refund claimed the first answer, this pass the second
        assert Balances.read(stack, payer.address, shop.pay_to) == start.moved(
            payer=1000, contract=-1000 - first - second, pay_to=first + second
        )


ANSWERS = 50
CLAIM_EVERY = 10


async def test_fifty_streamed_answers_one_deposit_batched_claims_and_the_rest_refunded(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """Issue 17's proof, with the official Python SDK client: 50 streamed answers in one
    session, then ``refund(url)``. Exactly one deposit (one facilitator ``/settle`` and one
    token movement before the refund; the SDK client's second request is a deposit again,
    as it learned nothing from the streamed first answer, and gets the corrective 402);
    the charges claimed in batches (a pass every 10 answers,
    the rest in the refund's own transaction: 5 claim transactions for 50 answers); the
    receipts' amounts add up exactly to what left the payer's wallet after the refund, and
    to what payTo received (on-chain balances)."""
    stack = x402_local_stack
    payer = new_funded_payer(stack)
    async with seller(stack, tmp_path, session_deposit_multiple=ANSWERS + 10) as shop:
        deposit = await minimum_deposit(shop)
        start = Balances.read(stack, payer.address, shop.pay_to)
        scheme = payer_scheme(stack, payer)
        claims = shop.meter.runtime.claims
        assert claims is not None
        claim_transactions: list[str] = []
        receipts: list[str] = []
        client = payer_client(stack, scheme)
        async with x402HttpxClient(client, timeout=60, base_url=shop.base) as http:
            for number in range(1, ANSWERS + 1):
                answer = await http.post(CHAT, json=STREAMED)
                assert answer.status_code == 200, answer.text
                receipts.append(answer.headers["x-payment-receipt"])
                if number == CLAIM_EVERY:  # what the facilitator settled before any claim
                    deposits = shop.facilitator.paths.count("/settle")
                if number % CLAIM_EVERY == 0 and number < ANSWERS:
                    report = await claims.claim_now()
                    claim_transactions += [claim.transaction for claim in report.claims]
            amounts = [int((await http.get(path)).json()["amount"]) for path in receipts]
        assert deposits == 1
        assert Balances.read(stack, payer.address, shop.pay_to).payer == start.payer - deposit

        settled = await refund(scheme, f"{shop.base}{CHAT}")
        await swept(shop)

        assert settled.success, settled
        claim_transactions.append(settled.transaction)  # it claimed the last ten answers
        assert len(set(claim_transactions)) == ANSWERS // CLAIM_EVERY
        charged = sum(amounts)
        assert all(amounts)
        end = Balances.read(stack, payer.address, shop.pay_to)
        assert start.payer - end.payer == charged
        assert end.pay_to - start.pay_to == charged
        assert end.contract == start.contract
        (record,) = await shop.channels.list()
        assert (record.charged, record.claimed, record.refunded) == (
            charged,
            charged,
            deposit - charged,
        )


async def test_a_seller_with_its_own_receiver_authorizer_signs_the_refund_and_its_claim(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """With ``session_receiver_authorizer``, the channel names the seller's key, which the
    facilitator does not hold: the meter signs the refund and its claim itself, and the
    contract takes them."""
    stack = x402_local_stack
    payer = new_funded_payer(stack)
    own = LocalAuthorizerSigner(Account.create())
    async with seller(stack, tmp_path, session_receiver_authorizer=own) as shop:
        deposit = await minimum_deposit(shop)
        start = Balances.read(stack, payer.address, shop.pay_to)
        scheme = payer_scheme(stack, payer)
        charged = sum(await chat(shop, scheme, stack, [QUESTION, STREAMED]))

        settled = await refund(scheme, f"{shop.base}{CHAT}")
        await swept(shop)

        assert settled.success, settled
        assert int(settled.amount or "") == deposit - charged
        (record,) = await shop.channels.list()
        assert record.receiver_authorizer == own.address.lower()
        on_chain = contracts(stack).channel(channel_config(record))
        assert (on_chain.balance, on_chain.total_claimed) == (charged, charged)
        assert Balances.read(stack, payer.address, shop.pay_to) == start.moved(
            payer=-charged, pay_to=charged
        )

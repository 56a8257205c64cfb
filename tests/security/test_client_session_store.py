"""The paying client's channel book and refunds against lies: a seller's refund answer
that says more came back than was left, and a book (``session_store``) that says more was
deposited and less charged than the chain and the server know.

The honest seller is X402Meter under uvicorn on the local stack; the refund's lie is told by
the proxy of ``tests.security.test_client_sessions``; the book's by editing its file.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from x402.http.utils import decode_payment_response_header, encode_payment_response_header

from tests.examples.conftest import new_funded_payer
from tests.security.test_client_sessions import INFLATED, Answer, Lie, lying_seller
from tests.test_client_sessions import (
    CORRECTIVE,
    MESSAGES,
    ask_streamed_async,
    deposits,
    paying_client,
    shop_and_payer,
)
from tests.test_sessions_sdk import usage_cost
from x402_meter.devstack import LocalStack

pytestmark = pytest.mark.anyio


class InflatedRefund(Lie):
    """The refund's ``PAYMENT-RESPONSE`` says far more came back than the channel held."""

    def alter(self, request: httpx.Request, answer: Answer) -> Answer | None:
        status, headers, content = answer
        if "payment-signature" not in request.headers or request.method != "GET":
            return None
        changed = []
        for name, value in headers:
            if name == b"payment-response":
                settled = decode_payment_response_header(value.decode())
                settled.amount = str(INFLATED)
                value = encode_payment_response_header(settled).encode()
            changed.append((name, value))
        return status, changed, content


async def test_a_refund_saying_more_came_back_counts_back_only_what_was_left(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """The refund answer claims 10**12 came back: the wallet counts back only the deposit
    less what was charged, so ``max_total`` gains no room the refund did not give."""
    stack = x402_local_stack
    payer = new_funded_payer(stack)
    async with (
        lying_seller(stack, tmp_path, InflatedRefund()) as base,
        paying_client(stack, payer) as http,
    ):
        llm = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x402", http_client=http)
        answer = await llm.chat.completions.create(model="stub", messages=MESSAGES)
        assert answer.usage is not None
        cost = usage_cost(answer.usage.model_dump())
        (deposit,) = deposits(http.payments)
        (refund,) = await http.close_sessions()

    assert refund.amount == deposit - cost
    assert (http.wallet.spent, http.wallet.refunded) == (cost, deposit - cost)


async def test_a_book_claiming_a_bigger_deposit_and_fewer_charges_is_corrected(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """The book is edited to say the channel holds 10**12 and nothing was charged. A new
    client with ``rpc_url`` resumes the channel with the chain's balance (the real deposit);
    its first voucher, behind the server's charges, meets one corrective 402, believed
    because it shows our own voucher; the charges stay exact and no deposit is made."""
    stack = x402_local_stack
    store = tmp_path / "sessions"
    async with shop_and_payer(stack, tmp_path) as (shop, payer, _):
        async with paying_client(stack, payer, session_store=store) as first:
            llm = openai.AsyncOpenAI(base_url=f"{shop.base}/v1", api_key="x402", http_client=first)
            costs = [await ask_streamed_async(llm)]
            await first.balance()
        (deposit,) = deposits(first.payments)
        (booked,) = list(store.glob("*.json"))
        record = json.loads(booked.read_text())
        record["state"].update(balance=str(INFLATED), chargedCumulativeAmount="0")
        booked.write_text(json.dumps(record))

        async with paying_client(
            stack, payer, session_store=store, rpc_url=stack.rpc_url
        ) as second:
            llm = openai.AsyncOpenAI(base_url=f"{shop.base}/v1", api_key="x402", http_client=second)
            costs.append(await ask_streamed_async(llm))
            (balance,) = await second.balance()

        assert deposits(second.payments) == []
        assert balance.channel_id == first.payments[0].channel_id
        assert (balance.deposited, balance.charged) == (deposit, sum(costs))
        assert shop.answers.reasons.count(CORRECTIVE) == 1
        (server,) = await shop.channels.list()
        assert server.charged == sum(costs)

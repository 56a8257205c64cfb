"""x402-meter's paying client (``x402_meter.client``): caps, receipts, and what it refuses.

Against the FastAPI example on the real local stack, through the ``openai`` package.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import anyio
import openai
import pytest
from eth_account import Account
from openai.types.chat import ChatCompletionMessageParam

from tests.apps import max_amount
from tests.examples.conftest import Example, serve_example
from x402_meter import Asset
from x402_meter.client import (
    NoPayableOfferError,
    PayingAsyncClient,
    Payment,
    PaymentStage,
    SpendCapExceededError,
)
from x402_meter.devstack import LocalStack

pytestmark = pytest.mark.anyio

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
MAXIMUM = max_amount({"messages": MESSAGES})  # what one local-stub chat may cost, in units
MAXIMUM_USDC = str(Decimal(MAXIMUM).scaleb(-6))


@pytest.fixture
async def example(x402_local_stack: LocalStack) -> AsyncIterator[Example]:
    async with serve_example("fastapi", x402_local_stack) as served:
        yield served


async def chat(http: PayingAsyncClient, example: Example) -> None:
    client = openai.AsyncOpenAI(base_url=f"{example.base}/v1", api_key="x402", http_client=http)
    await client.chat.completions.create(model="local-stub", messages=MESSAGES)


async def test_a_request_above_max_per_request_is_refused_before_signing(
    example: Example,
) -> None:
    before = example.balances()
    async with example.client(max_per_request="0.008") as http:
        with pytest.raises(SpendCapExceededError) as refused:
            await chat(http, example)  # openai lets it through as it is: no retries, no wrapping

    assert (refused.value.cap, refused.value.requested, refused.value.limit) == (
        "max_per_request",
        MAXIMUM,
        8000,
    )
    assert f"{MAXIMUM_USDC}, above max_per_request (0.008)" in str(refused.value)
    assert http.payments == ()
    assert example.balances() == before


async def test_the_sync_client_refuses_above_max_per_request_too(example: Example) -> None:
    def ask() -> None:
        with example.sync_client(max_per_request="0.008") as http:
            client = openai.OpenAI(base_url=f"{example.base}/v1", api_key="x402", http_client=http)
            client.chat.completions.create(model="local-stub", messages=MESSAGES)

    with pytest.raises(SpendCapExceededError) as refused:
        await anyio.to_thread.run_sync(ask)
    assert refused.value.cap == "max_per_request"


async def test_max_total_makes_room_by_reading_the_settlements_from_the_chain(
    example: Example,
) -> None:
    before = example.balances()
    async with example.client(max_total="0.01", rpc_url=example.stack.rpc_url) as http:
        await chat(http, example)
        await chat(http, example)  # 2 x MAXIMUM > 10000, until the chain shows the first charge
        first, second = http.payments
        assert first.receipt is not None
        assert first.receipt.status == "settled"
        last = await http.receipt(wait=20)

    assert last.status == "settled"
    assert (first.proof, second.proof) == (first.receipt.transaction, last.transaction)
    assert (first.spend, second.spend) == (first.receipt.amount, last.amount)
    assert http.wallet.spent == first.spend + second.spend == before[0] - example.balances()[0]


async def test_without_an_rpc_url_a_settled_payment_keeps_counting_its_maximum(
    example: Example,
) -> None:
    async with example.client(max_total="0.01") as http:
        await chat(http, example)
        receipt = await http.receipt(wait=20)
        with pytest.raises(SpendCapExceededError) as refused:
            await chat(http, example)

    (paid,) = http.payments
    assert receipt.status == "settled"
    assert receipt.amount is not None
    assert 0 < receipt.amount < MAXIMUM
    assert (paid.spend, paid.proven_amount) == (MAXIMUM, None)
    assert (refused.value.cap, refused.value.left) == ("max_total", 10_000 - MAXIMUM)


async def test_max_total_refuses_what_the_actual_charges_leave_no_room_for(
    example: Example,
) -> None:
    async with example.client(max_total=MAXIMUM_USDC, rpc_url=example.stack.rpc_url) as http:
        await chat(http, example)
        with pytest.raises(SpendCapExceededError) as refused:
            await chat(http, example)

    (paid,) = http.payments
    assert paid.receipt is not None
    assert paid.receipt.amount is not None
    assert (refused.value.cap, refused.value.left) == ("max_total", MAXIMUM - paid.receipt.amount)


async def test_every_payment_keeps_its_receipt(example: Example) -> None:
    before = example.balances()
    async with example.client() as http:
        await chat(http, example)
        await chat(http, example)
        receipts = [await http.receipt(payment, wait=20) for payment in http.payments]

    assert len({payment.receipt_url for payment in http.payments}) == 2
    assert [receipt.status for receipt in receipts] == ["settled", "settled"]
    assert [payment.transaction for payment in http.payments] == [
        receipt.transaction for receipt in receipts
    ]
    paid = sum(receipt.amount or 0 for receipt in receipts)
    assert example.balances() == (before[0] - paid, before[1] + paid)


async def test_an_offer_in_another_asset_is_not_paid(example: Example) -> None:
    other = Asset(Account.create().address, "Other Coin", "1")
    async with PayingAsyncClient(
        example.payer.key.hex(), network=example.stack.network, asset=other
    ) as http:
        with pytest.raises(NoPayableOfferError):
            await chat(http, example)
    assert http.payments == ()


async def test_the_listener_hears_every_stage_of_a_payment(example: Example) -> None:
    heard: list[tuple[PaymentStage, int | None]] = []

    def listen(stage: PaymentStage, payment: Payment) -> None:
        heard.append((stage, payment.status_code))

    async with PayingAsyncClient(
        example.payer.key.hex(),
        network=example.stack.network,
        asset=example.asset,
        on_payment=listen,
    ) as http:
        await chat(http, example)
        await http.receipt(wait=20)

    assert heard == [("required", None), ("signed", None), ("answered", 200), ("receipt", 200)]

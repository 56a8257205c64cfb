"""Sessions in x402-meter's own paying client: one deposit, then a voucher per answer signed
exactly from what the server charged (a streamed answer's charge read from its receipt), no
corrective round trip; more channels for concurrent requests; the balance; the remainder
taken back.

Everything is real: X402Meter offering sessions in uvicorn with a SQLite ledger and channel
store (``tests.test_sessions_sdk.seller``), the bundled facilitator over HTTP (every request
the meter sends it counted), the stub model, the contracts on anvil, and the ``openai``
package on top of ``PayingClient``/``PayingAsyncClient``. Balances are read from the chain.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import anyio
import httpx
import openai
import pytest
from eth_account.signers.local import LocalAccount
from openai.types.chat import ChatCompletionMessageParam

from tests.channel_seller import Balances
from tests.examples.conftest import new_funded_payer
from tests.test_sessions_sdk import Seller, seller, usage_cost
from x402_meter import Asset
from x402_meter.client import PayingAsyncClient, PayingClient, Payment
from x402_meter.devstack import LocalStack

pytestmark = pytest.mark.anyio

MESSAGES: Final[list[ChatCompletionMessageParam]] = [{"role": "user", "content": "what is x402?"}]
SESSION_FIRST: Final = ("batch-settlement", "upto")
CORRECTIVE: Final = "invalid_batch_settlement_evm_cumulative_amount_mismatch"


class PaidAnswers(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """The paying client's way to the server: counts each paid request (it carries
    ``PAYMENT-SIGNATURE``) and each 402 answered to one (a refused payment, such as the
    spec's corrective 402), with its reason."""

    def __init__(self) -> None:
        self.sync = httpx.HTTPTransport()
        self.asynchronous = httpx.AsyncHTTPTransport()
        self.paid = 0
        self.refusals: list[str] = []

    def _count(self, request: httpx.Request, response: httpx.Response, body: bytes) -> None:
        if "payment-signature" not in request.headers:
            return
        self.paid += 1
        if response.status_code == 402:
            self.refusals.append(str(json.loads(body or b"{}").get("reason")))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.sync.handle_request(request)
        if response.status_code == 402:
            self._count(request, response, response.read())
        else:
            self._count(request, response, b"")
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.asynchronous.handle_async_request(request)
        if response.status_code == 402:
            self._count(request, response, await response.aread())
        else:
            self._count(request, response, b"")
        return response


def asset(stack: LocalStack) -> Asset:
    return Asset(stack.asset, stack.asset_name, stack.asset_version, stack.asset_decimals)


def streamed_cost(chunks: list[Any]) -> int:
    """What the stub's usage (its stream's last chunk) costs at the meter's price."""
    (usage,) = [chunk.usage for chunk in chunks if chunk.usage is not None]
    return usage_cost(usage.model_dump())


def ask_streamed(llm: openai.OpenAI) -> int:
    stream = llm.chat.completions.create(
        model="stub",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    with stream:
        return streamed_cost(list(stream))


async def ask_streamed_async(llm: openai.AsyncOpenAI) -> int:
    stream = await llm.chat.completions.create(
        model="stub",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    async with stream:
        return streamed_cost([chunk async for chunk in stream])


def deposits(payments: tuple[Payment, ...]) -> list[int]:
    return [p.deposit for p in payments if p.deposit]


@asynccontextmanager
async def shop_and_payer(
    stack: LocalStack, tmp_path: Path, **options: Any
) -> AsyncIterator[tuple[Seller, LocalAccount, Balances]]:
    payer = new_funded_payer(stack)
    async with seller(stack, tmp_path, **options) as shop:
        yield shop, payer, Balances.read(stack, payer.address, shop.pay_to)


async def test_fifty_streamed_answers_cost_one_deposit_and_no_corrective_402(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """50 streamed answers through the ``openai`` package over ``PayingClient``: the first
    deposits (the server's ``minDeposit``), the other 49 pay by voucher, each signed from the
    previous answer's receipt, so no payment is refused and the meter calls its facilitator
    only for the deposit. The channel's charged total is the sum of the answers' costs."""
    stack = x402_local_stack
    async with shop_and_payer(stack, tmp_path) as (shop, payer, start):
        paid = PaidAnswers()

        def chat() -> tuple[list[int], tuple[Payment, ...], Any]:
            with PayingClient(
                payer.key.hex(),
                network=stack.network,
                asset=asset(stack),
                schemes=SESSION_FIRST,
                transport=paid,
            ) as http:
                llm = openai.OpenAI(base_url=f"{shop.base}/v1", api_key="x402", http_client=http)
                costs = [ask_streamed(llm) for _ in range(50)]
                return costs, http.payments, http.balance()

        costs, payments, balances = await anyio.to_thread.run_sync(chat)

        (deposit,) = deposits(payments)
        assert paid.refusals == []
        assert CORRECTIVE not in shop.answers.reasons
        assert paid.paid == 50 == len(payments)
        assert {p.scheme for p in payments} == {"batch-settlement"}
        assert shop.facilitator.paths == ["/supported", "/verify", "/settle"]
        assert Balances.read(stack, payer.address, shop.pay_to) == start.moved(
            payer=-deposit, contract=deposit
        )
        (record,) = await shop.channels.list()
        assert record.charged == sum(costs)
        (balance,) = balances
        assert (balance.channel_id, balance.deposited) == (record.channel_id, deposit)
        assert (balance.charged, balance.remaining) == (sum(costs), deposit - sum(costs))


async def test_concurrent_requests_open_more_channels_up_to_max_sessions_and_wait_for_one(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """Eight streamed requests at once through ``PayingAsyncClient`` with ``max_sessions=3``:
    three channels are opened (three deposits), the other requests wait for one of them to
    be free; all eight are served, none refused as busy or corrected. Then eight more reuse
    the three channels without a deposit."""
    stack = x402_local_stack
    async with shop_and_payer(stack, tmp_path) as (shop, payer, start):
        paid = PaidAnswers()
        async with PayingAsyncClient(
            payer.key.hex(),
            network=stack.network,
            asset=asset(stack),
            schemes=SESSION_FIRST,
            max_sessions=3,
            transport=paid,
        ) as http:
            llm = openai.AsyncOpenAI(base_url=f"{shop.base}/v1", api_key="x402", http_client=http)
            costs: list[int] = []

            async def ask() -> None:
                costs.append(await ask_streamed_async(llm))

            for _ in range(2):
                async with anyio.create_task_group() as group:
                    for _ in range(8):
                        group.start_soon(ask)
            balances = await http.balance()

        assert paid.refusals == []
        assert "invalid_batch_settlement_evm_channel_busy" not in shop.answers.reasons
        assert paid.paid == 16 == len(costs)
        assert len(http.payments) == 16
        three = deposits(http.payments)
        assert len(three) == 3
        assert len({p.channel_id for p in http.payments}) == 3
        # the three deposits, at once: their calls interleave
        assert sorted(shop.facilitator.paths) == ["/settle"] * 3 + ["/supported"] + ["/verify"] * 3
        assert Balances.read(stack, payer.address, shop.pay_to) == start.moved(
            payer=-sum(three), contract=sum(three)
        )
        records = await shop.channels.list()
        assert sum(r.charged for r in records) == sum(costs)
        assert sorted((b.channel_id, b.charged) for b in balances) == sorted(
            (r.channel_id, r.charged) for r in records
        )

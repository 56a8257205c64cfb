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
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import anyio
import httpx
import openai
import pytest
from eth_account.signers.local import LocalAccount
from openai.types.chat import ChatCompletionMessageParam
from x402.http import decode_payment_required_header
from x402.schemas import PaymentRequirements

from tests.channel_seller import Balances
from tests.examples.conftest import new_funded_payer
from tests.test_session_refunds import swept
from tests.test_sessions_sdk import Seller, seller, usage_cost
from x402_meter import Asset
from x402_meter.client import PayingAsyncClient, PayingClient, Payment, SpendCapExceededError
from x402_meter.devstack import LocalStack

pytestmark = pytest.mark.anyio

MESSAGES: Final[list[ChatCompletionMessageParam]] = [{"role": "user", "content": "what is x402?"}]
SESSION_FIRST: Final = ("batch-settlement", "upto")
CORRECTIVE: Final = "invalid_batch_settlement_evm_cumulative_amount_mismatch"


class PaidAnswers(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """The paying client's way to the server: counts each paid request (it carries
    ``PAYMENT-SIGNATURE``) and each 402 answered to one (a refused payment, such as the
    spec's corrective 402), with its reason."""

    def __init__(self, *, receipts: bool = True) -> None:
        self.sync = httpx.HTTPTransport()
        self.asynchronous = httpx.AsyncHTTPTransport()
        self.receipts = receipts
        """False: every receipt GET fails as if the server were unreachable."""
        self.paid = 0
        self.refusals: list[str] = []

    def _refuse_receipt(self, request: httpx.Request) -> None:
        if not self.receipts and "/receipts/" in request.url.path:
            raise httpx.ConnectError("receipts unreachable", request=request)

    def _count(self, request: httpx.Request, response: httpx.Response, body: bytes) -> None:
        if "payment-signature" not in request.headers:
            return
        self.paid += 1
        if response.status_code == 402:
            self.refusals.append(str(json.loads(body or b"{}").get("reason")))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._refuse_receipt(request)
        response = self.sync.handle_request(request)
        if response.status_code == 402:
            self._count(request, response, response.read())
        else:
            self._count(request, response, b"")
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._refuse_receipt(request)
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


async def test_fifty_streamed_answers_cost_one_deposit_no_corrective_402_and_the_rest_back(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """50 streamed answers through the ``openai`` package over ``PayingClient``: the first
    deposits (the server's ``minDeposit``), the other 49 pay by voucher, each signed from the
    previous answer's receipt, so no payment is refused and the meter calls its facilitator
    only for the deposit. ``balance()`` shows the channel; ``close_sessions()`` takes the
    rest back: on chain, the payer is out exactly what the receipts say it was charged, and
    payTo (after the sweep) has exactly that."""
    stack = x402_local_stack
    async with shop_and_payer(stack, tmp_path) as (shop, payer, start):
        paid = PaidAnswers()
        offer = await session_offer(shop)

        def chat() -> tuple[list[int], PayingClient, Any, Any]:
            with PayingClient(
                payer.key.hex(),
                network=stack.network,
                asset=asset(stack),
                schemes=SESSION_FIRST,
                transport=paid,
            ) as http:
                llm = openai.OpenAI(base_url=f"{shop.base}/v1", api_key="x402", http_client=http)
                costs = [ask_streamed(llm) for _ in range(50)]
                return costs, http, http.balance(), http.close_sessions()

        costs, http, balances, refunds = await anyio.to_thread.run_sync(chat)

        payments = http.payments
        (deposit,) = deposits(payments)
        assert deposit == int((offer.extra or {})["minDeposit"])  # the server's suggestion
        assert paid.refusals == []
        assert CORRECTIVE not in shop.answers.reasons
        assert len(payments) == 50
        assert paid.paid == 50 + 1  # and the refund's
        assert {p.scheme for p in payments} == {"batch-settlement"}
        assert shop.facilitator.paths[:3] == ["/supported", "/verify", "/settle"]
        (record,) = await shop.channels.list()
        assert record.charged == sum(costs)
        (balance,) = balances
        assert (balance.channel_id, balance.deposited) == (record.channel_id, deposit)
        assert (balance.charged, balance.remaining) == (sum(costs), deposit - sum(costs))

        (refund,) = refunds
        assert (refund.channel_id, refund.amount) == (record.channel_id, deposit - sum(costs))
        assert (record.refund_transaction, record.refunded) == (refund.transaction, refund.amount)
        assert http.balance() == ()
        receipts = [p.receipt for p in payments]
        assert all(r is not None and r.status == "settled" for r in receipts)
        charged = sum(r.amount or 0 for r in receipts if r is not None)
        assert charged == sum(costs)
        await swept(shop)
        assert Balances.read(stack, payer.address, shop.pay_to) == start.moved(
            payer=-charged, pay_to=charged
        )


async def test_concurrent_requests_open_more_channels_up_to_max_sessions_and_wait_for_one(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """Eight streamed requests at once through ``PayingAsyncClient`` with ``max_sessions=3``:
    three channels are opened (three deposits), the other requests wait for one of them to
    be free; all eight are served, none refused as busy or corrected. Then eight more reuse
    the three channels without a deposit. ``close_sessions()`` takes back what is left in
    each: the payer is out exactly the charges."""
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
            opened = list(shop.facilitator.paths)
            refunds = await http.close_sessions()

        assert paid.refusals == []
        assert "invalid_batch_settlement_evm_channel_busy" not in shop.answers.reasons
        assert paid.paid == 16 + 3 == len(costs) + 3  # and the three refunds
        assert len(http.payments) == 16
        three = deposits(http.payments)
        assert len(three) == 3
        assert len({p.channel_id for p in http.payments}) == 3
        # the three deposits, at once: their calls interleave
        assert sorted(opened) == ["/settle"] * 3 + ["/supported"] + ["/verify"] * 3
        records = await shop.channels.list()
        assert sum(r.charged for r in records) == sum(costs)
        assert sorted((b.channel_id, b.charged) for b in balances) == sorted(
            (r.channel_id, r.charged) for r in records
        )
        assert sorted((r.channel_id, r.amount) for r in refunds) == sorted(
            (b.channel_id, b.remaining) for b in balances
        )
        await swept(shop)
        assert Balances.read(stack, payer.address, shop.pay_to) == start.moved(
            payer=-sum(costs), pay_to=sum(costs)
        )


async def session_offer(shop: Seller) -> PaymentRequirements:
    """The session the 402 offers for one chat (its ``amount``: the most the chat costs)."""
    async with httpx.AsyncClient(base_url=shop.base) as plain:
        challenge = await plain.post(
            "/v1/chat/completions", json={"model": "stub", "messages": MESSAGES}
        )
    offers = decode_payment_required_header(challenge.headers["payment-required"]).accepts
    (offer,) = [o for o in offers if o.scheme == "batch-settlement"]
    assert isinstance(offer, PaymentRequirements)
    return offer


def units(atomic: int) -> str:
    return str(Decimal(atomic).scaleb(-6))


def paying_client(stack: LocalStack, payer: LocalAccount, **options: Any) -> PayingAsyncClient:
    return PayingAsyncClient(
        payer.key.hex(),
        network=stack.network,
        asset=asset(stack),
        schemes=SESSION_FIRST,
        **options,
    )


async def test_a_streamed_answer_then_a_json_one_each_signed_from_what_was_charged(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """Streamed and non-streamed answers in turn on one channel: a JSON answer's charge
    comes in its PAYMENT-RESPONSE, a streamed one's from its receipt; no voucher is refused.
    Each payment records its channel, its voucher's cumulative and (the first) its deposit."""
    stack = x402_local_stack
    async with shop_and_payer(stack, tmp_path) as (shop, payer, _):
        paid = PaidAnswers()
        async with paying_client(stack, payer, transport=paid) as http:
            llm = openai.AsyncOpenAI(base_url=f"{shop.base}/v1", api_key="x402", http_client=http)
            costs = []
            for _ in range(3):
                costs.append(await ask_streamed_async(llm))
                answer = await llm.chat.completions.create(model="stub", messages=MESSAGES)
                assert answer.usage is not None
                costs.append(usage_cost(answer.usage.model_dump()))
            (balance,) = await http.balance()

        assert paid.refusals == []
        payments = http.payments
        assert len({p.channel_id for p in payments}) == 1
        assert [p.deposit for p in payments][1:] == [None] * 5
        cumulative = [p.cumulative for p in payments]
        assert cumulative == [sum(costs[:i]) + p.max_amount for i, p in enumerate(payments)]
        (record,) = await shop.channels.list()
        assert record.charged == balance.charged == sum(costs)


async def test_a_voucher_past_the_balance_brings_a_top_up_of_at_least_what_it_needs(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """``session_deposit`` of one atomic unit: the first deposit is what the first voucher
    needs (the answer's maximum), and every later voucher passes the balance by the last
    answer's cost, so each brings a top-up of exactly that (none refused). ``max_total``
    counts the deposits (money that left the wallet), the vouchers nothing more."""
    stack = x402_local_stack
    async with shop_and_payer(stack, tmp_path) as (shop, payer, start):
        most = int((await session_offer(shop)).amount)
        paid = PaidAnswers()
        async with paying_client(stack, payer, transport=paid, session_deposit="0.000001") as http:
            llm = openai.AsyncOpenAI(base_url=f"{shop.base}/v1", api_key="x402", http_client=http)
            costs = [await ask_streamed_async(llm) for _ in range(4)]

        assert paid.refusals == []
        assert deposits(http.payments) == [most, *costs[:3]]
        assert http.wallet.spent == most + sum(costs[:3])
        assert Balances.read(stack, payer.address, shop.pay_to) == start.moved(
            payer=-http.wallet.spent, contract=http.wallet.spent
        )
        (record,) = await shop.channels.list()
        assert record.charged == sum(costs)


async def test_max_total_counts_the_deposit_before_it_is_signed(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """The deposit (the server's ``minDeposit``) is above ``max_total``: nothing is signed,
    nothing moves, and the refusal names the deposit."""
    stack = x402_local_stack
    async with shop_and_payer(stack, tmp_path) as (shop, payer, start):
        deposit = int(((await session_offer(shop)).extra or {})["minDeposit"])
        async with paying_client(stack, payer, max_total=units(deposit - 1)) as http:
            llm = openai.AsyncOpenAI(base_url=f"{shop.base}/v1", api_key="x402", http_client=http)
            with pytest.raises(SpendCapExceededError) as refused:
                await llm.chat.completions.create(model="stub", messages=MESSAGES)

        assert (refused.value.cap, refused.value.requested) == ("max_total", deposit)
        assert http.payments == ()
        assert Balances.read(stack, payer.address, shop.pay_to) == start


async def test_an_unreadable_receipt_costs_one_corrective_402_checked_against_our_voucher(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """Receipts unreachable: the client cannot learn a streamed answer's charge, so its next
    voucher is refused with the spec's corrective 402, whose charged cumulative it adopts
    because the 402 shows our own voucher covering it; the request is paid again at once.
    Every answer is served and charged exactly."""
    stack = x402_local_stack
    async with shop_and_payer(stack, tmp_path) as (shop, payer, _):
        paid = PaidAnswers(receipts=False)
        async with paying_client(stack, payer, transport=paid) as http:
            llm = openai.AsyncOpenAI(base_url=f"{shop.base}/v1", api_key="x402", http_client=http)
            costs = [await ask_streamed_async(llm) for _ in range(4)]

        assert paid.refusals == [CORRECTIVE] * 3
        (record,) = await shop.channels.list()
        assert record.charged == sum(costs)


async def test_the_sync_client_signs_each_json_answers_voucher_from_its_payment_response(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """``PayingClient``'s round trip hands each JSON answer's ``PAYMENT-RESPONSE`` to the
    SDK's client scheme of its channel: every next voucher is exact, none refused."""
    stack = x402_local_stack
    async with shop_and_payer(stack, tmp_path) as (shop, payer, _):
        paid = PaidAnswers()

        def chat() -> tuple[list[int], Any]:
            with PayingClient(
                payer.key.hex(),
                network=stack.network,
                asset=asset(stack),
                schemes=SESSION_FIRST,
                transport=paid,
            ) as http:
                llm = openai.OpenAI(base_url=f"{shop.base}/v1", api_key="x402", http_client=http)
                answers = [
                    llm.chat.completions.create(model="stub", messages=MESSAGES) for _ in range(3)
                ]
                costs = [usage_cost(a.usage.model_dump()) for a in answers if a.usage]
                return costs, http.balance()

        costs, (balance,) = await anyio.to_thread.run_sync(chat)

        assert paid.refusals == []
        assert paid.paid == 3
        assert balance.charged == sum(costs)
        assert not balance.pending

"""The paying client's durable channel book (``session_store``) and refunds counted back.

A second client *process* resumes the first one's channel (its next voucher on it, no new
deposit, every charge exact) and its ``close_sessions()`` takes back what the first left;
two wallets sharing a store never use one channel at once; money a refund gave back is
counted back from ``max_total``. Everything is real: X402Meter in uvicorn, the facilitator
over HTTP, the contracts on anvil; the client processes are ``tests.session_payer_process``.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest
from eth_account.signers.local import LocalAccount
from x402.http.utils import decode_payment_signature_header

from tests.channel_seller import Balances
from tests.test_client_sessions import (
    CORRECTIVE,
    MESSAGES,
    ask_streamed_async,
    asset,
    deposits,
    paying_client,
    session_offer,
    shop_and_payer,
    units,
)
from tests.test_session_refunds import swept
from tests.test_sessions_sdk import Seller, usage_cost
from x402_meter.devstack import LocalStack

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


async def run_payer(
    stack: LocalStack, shop: Seller, payer: LocalAccount, store: Path, **options: Any
) -> dict[str, Any]:
    """One client process paying ``asks`` answers through ``store``; what it printed."""
    token = asset(stack)
    settings = {
        "key": payer.key.hex(),
        "network": stack.network,
        "asset": {
            "address": token.address,
            "name": token.name,
            "version": token.version,
            "decimals": token.decimals,
        },
        "base": shop.base,
        "store": str(store),
        **options,
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    done = await anyio.run_process(
        [sys.executable, "-m", "tests.session_payer_process", json.dumps(settings)],
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def costs(run: dict[str, Any]) -> list[int]:
    return [usage_cost(usage) for usage in run["usages"]]


async def test_a_second_process_resumes_the_first_ones_channel_and_refunds_it(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """Process one pays four answers (JSON and streamed in turn): one deposit, its channel
    written to the store (0600, no key in it). Process two, over the same store, pays four
    more on that channel with no deposit and none refused, then ``close_sessions()``
    refunds the channel: the server charged exactly the eight answers, the refund is the
    deposit less them, the store forgets the channel, and on chain the payer is out
    exactly the charges."""
    stack = x402_local_stack
    store = tmp_path / "sessions"
    async with shop_and_payer(stack, tmp_path) as (shop, payer, start):
        first = await run_payer(stack, shop, payer, store, asks=4)
        (deposit,) = [p["deposit"] for p in first["payments"] if p["deposit"]]
        (channel,) = {p["channel"] for p in first["payments"]}
        (booked,) = list(store.glob("*.json"))
        assert booked.name == f"{channel}.json"
        assert stat.S_IMODE(booked.stat().st_mode) == 0o600
        assert stat.S_IMODE(store.stat().st_mode) == 0o700
        text = booked.read_text()
        assert payer.key.hex().removeprefix("0x") not in text
        state = json.loads(text)["state"]
        assert (state["balance"], state["chargedCumulativeAmount"]) == (
            str(deposit),
            str(sum(costs(first))),
        )

        second = await run_payer(stack, shop, payer, store, asks=4, close=True)

        assert {p["channel"] for p in second["payments"]} == {channel}
        assert [p["deposit"] for p in second["payments"]] == [None] * 4
        assert all(p["status"] == 200 for p in first["payments"] + second["payments"])
        assert set(shop.answers.reasons) == {"payment_required"}  # none refused or corrected
        charged = sum(costs(first)) + sum(costs(second))
        cumulative = [p["cumulative"] for p in second["payments"]]
        assert cumulative[0] == sum(costs(first)) + second["payments"][0]["max"]
        (record,) = await shop.channels.list()
        assert record.charged == charged
        assert second["balances"] == [
            {"channel": channel, "deposited": deposit, "charged": charged}
        ]
        assert second["refunds"] == [{"channel": channel, "amount": deposit - charged}]
        assert record.refunded == deposit - charged
        # the second process deposited nothing: the first's deposit is not its to count back
        assert (second["spent"], second["refunded"]) == (0, 0)
        assert list(store.glob("*.json")) == []
        await swept(shop)
        assert Balances.read(stack, payer.address, shop.pay_to) == start.moved(
            payer=-charged, pay_to=charged
        )


async def test_two_wallets_on_one_store_never_share_a_channel(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """While one wallet holds its channel, another on the same store opens its own (a
    deposit of its own, no busy refusal); once the first is closed, a third resumes the
    first's channel without a deposit, and its ``close_sessions()`` takes back both
    channels' rest (the second's too, now that it is closed)."""
    stack = x402_local_stack
    store = tmp_path / "sessions"
    async with shop_and_payer(stack, tmp_path) as (shop, payer, _):
        async with paying_client(stack, payer, session_store=store) as one:
            llm = openai.AsyncOpenAI(base_url=f"{shop.base}/v1", api_key="x402", http_client=one)
            await ask_streamed_async(llm)
            async with paying_client(stack, payer, session_store=store) as two:
                llm = openai.AsyncOpenAI(
                    base_url=f"{shop.base}/v1", api_key="x402", http_client=two
                )
                await ask_streamed_async(llm)
                await two.balance()
            await one.balance()
        assert len(deposits(one.payments)) == len(deposits(two.payments)) == 1
        (first,) = {p.channel_id for p in one.payments}
        (second,) = {p.channel_id for p in two.payments}
        assert first != second
        assert "invalid_batch_settlement_evm_channel_busy" not in shop.answers.reasons

        async with paying_client(stack, payer, session_store=store) as three:
            llm = openai.AsyncOpenAI(base_url=f"{shop.base}/v1", api_key="x402", http_client=three)
            await ask_streamed_async(llm)
            assert deposits(three.payments) == []
            assert {p.channel_id for p in three.payments} <= {first, second}
            refunds = await three.close_sessions()
        records = {r.channel_id: r for r in await shop.channels.list()}
        assert sorted(r.channel_id for r in refunds) == sorted([str(first), str(second)])
        for refund in refunds:
            assert refund.amount == records[refund.channel_id].refunded > 0
        assert list(store.glob("*.json")) == []


async def test_a_refund_is_counted_back_from_max_total(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """``max_total`` lets one deposit through but not two. After ``close_sessions()`` the
    wallet counts back what the refund's PAYMENT-RESPONSE says came back (the deposit less
    the charge), so the next answer's deposit fits under ``max_total`` again; ``spent`` is
    then exactly the charges plus the open deposit, and the chain agrees."""
    stack = x402_local_stack
    async with shop_and_payer(stack, tmp_path) as (shop, payer, start):
        deposit = int(((await session_offer(shop)).extra or {})["minDeposit"])
        async with paying_client(stack, payer, max_total=units(deposit * 3 // 2)) as http:
            llm = openai.AsyncOpenAI(base_url=f"{shop.base}/v1", api_key="x402", http_client=http)
            answer = await llm.chat.completions.create(model="stub", messages=MESSAGES)
            assert answer.usage is not None
            cost = usage_cost(answer.usage.model_dump())
            assert http.wallet.spent == deposit
            (refund,) = await http.close_sessions()
            assert refund.amount == deposit - cost
            assert (http.wallet.spent, http.wallet.refunded) == (cost, deposit - cost)
            again = await llm.chat.completions.create(model="stub", messages=MESSAGES)
            assert again.usage is not None
        assert deposits(http.payments) == [deposit, deposit]
        assert http.wallet.spent == cost + deposit
        assert Balances.read(stack, payer.address, shop.pay_to).payer == (
            start.payer - cost - deposit
        )


async def test_a_later_wallet_refunds_a_channel_whose_last_streamed_charge_it_never_read(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """The first wallet's only answer streams (its deposit with it) and it closes without
    reading the receipt: the book has the deposit but not the charge. A later wallet, with
    no ``rpc_url``, only closes: the refund's voucher is behind, the server's corrective 402
    shows our own voucher, so it is believed and the one retry refunds exactly the deposit
    less the charge."""
    stack = x402_local_stack
    store = tmp_path / "sessions"
    async with shop_and_payer(stack, tmp_path) as (shop, payer, start):
        async with paying_client(stack, payer, session_store=store) as first:
            llm = openai.AsyncOpenAI(base_url=f"{shop.base}/v1", api_key="x402", http_client=first)
            cost = await ask_streamed_async(llm)
        (deposit,) = deposits(first.payments)
        (booked,) = list(store.glob("*.json"))
        state = json.loads(booked.read_text())["state"]
        assert (state["balance"], state.get("chargedCumulativeAmount", "0")) == (str(deposit), "0")

        async with paying_client(stack, payer, session_store=store) as later:
            (refund,) = await later.close_sessions()

        assert refund.amount == deposit - cost
        assert shop.answers.reasons.count(CORRECTIVE) == 1
        (record,) = await shop.channels.list()
        assert (record.charged, record.refunded) == (cost, deposit - cost)
        await swept(shop)
        assert Balances.read(stack, payer.address, shop.pay_to) == start.moved(
            payer=-cost, pay_to=cost
        )


async def test_a_process_skips_the_channel_another_process_holds_and_a_third_refunds_both(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """While this (test) process's client holds its channel, a client process on the same
    store pays on a channel of its own (its own deposit; nothing refused as busy). Once both
    are done, a third process that only closes refunds both channels."""
    stack = x402_local_stack
    store = tmp_path / "sessions"
    async with shop_and_payer(stack, tmp_path) as (shop, payer, start):
        async with paying_client(stack, payer, session_store=store) as holder:
            answer = await holder.post(
                f"{shop.base}/v1/chat/completions", json={"model": "stub", "messages": MESSAGES}
            )
            held = {p.channel_id for p in holder.payments}
            other = await run_payer(stack, shop, payer, store, asks=1)
        assert len([p for p in other["payments"] if p["deposit"]]) == 1
        assert {p["channel"] for p in other["payments"]}.isdisjoint(held)
        assert "invalid_batch_settlement_evm_channel_busy" not in shop.answers.reasons

        third = await run_payer(stack, shop, payer, store, asks=0, close=True)

        charged = usage_cost(answer.json()["usage"]) + sum(costs(other))
        refunded = {r["channel"] for r in third["refunds"]}
        assert refunded == held | {p["channel"] for p in other["payments"]}
        assert list(store.glob("*.json")) == []
        await swept(shop)
        assert Balances.read(stack, payer.address, shop.pay_to) == start.moved(
            payer=-charged, pay_to=charged
        )


class BookAtEachSend(httpx.AsyncBaseTransport):
    """The async client's way to the server: at each paid request's send, what the book in
    ``store`` holds of the voucher (and deposit) the request carries."""

    def __init__(self, store: Path) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.store = store
        self.sent: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        """Each paid request's payload and the book's record of its channel as it was sent."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        header = request.headers.get("payment-signature")
        if header is not None:
            payload = decode_payment_signature_header(header).payload
            channel = payload["voucher"]["channelId"].lower()
            booked = self.store / f"{channel}.json"
            record = json.loads(booked.read_text()) if booked.exists() else None
            self.sent.append((payload, record))
        return await self.inner.handle_async_request(request)


async def test_the_async_client_writes_its_book_off_the_loop_each_payment_booked_before_it_goes(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """``PayingAsyncClient`` with a ``session_store`` pays a deposit, then streamed and JSON
    answers in turn, and reads the last stream's charge in ``balance()``: every book write
    (each one an fsync) runs in a worker thread, never on the event loop's; yet each paid
    request goes out only once the book holds its channel (config and salt) and the
    voucher it carries, and once the client is done the book holds the deposit and every
    charge."""
    stack = x402_local_stack
    store = tmp_path / "sessions"
    loop_thread = threading.get_ident()
    written_in: list[int] = []
    wire = BookAtEachSend(store)
    async with (
        shop_and_payer(stack, tmp_path) as (shop, payer, _),
        paying_client(stack, payer, session_store=store, transport=wire) as http,
    ):
        book = http.wallet.sessions.book
        assert book is not None
        write = book.write

        def recorded_write(booked: Any) -> None:
            written_in.append(threading.get_ident())
            write(booked)

        book.write = recorded_write  # type: ignore[method-assign]
        llm = openai.AsyncOpenAI(base_url=f"{shop.base}/v1", api_key="x402", http_client=http)
        first = await llm.chat.completions.create(model="stub", messages=MESSAGES)
        streamed = await ask_streamed_async(llm)
        last = await llm.chat.completions.create(model="stub", messages=MESSAGES)
        streamed += await ask_streamed_async(llm)  # its charge read by balance()
        (balance,) = await http.balance()
        (deposit,) = deposits(http.payments)

    assert first.usage is not None
    assert last.usage is not None
    charged = usage_cost(first.usage.model_dump()) + streamed + usage_cost(last.usage.model_dump())
    assert written_in, "nothing was written to the book"
    assert loop_thread not in written_in
    assert len(wire.sent) == 4
    for payload, record in wire.sent:
        assert record is not None, "a payment was sent before its channel was in the book"
        voucher = payload["voucher"]
        assert record["channelId"] == voucher["channelId"].lower()
        assert record["config"]["salt"].lower() == payload["channelConfig"]["salt"].lower()
        assert record["state"]["signedMaxClaimable"] == voucher["maxClaimableAmount"]
    assert "deposit" in wire.sent[0][0]
    (booked,) = list(store.glob("*.json"))
    state = json.loads(booked.read_text())["state"]
    assert (state["balance"], state["chargedCumulativeAmount"]) == (str(deposit), str(charged))
    assert (balance.deposited, balance.charged) == (deposit, charged)

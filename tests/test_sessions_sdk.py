"""Sessions end to end: the official Python SDK client pays a metered app through X402Meter
on the local chain, with one deposit and then vouchers the meter admits alone.

Everything is real: the SDK's batch-settlement client (signing with a key that reads the
chain, as its recovery needs) in the SDK's httpx client, X402Meter in uvicorn with a SQLite
ledger and channel store, the bundled facilitator over HTTP (every request it gets from the
meter is counted), the stub model's answers and usage, and the contracts on anvil. Token
balances are read from the chain and checked to the atomic unit; the store's latest vouchers
are then claimed by the SDK's own channel manager, which proves them claimable.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import httpx
import pytest
from eth_account import Account
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send
from web3 import Web3
from x402.http import FacilitatorConfig, HTTPFacilitatorClient, decode_payment_required_header
from x402.http.clients import x402HttpxClient
from x402.http.utils import decode_payment_response_header
from x402.mechanisms.evm.batch_settlement.constants import BATCH_SETTLEMENT_ADDRESS
from x402.mechanisms.evm.batch_settlement.server import (
    BatchSettlementChannelManager,
    BatchSettlementEvmScheme,
    BatchSettlementEvmSchemeServerConfig,
    Channel,
    ChannelManagerConfig,
    InMemoryChannelStorage,
)
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig

from tests.apps import PRICE_ATOMIC, meter_options
from tests.channel_seller import Balances, payer_client, payer_scheme
from tests.examples.conftest import new_funded_payer
from tests.test_channels_sdk import contracts
from x402_meter import X402Meter
from x402_meter.devstack import LocalStack
from x402_meter.devstack.asgi_server import serving
from x402_meter.devstack.stub_model import complete_chat, stream_chat
from x402_meter.facilitator import FacilitatorClient, bearer_auth_provider
from x402_meter.store import ChannelRecord, ChannelStore, SQLiteStore

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
QUESTION = {"model": "stub", "messages": [{"role": "user", "content": "what is x402?"}]}
STREAMED = {**QUESTION, "stream": True, "stream_options": {"include_usage": True}}


class CountingTransport(httpx.AsyncBaseTransport):
    """The meter's way to its facilitator, counting each request's path."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await self.inner.handle_async_request(request)


@dataclass
class Answers:
    """What the server answered, in order: each status and the reason of each 402."""

    statuses: list[int] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)


@dataclass
class Seller:
    base: str
    pay_to: str
    meter: X402Meter
    facilitator: CountingTransport
    answers: Answers

    @property
    def channels(self) -> ChannelStore:
        channels = self.meter.runtime.channels
        assert channels is not None
        return channels


def counted(app: Any, answers: Answers) -> Any:
    """``app`` behind a wrapper that records each answer's status and 402 reason."""

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        body = bytearray()
        status: list[int] = []  # this request's (others may answer meanwhile)

        async def keep(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                answers.statuses.append(message["status"])
            elif message["type"] == "http.response.body" and status == [402]:
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    answers.reasons.append(json.loads(body).get("reason"))
            await send(message)

        await app(scope, receive, keep)

    return wrapper


QUIET_CLAIMS: Final = {"session_withdraw_delay": 86_400, "session_claim_interval": 40_000.0}
"""A day's withdraw delay lets the claims worker wait hours between its passes: they stay
out of these tests, which claim when they choose (or when a withdrawal shows)."""


@asynccontextmanager
async def seller(
    stack: LocalStack, tmp_path: Path, *, stream_gate: anyio.Event | None = None, **options: Any
) -> AsyncIterator[Seller]:
    """The stub model behind X402Meter offering sessions, with a fresh ``payTo``, its
    channels beside a SQLite ledger in ``tmp_path``, with ``options``; a streamed answer
    waits for ``stream_gate`` after its first chunk, if one is given."""
    pay_to = Account.create().address
    transport = CountingTransport()
    facilitator = FacilitatorClient(
        stack.facilitator_url, api_key=stack.facilitator_api_key, transport=transport
    )
    app = FastAPI()

    @app.post(CHAT, response_model=None)
    async def chat(request: Request) -> Response:
        body = await request.json()
        if body.get("stream"):
            chunks = gated(stream_chat(body), stream_gate)
            return StreamingResponse(chunks, media_type="text/event-stream")
        return JSONResponse(complete_chat(body))

    meter = X402Meter(
        app,
        **meter_options(
            stack,
            pay_to=pay_to,
            schemes=("upto", "batch-settlement"),
            store=SQLiteStore(tmp_path / "ledger.db"),
            facilitator=facilitator,
            **(QUIET_CLAIMS | options),
        ),
    )
    answers = Answers()
    async with serving(counted(meter, answers)) as base:
        yield Seller(base, pay_to, meter, transport, answers)


async def gated(chunks: AsyncIterator[bytes], gate: anyio.Event | None) -> AsyncIterator[bytes]:
    """``chunks``, held after the first one until ``gate`` is set (if given)."""
    first = True
    async for chunk in chunks:
        yield chunk
        if first and gate is not None:
            await gate.wait()
        first = False


def usage_cost(usage: dict[str, Any]) -> int:
    """What the stub's reported usage costs at the meter's price."""
    return (int(usage["prompt_tokens"]) + int(usage["completion_tokens"])) * PRICE_ATOMIC


def streamed_usage(text: str) -> dict[str, Any]:
    """The usage the stub reported in its stream's last chunk."""
    events = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data")]
    [usage] = [json.loads(e)["usage"] for e in events if e != "[DONE]" and '"usage"' in e]
    return dict(usage)


def charged_amount(answer: httpx.Response) -> int:
    """``extra.chargedAmount`` of the answer's ``PAYMENT-RESPONSE``."""
    settled = decode_payment_response_header(answer.headers["payment-response"])
    assert settled.extra is not None
    return int(settled.extra["chargedAmount"])


TRANSFER: Final = Web3.keccak(text="Transfer(address,address,uint256)")


def deposit_moved(stack: LocalStack, transaction: str, payer: str) -> int:
    """What ``transaction`` (mined, per its anvil receipt) moved from ``payer`` and into the
    batch-settlement escrow, in the token: the deposit it made (0: none)."""
    mined = stack.web3().eth.get_transaction_receipt(transaction)  # type: ignore[arg-type]
    assert mined["status"] == 1
    transfers = [
        (
            "0x" + log["topics"][1].hex()[-40:],
            "0x" + log["topics"][2].hex()[-40:],
            int(log["data"].hex(), 16),
        )
        for log in mined["logs"]
        if log["address"].lower() == stack.asset.lower() and log["topics"][0] == TRANSFER
    ]
    sent = sum(amount for source, _, amount in transfers if source == payer.lower())
    escrowed = sum(
        amount for _, target, amount in transfers if target == BATCH_SETTLEMENT_ADDRESS.lower()
    )
    return sent if sent == escrowed else 0


def sdk_channel(record: ChannelRecord) -> Channel:
    """Our channel record as the SDK's server keeps a channel (what its manager claims)."""
    config = ChannelConfig(
        payer=record.payer,
        payer_authorizer=record.payer_authorizer,
        receiver=record.receiver,
        receiver_authorizer=record.receiver_authorizer,
        token=record.token,
        withdraw_delay=record.withdraw_delay,
        salt=record.salt,
    )
    return Channel(
        channel_id=record.channel_id,
        channel_config=config,
        charged_cumulative_amount=str(record.charged),
        signed_max_claimable=str(record.voucher_max),
        signature=record.voucher_signature,
        balance=str(record.balance),
        total_claimed=str(record.total_claimed),
    )


async def test_the_sdk_client_pays_a_session_one_deposit_then_vouchers_with_no_facilitator_call(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """One JSON answer opens the channel (the one deposit: a /verify, a /settle, a
    transaction), five streamed answers and a JSON one follow, paid by vouchers the meter
    admits alone: no facilitator request, no transaction, no token moves. Every answer is
    charged exactly what the stub's usage costs. A streamed answer's charge reaches the SDK
    client through the next request's corrective 402 (one more round trip each). Then the
    SDK's channel manager claims the store's latest voucher and sweeps: payTo gets exactly
    the sum of the charges."""
    stack = x402_local_stack
    payer = new_funded_payer(stack)
    async with seller(stack, tmp_path) as shop:
        start = Balances.read(stack, payer.address, shop.pay_to)
        async with httpx.AsyncClient(base_url=shop.base, timeout=60) as plain:
            challenge = await plain.post(CHAT, json=QUESTION)
        offers = decode_payment_required_header(challenge.headers["payment-required"]).accepts
        (offer,) = [r for r in offers if r.scheme == "batch-settlement"]
        deposit = int((offer.extra or {})["minDeposit"])
        client = payer_client(stack, payer_scheme(stack, payer))
        async with x402HttpxClient(client, timeout=60, base_url=shop.base) as http:
            first = await http.post(CHAT, json=QUESTION)
            assert first.status_code == 200, first.text
            opened = list(shop.facilitator.paths)
            streamed = [await http.post(CHAT, json=STREAMED) for _ in range(5)]
            last = await http.post(CHAT, json=QUESTION)
            receipts = [
                (await http.get(answer.headers["x-payment-receipt"])).json() for answer in streamed
            ]

        assert opened == ["/supported", "/verify", "/settle"]
        assert shop.facilitator.paths == opened  # not one call for seven vouchers
        assert Balances.read(stack, payer.address, shop.pay_to) == start.moved(
            payer=-deposit, contract=deposit
        )

        costs = [usage_cost(first.json()["usage"])]
        for answer, receipt in zip(streamed, receipts, strict=True):
            assert answer.status_code == 200
            cost = usage_cost(streamed_usage(answer.text))
            assert (receipt["status"], receipt["amount"]) == ("settled", str(cost))
            costs.append(cost)
        costs.append(usage_cost(last.json()["usage"]))
        assert [charged_amount(a) for a in (first, last)] == [costs[0], costs[-1]]
        # each streamed answer cost its successor one corrective 402, and nothing more
        assert shop.answers.reasons.count(
            "invalid_batch_settlement_evm_cumulative_amount_mismatch"
        ) == len(streamed)

        (record,) = await shop.channels.list()
        assert record.charged == sum(costs)
        assert (record.balance, record.serving) == (deposit, None)
        config = sdk_channel(record).channel_config
        on_chain = contracts(stack).channel(config)
        assert (on_chain.balance, on_chain.total_claimed) == (deposit, 0)

        storage = InMemoryChannelStorage()
        storage.update_channel(record.channel_id, lambda _: sdk_channel(record))
        async with httpx.AsyncClient(timeout=60) as plain:
            manager = BatchSettlementChannelManager(
                ChannelManagerConfig(
                    scheme=BatchSettlementEvmScheme(
                        shop.pay_to, BatchSettlementEvmSchemeServerConfig(storage=storage)
                    ),
                    facilitator=HTTPFacilitatorClient(
                        FacilitatorConfig(
                            url=stack.facilitator_url,
                            auth_provider=bearer_auth_provider(stack.facilitator_api_key),
                            http_client=plain,
                        )
                    ),
                    receiver=shop.pay_to,
                    token=stack.asset,
                    network=stack.network,
                )
            )
            claims = await manager.claim()
            assert [c.vouchers for c in claims] == [1]
            assert contracts(stack).channel(config).total_claimed == sum(costs)
            await manager.settle()
        assert Balances.read(stack, payer.address, shop.pay_to) == start.moved(
            payer=-deposit, contract=deposit - sum(costs), pay_to=sum(costs)
        )


async def test_a_deposit_answer_names_the_deposit_transaction(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """The deposit is on chain before its answer: a JSON answer's ``PAYMENT-RESPONSE`` and
    receipt, and a streamed answer's receipt, name its transaction (the one that moved the
    deposit into the escrow), and the SDK client goes on paying by voucher after it. A
    voucher's answer names none (its charge is in the channel)."""
    stack = x402_local_stack
    json_payer, stream_payer = new_funded_payer(stack), new_funded_payer(stack)
    async with seller(stack, tmp_path) as shop:
        async with httpx.AsyncClient(base_url=shop.base, timeout=60) as plain:
            challenge = await plain.post(CHAT, json=QUESTION)
        offers = decode_payment_required_header(challenge.headers["payment-required"]).accepts
        (offer,) = [r for r in offers if r.scheme == "batch-settlement"]
        deposit = int((offer.extra or {})["minDeposit"])
        client = payer_client(stack, payer_scheme(stack, json_payer))
        async with x402HttpxClient(client, timeout=60, base_url=shop.base) as http:
            first = await http.post(CHAT, json=QUESTION)
            assert first.status_code == 200, first.text
            receipt = (await http.get(first.headers["x-payment-receipt"])).json()
            then = await http.post(CHAT, json=QUESTION)
            assert then.status_code == 200, then.text
        client = payer_client(stack, payer_scheme(stack, stream_payer))
        async with x402HttpxClient(client, timeout=60, base_url=shop.base) as http:
            streamed = await http.post(CHAT, json=STREAMED)
            assert streamed.status_code == 200, streamed.text
            streamed_receipt = (await http.get(streamed.headers["x-payment-receipt"])).json()

    settled = decode_payment_response_header(first.headers["payment-response"])
    transaction = settled.transaction
    assert deposit_moved(stack, transaction, json_payer.address) == deposit
    assert receipt["transaction"] == transaction
    assert decode_payment_response_header(then.headers["payment-response"]).transaction == ""
    assert "payment-response" not in streamed.headers  # the headers left before the charge
    streamed_deposit = streamed_receipt["transaction"]
    assert streamed_receipt["status"] == "settled"
    assert deposit_moved(stack, streamed_deposit, stream_payer.address) == deposit

"""Attacks on cooperative refunds: a payer (or anyone holding its headers) who wants money
out of a channel that is not its to take, or to make the seller lose what it charged.

Real stack: X402Meter in uvicorn on a ``POST``-only chat route, the bundled facilitator over
HTTP, the contracts on anvil. A channel is opened by the official SDK client; the refunds are
then signed by hand with the SDK's own voucher signing, as an attacker would make them. Each
test reads the chain: a refused refund moves nothing, and whatever a refund moves, the
seller's charges are claimed first.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402.http import decode_payment_required_header, encode_payment_signature_header
from x402.http.utils import decode_payment_response_header
from x402.mechanisms.evm.batch_settlement.client import sign_voucher
from x402.mechanisms.evm.batch_settlement.errors import (
    ERR_CHANNEL_BUSY,
    ERR_CHANNEL_ID_MISMATCH,
    ERR_CUMULATIVE_AMOUNT_MISMATCH,
    ERR_INVALID_VOUCHER_SIGNATURE,
    ERR_MISSING_CHANNEL,
    ERR_RECEIVER_MISMATCH,
    ERR_REFUND_AMOUNT_INVALID,
    ERR_REFUND_NO_BALANCE,
)
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements

from tests.channel_seller import Balances, payer_scheme
from tests.examples.conftest import new_funded_payer
from tests.test_channels_sdk import contracts
from tests.test_session_refunds import channel_config, chat, swept
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


class Refunder:
    """Signs refund payloads for a payer's channel with the SDK's voucher signing."""

    def __init__(self, stack: LocalStack, shop: Seller, payer: LocalAccount) -> None:
        self.stack = stack
        self.shop = shop
        self.payer = payer
        self.url = f"{shop.base}{CHAT}"
        self.requirements: PaymentRequirements | None = None

    async def offer(self) -> PaymentRequirements:
        """What the GET probe of the chat route offers (what the SDK client signs against)."""
        if self.requirements is None:
            async with httpx.AsyncClient(timeout=60) as plain:
                probe = await plain.get(self.url)
            assert probe.status_code == 402, probe.text
            (offered,) = offered_sessions(probe)
            self.requirements = offered
        return self.requirements

    async def config(self) -> ChannelConfig:
        return payer_scheme(self.stack, self.payer).build_channel_config(await self.offer())

    async def payload(
        self,
        cumulative: int,
        *,
        amount: str | None = None,
        signer: LocalAccount | None = None,
        config: ChannelConfig | None = None,
        channel_id: str | None = None,
    ) -> PaymentPayload:
        requirements = await self.offer()
        config = config or await self.config()
        channel_id = channel_id or compute_channel_id(config, self.stack.network)
        voucher = sign_voucher(
            EthAccountSigner(signer or self.payer), channel_id, str(cumulative), self.stack.network
        )
        inner: dict[str, Any] = {
            "type": "refund",
            "channelConfig": config.to_dict(),
            "voucher": voucher.to_dict(),
        }
        if amount is not None:
            inner["amount"] = amount
        return PaymentPayload(x402_version=2, accepted=requirements, payload=inner)

    async def send(self, payload: PaymentPayload, method: str = "GET") -> httpx.Response:
        headers = {"PAYMENT-SIGNATURE": encode_payment_signature_header(payload)}
        async with httpx.AsyncClient(timeout=60) as plain:
            return await plain.request(method, self.url, headers=headers)


def offered_sessions(challenge: httpx.Response) -> list[PaymentRequirements]:
    """The ``batch-settlement`` requirements of a 402."""
    assert challenge.status_code == 402, challenge.text
    required = decode_payment_required_header(challenge.headers["payment-required"])
    assert isinstance(required, PaymentRequired)
    return [r for r in required.accepts if r.scheme == "batch-settlement"]


async def record_of(shop: Seller) -> ChannelRecord:
    (record,) = await shop.channels.list()
    return record


def reason(answer: httpx.Response) -> str:
    assert answer.status_code != 500, answer.text
    return str(answer.json()["reason"])


async def opened(stack: LocalStack, shop: Seller) -> tuple[Refunder, ChannelRecord]:
    """A new payer's channel, opened by the SDK client with one paid answer."""
    payer = new_funded_payer(stack)
    await chat(shop, payer_scheme(stack, payer), stack, [QUESTION])
    return Refunder(stack, shop, payer), await record_of(shop)


def unchanged(before: ChannelRecord, after: ChannelRecord) -> bool:
    """The channel's money fields as they were (its lock and bookkeeping aside)."""
    money = ("charged", "claimed", "refunded", "balance", "total_claimed", "refund_nonce")
    return all(getattr(before, name) == getattr(after, name) for name in money)


async def test_refunds_signed_by_someone_else_or_for_another_channel_move_nothing(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """A refund voucher signed by a stranger; one whose channel id is not its config's;
    one for a config naming another receiver; one for a channel of this seller that it
    has no record of. Each is refused with the spec's reason before the facilitator is
    asked, and nothing moves on chain or in the channel."""
    stack = x402_local_stack
    async with seller(stack, tmp_path) as shop:
        refunder, before = await opened(stack, shop)
        start = Balances.read(stack, refunder.payer.address, shop.pay_to)
        calls = len(shop.facilitator.paths)
        config = await refunder.config()
        stranger = Account.create()
        attacks = {
            ERR_INVALID_VOUCHER_SIGNATURE: await refunder.payload(before.charged, signer=stranger),
            ERR_CHANNEL_ID_MISMATCH: await refunder.payload(
                before.charged, channel_id="0x" + "12" * 32
            ),
            ERR_RECEIVER_MISMATCH: await refunder.payload(
                before.charged, config=dataclasses.replace(config, receiver=stranger.address)
            ),
            ERR_MISSING_CHANNEL: await refunder.payload(
                0, config=dataclasses.replace(config, salt="0x" + "34" * 32)
            ),
        }
        answers = {expected: await refunder.send(p) for expected, p in attacks.items()}

        assert {expected: reason(a) for expected, a in answers.items()} == {
            expected: expected for expected in attacks
        }
        assert {a.status_code for a in answers.values()} == {402}
        assert len(shop.facilitator.paths) == calls
        assert unchanged(before, await record_of(shop))
        assert Balances.read(stack, refunder.payer.address, shop.pay_to) == start


async def test_a_stale_or_inflated_refund_voucher_gets_the_corrective_402_and_moves_nothing(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """A refund voucher below what was charged would let the payer take back an answer it
    was served; one above would have the seller claim more than it charged. Both get the
    corrective 402 with the server's charged cumulative; nothing moves."""
    stack = x402_local_stack
    async with seller(stack, tmp_path) as shop:
        refunder, before = await opened(stack, shop)
        start = Balances.read(stack, refunder.payer.address, shop.pay_to)
        for cumulative in (0, before.charged - 1, before.charged + 1, before.balance):
            answer = await refunder.send(await refunder.payload(cumulative))
            assert (answer.status_code, reason(answer)) == (402, ERR_CUMULATIVE_AMOUNT_MISMATCH)
            required = decode_payment_required_header(answer.headers["payment-required"])
            state = (required.accepts[0].extra or {})["channelState"]
            assert state["chargedCumulativeAmount"] == str(before.charged)
        assert unchanged(before, await record_of(shop))
        assert Balances.read(stack, refunder.payer.address, shop.pay_to) == start


async def test_a_refund_while_an_answer_streams_is_refused_and_the_answer_is_still_charged(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """While a streamed answer is being served on the channel, a refund is refused as busy
    (it could not include the answer's charge, which is not known yet). Once the answer
    ends and is charged, the refund claims that charge too and returns only the rest."""
    stack = x402_local_stack
    gate = anyio.Event()
    async with seller(stack, tmp_path, stream_gate=gate) as shop:
        refunder, before = await opened(stack, shop)
        async with httpx.AsyncClient(base_url=shop.base, timeout=60) as plain:
            (streamed,) = offered_sessions(await plain.post(CHAT, json=STREAMED))
            maximum = int(streamed.amount)
            config = await refunder.config()
            channel_id = compute_channel_id(config, stack.network)
            voucher = sign_voucher(
                EthAccountSigner(refunder.payer),
                channel_id,
                str(before.charged + maximum),
                stack.network,
            )
            requirements = await refunder.offer()
            paid = PaymentPayload(
                x402_version=2,
                accepted=requirements.model_copy(update={"amount": str(maximum)}),
                payload={
                    "type": "voucher",
                    "channelConfig": config.to_dict(),
                    "voucher": voucher.to_dict(),
                },
            )
            headers = {"PAYMENT-SIGNATURE": encode_payment_signature_header(paid)}
            async with plain.stream("POST", CHAT, json=STREAMED, headers=headers) as streaming:
                assert streaming.status_code == 200
                chunks = streaming.aiter_bytes()
                first = await anext(chunks)  # the answer is running
                during = await refunder.send(await refunder.payload(before.charged))
                gate.set()
                text = first + b"".join([chunk async for chunk in chunks])
        assert (during.status_code, reason(during)) == (402, ERR_CHANNEL_BUSY)
        assert b"[DONE]" in text
        charged = before.charged + usage_cost(streamed_usage(text.decode()))
        start = Balances.read(stack, refunder.payer.address, shop.pay_to)

        # (a refund sent the moment the answer ends waits for its charge, milliseconds)
        after = await refunder.send(await refunder.payload(charged))

        assert after.status_code == 200, after.text
        served = await record_of(shop)
        assert (served.charged, served.claimed) == (charged, charged)
        settled = decode_payment_response_header(after.headers["payment-response"])
        on_chain = contracts(stack).channel(channel_config(served))
        assert (on_chain.balance, on_chain.total_claimed) == (served.charged, served.charged)
        rest = before.balance - charged
        assert int(settled.amount or "") == rest
        await swept(shop)
        assert Balances.read(stack, refunder.payer.address, shop.pay_to) == start.moved(
            payer=rest, contract=-rest - charged, pay_to=charged
        )


async def test_a_refund_of_more_than_is_left_or_of_nothing_is_refused(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """The SDK's reasons: an amount above what is not charged, or 0, is
    ``refund_amount_invalid``; nothing moves."""
    stack = x402_local_stack
    async with seller(stack, tmp_path) as shop:
        refunder, before = await opened(stack, shop)
        start = Balances.read(stack, refunder.payer.address, shop.pay_to)
        rest = before.balance - before.charged
        for amount in (str(rest + 1), str(before.balance), "0"):
            answer = await refunder.send(await refunder.payload(before.charged, amount=amount))
            assert (answer.status_code, reason(answer)) == (402, ERR_REFUND_AMOUNT_INVALID)
        assert unchanged(before, await record_of(shop))
        assert Balances.read(stack, refunder.payer.address, shop.pay_to) == start


async def test_a_refund_sent_again_moves_nothing_more(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """The same refund header, sent again after it landed (also by POST, the route's own
    method): ``refund_no_balance``, nothing more moves, the seller's claim stands."""
    stack = x402_local_stack
    async with seller(stack, tmp_path) as shop:
        refunder, before = await opened(stack, shop)
        refund = await refunder.payload(before.charged)
        first = await refunder.send(refund)
        assert first.status_code == 200, first.text
        await swept(shop)
        refunded = await record_of(shop)
        start = Balances.read(stack, refunder.payer.address, shop.pay_to)

        replays = [await refunder.send(refund), await refunder.send(refund, "POST")]

        assert [(a.status_code, reason(a)) for a in replays] == [(402, ERR_REFUND_NO_BALANCE)] * 2
        assert unchanged(refunded, await record_of(shop))
        assert (refunded.claimed, refunded.refunded) == (
            before.charged,
            before.balance - before.charged,
        )
        assert Balances.read(stack, refunder.payer.address, shop.pay_to) == start

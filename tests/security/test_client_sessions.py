"""The paying client's sessions against a seller that lies about what it charged.

The client signs each next voucher from what the server says it charged: a streamed
answer's receipt, or the spec's corrective 402. A seller could inflate either, so that the
next voucher hands it more than it served. The client believes a receipt only up to the
cumulative of the voucher that answer carried, and a corrective 402 only when it shows a
voucher of ours covering the claimed cumulative.

The honest seller is X402Meter under uvicorn on the local stack (``tests.test_sessions_sdk``);
the lies are told by a proxy in front of it (also under uvicorn), which changes only what
the attack needs and passes everything else through.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import httpx
import openai
import pytest
from eth_account import Account
from x402.http.utils import (
    decode_payment_required_header,
    decode_payment_signature_header,
    encode_payment_required_header,
)
from x402.mechanisms.evm.batch_settlement.client import sign_voucher
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequired

from tests.examples.conftest import new_funded_payer
from tests.test_client_sessions import (
    CORRECTIVE,
    MESSAGES,
    ask_streamed_async,
    deposits,
    paying_client,
)
from tests.test_sessions_sdk import seller
from x402_meter.client import SessionReceiptError
from x402_meter.devstack import LocalStack
from x402_meter.devstack.asgi_server import serving

pytestmark = pytest.mark.anyio

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class Lie:
    """What the proxy changes: ``instead`` answers a request without the seller (None: ask
    the seller), ``alter`` changes the seller's answer (None: as it is). ``paid`` is the
    number of paid requests so far, this one included."""

    def instead(self, request: httpx.Request, paid: int) -> Answer | None:
        return None

    def alter(self, request: httpx.Request, answer: Answer) -> Answer | None:
        return None


INFLATED: Final = 10**12


class LyingProxy:
    """Forwards every request to the honest seller; ``lie`` may replace the answer."""

    def __init__(self, upstream: str, lie: Lie) -> None:
        self.upstream = upstream
        self.lie = lie
        self.paid = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        query = scope["query_string"].decode()
        request = httpx.Request(
            scope["method"],
            f"{self.upstream}{scope['path']}" + (f"?{query}" if query else ""),
            headers=[(k, v) for k, v in scope["headers"] if k != b"host"],
            content=body,
        )
        if "payment-signature" in request.headers:
            self.paid += 1
        told = self.lie.instead(request, self.paid)
        if told is not None:
            await self._send(send, told)
            return
        async with httpx.AsyncClient(timeout=60) as upstream:
            response = await upstream.send(request)
        honest: Answer = (
            response.status_code,
            [
                (k.encode(), v.encode())
                for k, v in response.headers.items()
                if k not in ("content-length", "transfer-encoding", "content-encoding")
            ],
            response.content,
        )
        await self._send(send, self.lie.alter(request, honest) or honest)

    async def _send(self, send: Send, answer: Answer) -> None:
        status, headers, content = answer
        headers = [(k, v) for k, v in headers if k != b"content-length"]
        headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


@asynccontextmanager
async def lying_seller(stack: LocalStack, tmp_path: Path, lie: Lie) -> AsyncIterator[str]:
    async with seller(stack, tmp_path) as shop, serving(LyingProxy(shop.base, lie)) as base:
        yield base


class InflatedReceipts(Lie):
    """Every session receipt claims the channel was charged far more than any voucher."""

    def alter(self, request: httpx.Request, answer: Answer) -> Answer | None:
        status, headers, content = answer
        if "/receipts/" not in request.url.path or status != 200:
            return None
        body = json.loads(content)
        channel = body.get("channel")
        if isinstance(channel, dict) and "charged_cumulative" in channel:
            channel["charged_cumulative"] = str(INFLATED)
        return status, headers, json.dumps(body).encode()


async def test_a_receipt_charging_more_than_the_voucher_is_refused_and_its_channel_dropped(
    x402_local_stack: LocalStack, tmp_path: Path
) -> None:
    """The first streamed answer's receipt claims more than its voucher signed: the next
    request raises ``SessionReceiptError`` before anything is signed on that channel, the
    channel is set aside (its state as before the lie), and a later request pays on a new
    channel, whose vouchers never build on the claim."""
    stack = x402_local_stack
    payer = new_funded_payer(stack)
    async with (
        lying_seller(stack, tmp_path, InflatedReceipts()) as base,
        paying_client(stack, payer) as http,
    ):
        llm = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x402", http_client=http)
        await ask_streamed_async(llm)
        with pytest.raises(SessionReceiptError, match="more than the"):
            await ask_streamed_async(llm)
        answer = await llm.chat.completions.create(model="stub", messages=MESSAGES)

    assert answer.choices
    first, second = http.payments  # nothing was signed for the refused request
    assert first.channel_id != second.channel_id
    assert len(deposits(http.payments)) == 2
    assert second.cumulative == second.max_amount  # a fresh channel: nothing charged
    assert all(p.cumulative is not None and p.cumulative < INFLATED for p in http.payments)


Claim = Callable[[PaymentPayload], tuple[int, dict[str, str] | None]]
"""From the paid request's payload: the charged cumulative a corrective 402 claims, and the
voucher state it shows as its evidence."""


class ForgedCorrective(Lie):
    """The second paid request is not passed on: it gets a corrective 402 with ``claim``
    (built from the offers of the seller's last 402)."""

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        self.offers = ""

    def alter(self, request: httpx.Request, answer: Answer) -> Answer | None:
        found = dict(answer[1]).get(b"payment-required")
        if answer[0] == 402 and found and "payment-signature" not in request.headers:
            self.offers = found.decode()
        return None

    def instead(self, request: httpx.Request, paid: int) -> Answer | None:
        if paid != 2 or "payment-signature" not in request.headers:
            return None
        payload = decode_payment_signature_header(request.headers["payment-signature"])
        assert isinstance(payload, PaymentPayload)
        required = decode_payment_required_header(self.offers)
        assert isinstance(required, PaymentRequired)
        charged, voucher_state = self.claim(payload)
        channel_id = payload.payload["voucher"]["channelId"]
        for offer in required.accepts:
            if offer.scheme == "batch-settlement":
                extra = dict(offer.extra or {})
                extra["channelState"] = {
                    "channelId": channel_id,
                    "balance": str(INFLATED),
                    "totalClaimed": "0",
                    "withdrawRequestedAt": 0,
                    "refundNonce": "0",
                    "chargedCumulativeAmount": str(charged),
                }
                if voucher_state is not None:
                    extra["voucherState"] = voucher_state
                offer.extra = extra
        required.error = CORRECTIVE
        body = json.dumps({"reason": CORRECTIVE}).encode()
        header = encode_payment_required_header(required).encode()
        return 402, [(b"content-type", b"application/json"), (b"payment-required", header)], body


def strangers_voucher(payload: PaymentPayload) -> tuple[int, dict[str, str] | None]:
    """A voucher for the claim, but signed by someone else."""
    stranger = EthAccountSigner(Account.create())
    channel_id = payload.payload["voucher"]["channelId"]
    voucher = sign_voucher(stranger, channel_id, INFLATED, str(payload.accepted.network))
    return INFLATED, {"signedMaxClaimable": str(INFLATED), "signature": voucher.signature}


def no_voucher(payload: PaymentPayload) -> tuple[int, dict[str, str] | None]:
    return INFLATED, None


def our_voucher_for_less(payload: PaymentPayload) -> tuple[int, dict[str, str] | None]:
    """Our own latest voucher (this request's), for less than the claim."""
    voucher = payload.payload["voucher"]
    signed = int(voucher["maxClaimableAmount"])
    return signed + 1, {"signedMaxClaimable": str(signed), "signature": voucher["signature"]}


@pytest.mark.parametrize("claim", [strangers_voucher, no_voucher, our_voucher_for_less])
async def test_a_corrective_402_claiming_more_than_our_vouchers_cover_is_not_believed(
    x402_local_stack: LocalStack,
    tmp_path: Path,
    claim: Claim,
) -> None:
    """The second voucher gets a forged corrective 402 claiming more was charged, with a
    stranger's voucher, none, or ours for less: the client does not adopt it (the 402
    reaches the caller, nothing is signed again), and its next voucher is still the honest
    cumulative, which the honest seller admits."""
    stack = x402_local_stack
    payer = new_funded_payer(stack)
    async with (
        lying_seller(stack, tmp_path, ForgedCorrective(claim)) as base,
        paying_client(stack, payer) as http,
    ):
        llm = openai.AsyncOpenAI(
            base_url=f"{base}/v1", api_key="x402", http_client=http, max_retries=0
        )
        first = await llm.chat.completions.create(model="stub", messages=MESSAGES)
        with pytest.raises(openai.APIStatusError) as refused:
            await llm.chat.completions.create(model="stub", messages=MESSAGES)
        third = await llm.chat.completions.create(model="stub", messages=MESSAGES)

    assert refused.value.status_code == 402
    assert first.usage is not None
    assert third.choices
    _, forged, after = http.payments  # the forged 402 was not followed by a new signature
    assert (forged.status_code, after.status_code) == (402, 200)
    assert forged.cumulative == after.cumulative  # the honest cumulative, twice
    assert all(p.cumulative is not None and p.cumulative < INFLATED for p in http.payments)

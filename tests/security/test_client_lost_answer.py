"""A signed payment whose answer never arrives still counts against ``max_total``.

The transports give back a reservation when a request fails, but only one that was never
signed: once the signature has left, the seller (X402Meter under real uvicorn, settling
through the facilitator on the local chain) can settle it whether or not its answer reaches
the payer. Here the connection drops after the paid request was sent (the seller served and
charged it): the caller gets the network error, and the wallet keeps counting the payment at
its maximum, so the cap still refuses in time. Sync and async share that path (one core).
"""

from __future__ import annotations

from typing import Final, Literal

import anyio
import httpx
import pytest

from tests.security.test_client_trust import (
    CHAT,
    FULL,
    MAX_TOTAL_ATOMIC,
    MAXIMUM,
    Model,
    selling,
)
from x402_meter.client import (
    PayingAsyncClient,
    PayingClient,
    Payment,
    SpendCapExceededError,
    Wallet,
)
from x402_meter.devstack import LocalStack

pytestmark = pytest.mark.anyio

LOST: Final = "the connection dropped before the answer"


def _paid(request: httpx.Request) -> bool:
    return "payment-signature" in request.headers or "x-payment" in request.headers


class LosesPaidAnswersAsync(httpx.AsyncBaseTransport):
    """Sends everything; the answer to the first paid request is lost on the way back."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if _paid(request) and not self.lost:
            self.lost += 1
            await response.aread()  # the seller served (and so charges) it in full
            await response.aclose()
            raise httpx.ReadError(LOST, request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class LosesPaidAnswers(httpx.BaseTransport):
    """The sync ``LosesPaidAnswersAsync``."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if _paid(request) and not self.lost:
            self.lost += 1
            response.read()
            response.close()
            raise httpx.ReadError(LOST, request=request)
        return response

    def close(self) -> None:
        self.inner.close()


async def _chat_until_refused_async(wallet: Wallet, url: str) -> SpendCapExceededError:
    async with PayingAsyncClient(wallet=wallet, transport=LosesPaidAnswersAsync()) as http:
        with pytest.raises(httpx.ReadError, match=LOST):
            await http.post(url, json=CHAT)
        _assert_counts_in_full(wallet.payments)
        assert (await http.post(url, json=CHAT)).status_code == 200
        with pytest.raises(SpendCapExceededError) as refused:
            await http.post(url, json=CHAT)
    return refused.value


def _chat_until_refused_sync(wallet: Wallet, url: str) -> SpendCapExceededError:
    with PayingClient(wallet=wallet, transport=LosesPaidAnswers()) as http:
        with pytest.raises(httpx.ReadError, match=LOST):
            http.post(url, json=CHAT)
        _assert_counts_in_full(wallet.payments)
        assert http.post(url, json=CHAT).status_code == 200
        with pytest.raises(SpendCapExceededError) as refused:
            http.post(url, json=CHAT)
    return refused.value


def _assert_counts_in_full(payments: tuple[Payment, ...]) -> None:
    (lost,) = payments
    assert lost.signed
    assert lost.status_code is None  # never answered, as far as the payer knows
    assert lost.spend == MAXIMUM


@pytest.mark.parametrize("client", ["async", "sync"])
async def test_a_signed_payment_whose_answer_is_lost_still_counts(
    x402_local_stack: LocalStack, client: Literal["async", "sync"]
) -> None:
    async with selling(x402_local_stack, lambda app: app, Model(FULL)) as seller:
        wallet = seller.wallet(None)
        url = f"{seller.base}/v1/chat/completions"
        if client == "async":
            refused = await _chat_until_refused_async(wallet, url)
        else:
            refused = await anyio.to_thread.run_sync(_chat_until_refused_sync, wallet, url)

    assert refused.cap == "max_total"
    assert refused.left == MAX_TOTAL_ATOMIC - 2 * MAXIMUM
    assert [p.signed for p in wallet.payments] == [True, True]
    assert wallet.spent == 2 * MAXIMUM

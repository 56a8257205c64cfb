"""httpx transports that pay 402s from a wallet: one async, one sync, on one shared core.

The core (``_PayingCore``) does everything that is not I/O: the attempt around a request and
what its failure gives back, what the wallet records of the answer, the receipt's request and
its reading. Each transport adds only the I/O: the SDK's ``x402AsyncTransport`` for async; the
SDK's sync ``PaymentRoundTripper`` for sync (the SDK has no sync httpx transport).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NoReturn, cast

import anyio
import httpx
from x402.http import x402HTTPClientSync
from x402.http.clients.httpx import PaymentError as SDKPaymentError
from x402.http.clients.httpx import x402AsyncTransport
from x402.http.x402_http_client import PaymentRoundTripper
from x402.schemas import NoMatchingRequirementsError

from x402_meter.client._attempt import Attempt, Resolve, paying
from x402_meter.client._exceptions import NoPayableOfferError, PayerError, ReceiptUnavailableError
from x402_meter.client._receipts import (
    DEFAULT_RECEIPT_WAIT,
    Payment,
    Receipt,
    parse_receipt,
    receipt_request,
)
from x402_meter.client._wallet import Wallet
from x402_meter.errors import X402MeterError

_NOT_FETCHED = (ReceiptUnavailableError, httpx.HTTPError)
"""A receipt that could not be fetched while resolving: the chain is read without it."""


def _raise_unwrapped(error: BaseException) -> NoReturn:
    """Raise what stopped a payment: our error or httpx's as it was, else a ``PayerError``
    (the SDK's transport wraps whatever it meets in its own ``PaymentError``)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, X402MeterError | httpx.HTTPError):
            raise seen  # chained to ``error`` as its context; Python cuts the cycle
        if isinstance(seen, NoMatchingRequirementsError):
            raise NoPayableOfferError(str(seen)) from error
        seen = seen.__cause__ or seen.__context__
    raise PayerError(f"payment failed: {error}") from error


class _PayingCore:
    """What both paying transports do around one request and one receipt, without I/O."""

    def __init__(self, wallet: Wallet, unwrap: type[Exception]) -> None:
        self.wallet = wallet
        self._unwrap = unwrap
        """What the SDK underneath raises wrapped: unwrapped into our errors."""

    @contextlib.contextmanager
    def attempt(self, request: httpx.Request, resolve: Resolve) -> Iterator[Attempt]:
        """The attempt the SDK hooks see while ``request`` is paid for; on any failure its
        unsigned reservation is given back and the error raised as ours or httpx's."""
        attempt = Attempt(request.method, str(request.url), resolve)
        with paying(attempt):
            try:
                yield attempt
            except (PayerError, httpx.HTTPError):
                attempt.forget(self.wallet.ledger)
                raise
            except self._unwrap as error:
                attempt.forget(self.wallet.ledger)
                _raise_unwrapped(error)
            except BaseException:
                attempt.forget(self.wallet.ledger)
                raise

    def answered(self, attempt: Attempt, request: httpx.Request, response: httpx.Response) -> None:
        """Record the answer to a signed payment's request and tell ``on_payment``."""
        payment = attempt.payment
        if payment is None or not payment.signed:
            return
        self.wallet.ledger.record_answer(payment, request.url, response)
        self.wallet.notify("answered", payment)

    def received(
        self, payment: Payment, request: httpx.Request, response: httpx.Response, body: bytes
    ) -> Receipt:
        """Read the receipt from its answer and record it on ``payment``."""
        receipt = parse_receipt(request.url, response, body)
        self.wallet.received(payment, receipt)
        return receipt


class PayingAsyncTransport(httpx.AsyncBaseTransport):
    """An httpx async transport that pays 402s from ``wallet`` (the SDK's
    ``x402AsyncTransport`` underneath) and records each payment's receipt."""

    def __init__(self, wallet: Wallet, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.wallet = wallet
        self._core = _PayingCore(wallet, unwrap=SDKPaymentError)
        self._base = transport or httpx.AsyncHTTPTransport()
        self._paying = x402AsyncTransport(wallet.x402_client(), self._base)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with self._core.attempt(request, self._resolve_pending) as attempt:
            response = await self._paying.handle_async_request(request)
        self._core.answered(attempt, request, response)
        return response

    async def fetch_receipt(self, payment: Payment, wait: float = DEFAULT_RECEIPT_WAIT) -> Receipt:
        """GET the payment's receipt, waiting up to ``wait`` seconds for settlement."""
        request = receipt_request(payment, wait)
        response = await self._base.handle_async_request(request)
        try:
            body = await response.aread()
        finally:
            await response.aclose()
        receipt = self._core.received(payment, request, response, body)
        if self.wallet.prover is not None:
            await anyio.to_thread.run_sync(self.wallet.ledger.prove, payment)
        return receipt

    async def _resolve_pending(self) -> None:
        """Read what the chain proves of the unproven payments (their receipts first, for the
        transaction, when the seller has not named one yet)."""
        ledger = self.wallet.ledger
        for payment in ledger.unproven():
            if ledger.needs_receipt(payment):
                with contextlib.suppress(*_NOT_FETCHED):
                    await self.fetch_receipt(payment, self.wallet.receipt_wait)
                    continue
            await anyio.to_thread.run_sync(ledger.prove, payment)

    async def aclose(self) -> None:
        await self._paying.aclose()


class PayingTransport(httpx.BaseTransport):
    """The sync counterpart of ``PayingAsyncTransport`` (the SDK's sync x402 client and
    ``PaymentRoundTripper`` underneath), for ``httpx.Client`` and ``openai.OpenAI``."""

    def __init__(self, wallet: Wallet, transport: httpx.BaseTransport | None = None) -> None:
        self.wallet = wallet
        self._core = _PayingCore(wallet, unwrap=Exception)
        self._base = transport or httpx.HTTPTransport()
        self._round_trip = PaymentRoundTripper(x402HTTPClientSync(wallet.x402_client_sync()))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # a 402 means sending the body again
        with self._core.attempt(request, self._resolve_pending) as attempt:
            response = self._pay(request, attempt)
        self._core.answered(attempt, request, response)
        return response

    def _pay(self, request: httpx.Request, attempt: Attempt) -> httpx.Response:
        response = self._base.handle_request(request)
        if response.status_code != 402:
            return response
        try:
            body = response.read()
        finally:
            response.close()

        def send_again(headers: dict[str, str]) -> httpx.Response:
            return self._base.handle_request(
                httpx.Request(
                    request.method,
                    request.url,
                    headers={**request.headers, **headers},
                    content=request.content,
                    extensions=request.extensions,
                )
            )

        paid = self._round_trip.handle_response(
            str(id(attempt)),
            402,
            dict(response.headers),
            body,
            send_again,
            str(request.url),
        )
        return cast(httpx.Response, paid) if paid is not None else response

    def fetch_receipt(self, payment: Payment, wait: float = DEFAULT_RECEIPT_WAIT) -> Receipt:
        """GET the payment's receipt, waiting up to ``wait`` seconds for settlement."""
        request = receipt_request(payment, wait)
        response = self._base.handle_request(request)
        try:
            body = response.read()
        finally:
            response.close()
        receipt = self._core.received(payment, request, response, body)
        self.wallet.ledger.prove(payment)
        return receipt

    def _resolve_pending(self) -> None:
        """See ``PayingAsyncTransport._resolve_pending``."""
        ledger = self.wallet.ledger
        for payment in ledger.unproven():
            if ledger.needs_receipt(payment):
                with contextlib.suppress(*_NOT_FETCHED):
                    self.fetch_receipt(payment, self.wallet.receipt_wait)
                    continue
            ledger.prove(payment)

    def close(self) -> None:
        self._base.close()

"""httpx transports that pay 402s from a wallet: one async, one sync, on one shared core.

The core (``_PayingCore``) does everything that is not I/O: the attempt around a request and
what its failure gives back, what the wallet records of the answer, the receipt's request and
its reading. Each transport adds only the I/O: the SDK's ``x402AsyncTransport`` for async; the
SDK's sync ``PaymentRoundTripper`` for sync (the SDK has no sync httpx transport).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Final, NoReturn, cast

import anyio
import anyio.from_thread
import httpx
from x402.http import x402HTTPClientSync
from x402.http.clients.httpx import PaymentError as SDKPaymentError
from x402.http.clients.httpx import x402AsyncTransport
from x402.http.x402_http_client import PaymentRoundTripper
from x402.schemas import NoMatchingRequirementsError

from x402_meter.client._attempt import (
    Attempt,
    FetchReceipt,
    Resolve,
    book_writes_deferred,
    current_attempt,
    paying,
)
from x402_meter.client._exceptions import (
    NoPayableOfferError,
    PayerError,
    ReceiptUnavailableError,
    SessionRefundError,
)
from x402_meter.client._receipts import (
    DEFAULT_RECEIPT_WAIT,
    Payment,
    Receipt,
    parse_receipt,
    receipt_request,
)
from x402_meter.client._session_scheme import refund_fetch
from x402_meter.client._sessions import (
    ChannelBalance,
    RefundAnswer,
    RefundsTaken,
    SessionChannel,
    SessionRefund,
)
from x402_meter.client._wallet import Wallet
from x402_meter.errors import X402MeterError

_REFUND_TIMEOUT: Final = {"connect": 10.0, "read": 120.0, "write": 10.0, "pool": 10.0}
"""A refund waits for its transaction (claim and refund in one) before it is answered."""
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

    def __init__(self, wallet: Wallet, unwrap: type[Exception], *, asynchronous: bool) -> None:
        self.wallet = wallet
        self._unwrap = unwrap
        """What the SDK underneath raises wrapped: unwrapped into our errors."""
        self._asynchronous = asynchronous
        """Whether its responses' bodies are read async (httpx's own may be both)."""

    @contextlib.contextmanager
    def attempt(
        self, request: httpx.Request, resolve: Resolve, fetch_receipt: FetchReceipt
    ) -> Iterator[Attempt]:
        """The attempt the SDK hooks see while ``request`` is paid for; on any failure its
        unsigned reservation and its session channel are given back and the error raised as
        ours or httpx's."""
        attempt = Attempt(request.method, str(request.url), resolve, fetch_receipt)
        with paying(attempt):
            try:
                yield attempt
            except (PayerError, httpx.HTTPError):
                self._failed(attempt)
                raise
            except self._unwrap as error:
                self._failed(attempt)
                _raise_unwrapped(error)
            except BaseException:
                self._failed(attempt)
                raise

    def _failed(self, attempt: Attempt) -> None:
        attempt.forget(self.wallet.ledger)
        channel = attempt.take_channel()
        if channel is not None:
            self.wallet.sessions.release(channel)

    def answered(self, attempt: Attempt, request: httpx.Request, response: httpx.Response) -> None:
        """``recorded`` then ``finished``."""
        self.recorded(attempt, request, response)
        self.finished(attempt, response)

    def recorded(self, attempt: Attempt, request: httpx.Request, response: httpx.Response) -> None:
        """Record the answer to a signed payment's request. A non-streamed answer's
        ``PAYMENT-RESPONSE`` has updated its session channel already (the SDK's hook); a
        streamed answer's charge is in its receipt, read before the channel signs again."""
        payment, channel = attempt.payment, attempt.channel
        if payment is None or not payment.signed:
            return
        self.wallet.ledger.record_answer(payment, request.url, response)
        if (
            channel is not None
            and payment.receipt_url is not None
            and response.status_code != 402
            and "payment-response" not in response.headers
        ):
            channel.expect_receipt(payment)

    def finished(self, attempt: Attempt, response: httpx.Response) -> None:
        """Tell ``on_payment`` of the answer; a session's channel is given back when the
        answer is done (see ``_session_answered``)."""
        payment = attempt.payment
        channel = attempt.take_channel()
        if channel is not None:
            self._session_answered(channel, response)
        if payment is not None and payment.signed:
            self.wallet.notify("answered", payment)

    def _session_answered(self, channel: SessionChannel, response: httpx.Response) -> None:
        """The channel is free when the answer's body is closed (the server charges a
        stream then, and holds the channel until it has)."""
        sessions = self.wallet.sessions

        def release() -> None:
            sessions.release(channel)

        stream = response.stream
        if response.is_closed:
            release()
        elif self._asynchronous and isinstance(stream, httpx.AsyncByteStream):
            response.stream = _AsyncReleasingStream(stream, release)
        elif isinstance(stream, httpx.SyncByteStream):
            response.stream = _ReleasingStream(stream, release)
        else:  # not a body this transport's client reads: free the channel now
            release()

    def received(
        self, payment: Payment, request: httpx.Request, response: httpx.Response, body: bytes
    ) -> Receipt:
        """Read the receipt from its answer and record it on ``payment``."""
        receipt = parse_receipt(request.url, response, body)
        self.wallet.received(payment, receipt)
        return receipt


async def _done(pending: Awaitable[None] | None) -> None:
    if pending is not None:
        await pending


class _ReleasingStream(httpx.SyncByteStream):
    """A response body that gives its session channel back when it is closed."""

    def __init__(self, inner: httpx.SyncByteStream, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._release()


class _AsyncReleasingStream(httpx.AsyncByteStream):
    """``_ReleasingStream`` for an async body."""

    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._release()


async def write_book(attempt: Attempt) -> None:
    """Write what ``attempt``'s channels changed to the book, off the event loop; done even
    when the request is cancelled (its deposit or voucher may have been sent)."""
    if attempt.unwritten:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(attempt.write_book)


class _BookWritingTransport(httpx.AsyncBaseTransport):
    """The SDK transport's way to the server: each request is sent only once the channel
    changes its attempt made (the payment it carries) are written to the book."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await write_book(current_attempt())
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class PayingAsyncTransport(httpx.AsyncBaseTransport):
    """An httpx async transport that pays 402s from ``wallet`` (the SDK's
    ``x402AsyncTransport`` underneath) and records each payment's receipt."""

    def __init__(self, wallet: Wallet, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.wallet = wallet
        self._core = _PayingCore(wallet, unwrap=SDKPaymentError, asynchronous=True)
        self._base = transport or httpx.AsyncHTTPTransport()
        self._paying = x402AsyncTransport(wallet.x402_client(), _BookWritingTransport(self._base))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # The session channel book is written in a worker thread (an fsync a write, two
        # writes an answer): before each send (the deposit and voucher it carries are in
        # the book first) and once the answer is in, before the channel is given back.
        with self._core.attempt(request, self._resolve_pending, self.fetch_receipt) as attempt:
            attempt.defers_book_writes = True
            try:
                response = await self._paying.handle_async_request(request)
                self._core.recorded(attempt, request, response)
            finally:
                await write_book(attempt)
        self._core.finished(attempt, response)
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

    async def balance(self) -> tuple[ChannelBalance, ...]:
        """``Wallet.balance``, after reading the receipts of the streamed answers whose
        charge is not known yet (on the channels no request holds)."""
        sessions = self.wallet.sessions
        for channel in sessions.channels():
            if channel.pending is not None and sessions.try_lease(channel):
                try:
                    await self._read_pending(channel)
                finally:
                    sessions.release(channel)
        return self.wallet.balance()

    async def _read_pending(self, channel: SessionChannel) -> None:
        """``Wallet.read_pending``, the charge it learns written to the book off the loop."""
        with book_writes_deferred() as attempt:
            try:
                await _done(self.wallet.read_pending(channel, self.fetch_receipt))
            finally:
                await write_book(attempt)

    async def close_sessions(self) -> tuple[SessionRefund, ...]:
        """Take back what is left in each session channel (waiting for the answers being
        served on them); see ``PayingAsyncClient.close_sessions``."""
        sessions, taken = self.wallet.sessions, RefundsTaken()
        await anyio.to_thread.run_sync(sessions.resume_all)
        for channel in list(sessions.channels()):
            await sessions.lease_channel_async(channel)
            try:
                await anyio.to_thread.run_sync(self.wallet.check_resumed, channel)
                await self._read_pending(channel)
                fetch = refund_fetch(channel, self._refund_fetch, self.wallet.address)
                refund = await anyio.to_thread.run_sync(channel.refund, fetch)
                taken.add(self.wallet.count_refund(refund))
            except SessionRefundError as error:
                taken.failed(error)
            finally:
                sessions.release(channel)
        return taken.result()

    def _refund_fetch(self, url: str, headers: dict[str, str]) -> RefundAnswer:
        """The SDK's refund flow (in a worker thread) sends its GETs through this transport."""
        return anyio.from_thread.run(self._get, url, headers)

    async def _get(self, url: str, headers: dict[str, str]) -> RefundAnswer:
        response = await self._base.handle_async_request(
            httpx.Request("GET", url, headers=headers, extensions={"timeout": _REFUND_TIMEOUT})
        )
        try:
            await response.aread()
        finally:
            await response.aclose()
        return RefundAnswer(response.status_code, response.headers)

    async def aclose(self) -> None:
        await self._paying.aclose()


class PayingTransport(httpx.BaseTransport):
    """The sync counterpart of ``PayingAsyncTransport`` (the SDK's sync x402 client and
    ``PaymentRoundTripper`` underneath), for ``httpx.Client`` and ``openai.OpenAI``."""

    def __init__(self, wallet: Wallet, transport: httpx.BaseTransport | None = None) -> None:
        self.wallet = wallet
        self._core = _PayingCore(wallet, unwrap=Exception, asynchronous=False)
        self._base = transport or httpx.HTTPTransport()
        self._round_trip = PaymentRoundTripper(x402HTTPClientSync(wallet.x402_client_sync()))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # a 402 means sending the body again
        with self._core.attempt(request, self._resolve_pending, self.fetch_receipt) as attempt:
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

    def balance(self) -> tuple[ChannelBalance, ...]:
        """See ``PayingAsyncTransport.balance``."""
        sessions = self.wallet.sessions
        for channel in sessions.channels():
            if channel.pending is not None and sessions.try_lease(channel):
                try:
                    self.wallet.read_pending(channel, self.fetch_receipt)
                finally:
                    sessions.release(channel)
        return self.wallet.balance()

    def close_sessions(self) -> tuple[SessionRefund, ...]:
        """See ``PayingAsyncTransport.close_sessions``."""
        sessions, taken = self.wallet.sessions, RefundsTaken()
        sessions.resume_all()
        for channel in list(sessions.channels()):
            sessions.lease_channel_sync(channel)
            try:
                self.wallet.check_resumed(channel)
                self.wallet.read_pending(channel, self.fetch_receipt)
                fetch = refund_fetch(channel, self._get, self.wallet.address)
                taken.add(self.wallet.count_refund(channel.refund(fetch)))
            except SessionRefundError as error:
                taken.failed(error)
            finally:
                sessions.release(channel)
        return taken.result()

    def _get(self, url: str, headers: dict[str, str]) -> RefundAnswer:
        response = self._base.handle_request(
            httpx.Request("GET", url, headers=headers, extensions={"timeout": _REFUND_TIMEOUT})
        )
        try:
            response.read()
        finally:
            response.close()
        return RefundAnswer(response.status_code, response.headers)

    def close(self) -> None:
        self._base.close()
